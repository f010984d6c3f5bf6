"""Inception modules and the inception backbone of Pasquet et al. (2019), Sect. 3.6 and Table A.1.

Table A.1, first module (input P1, 32x32x64)::

    C2, C3, C4  1x1 convs (48 each)           -- the "reductions"
    C5          1x1 conv on P1 (64)           -- 1x1 branch
    C6          3x3 conv on C2 (64)           -- 3x3 branch
    C7          5x5 conv on C3 (64)           -- 5x5 branch
    P2          2x2 stride-1 avg-pool on C4   -- pooling branch (note: pooled *after* its 1x1 conv)
    Co1         concatenation: 64 + 64 + 64 + 48 = 240 maps

A module is therefore described by four widths ``[reduce, b1, b3, b5]``; its output has
``b1 + b3 + b5 + reduce`` maps.  ``b5 = 0`` removes the 5x5 branch *and* its reduction, as in the
last module of the paper (C26-C29: "the last feature maps (8x8) have become too small").

The four 1x1 convolutions that read the module input (C2, C3, C4, C5) are fused into one 1x1
convolution whose output is split: identical parameters and outputs, but one matrix product instead
of four, which matters on CPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zpix.models.layers import ConvPReLU, avg_pool_same

#: Table A.1 widths ``[reduce, b1, b3, b5]`` of the five modules (outputs 240, 340, 476, 476, 348).
PASQUET2019_MODULES: tuple[tuple[int, int, int, int], ...] = (
    (48, 64, 64, 64),
    (64, 92, 92, 92),
    (92, 128, 128, 128),
    (92, 128, 128, 128),
    (92, 128, 128, 0),
)
#: Stride-2 average pools after the 2nd and 4th modules (P4 and P7 of Table A.1), 0-based indices.
PASQUET2019_POOL_AFTER: tuple[int, ...] = (1, 3)


def module_out_channels(spec: Sequence[int]) -> int:
    """Number of output maps of an inception module ``[reduce, b1, b3, b5]``: b1 + b3 + b5 + reduce."""
    reduce, b1, b3, b5 = (int(v) for v in spec)
    return b1 + b3 + b5 + reduce


class InceptionModule(nn.Module):
    """One multi-scale block (Szegedy et al. 2015) in the layout of Pasquet et al. (2019), Table A.1."""

    def __init__(self, *, in_channels: int, spec: Sequence[int], prelu: str = "channel", pool_kernel: int = 2) -> None:
        super().__init__()
        if len(spec) != 4:
            raise ValueError(f"an inception module is [reduce, b1, b3, b5], got {list(spec)}")
        reduce, b1, b3, b5 = (int(v) for v in spec)
        if min(reduce, b1, b3) < 1 or b5 < 0:
            raise ValueError(f"inception widths must be positive (b5 may be 0), got {list(spec)}")
        self.has_5x5 = b5 > 0
        # Fused entry: [1x1 branch | reduction for 3x3 | reduction for 5x5 | 1x1 before the pool].
        self.splits = [b1, reduce] + ([reduce] if self.has_5x5 else []) + [reduce]
        self.entry = ConvPReLU(in_channels=in_channels, out_channels=sum(self.splits), kernel=1, prelu=prelu,
                               out_segments=self.splits)
        self.conv3 = ConvPReLU(in_channels=reduce, out_channels=b3, kernel=3, prelu=prelu)
        self.conv5 = ConvPReLU(in_channels=reduce, out_channels=b5, kernel=5, prelu=prelu) if self.has_5x5 else None
        self.pool_kernel = int(pool_kernel)
        self.out_channels = module_out_channels(spec)

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(self.entry(x), self.splits, dim=1)
        outs = [parts[0], self.conv3(parts[1])]
        if self.conv5 is not None:
            outs.append(self.conv5(parts[2]))
        outs.append(avg_pool_same(parts[-1], self.pool_kernel))
        return torch.cat(outs, dim=1)


class ConvStem(nn.Module):
    """The first convolution block: ``n_convs`` PReLU convolutions, with a 2x2 stride-2 average pool
    after the first one (Table A.1: C1 then P1).

    ``groups`` > 1 runs ``groups`` independent stems side by side on disjoint channel groups (one per
    modality in :mod:`zpix.models.multimodal`), implemented as grouped convolutions.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        width: int,
        image_size: int,
        kernel: int = 5,
        n_convs: int = 1,
        pool: bool = True,
        groups: int = 1,
        prelu: str = "channel",
    ) -> None:
        super().__init__()
        if n_convs < 1:
            raise ValueError(f"a stem needs at least one convolution, got n_convs={n_convs}")
        if width % groups or in_channels % groups:
            raise ValueError(f"stem width {width} and inputs {in_channels} must be divisible by {groups} groups")
        layers: list[nn.Module] = [ConvPReLU(in_channels=in_channels, out_channels=width, kernel=kernel, prelu=prelu,
                                             groups=groups)]
        size = int(image_size)
        if pool:
            layers.append(nn.AvgPool2d(2))
            size //= 2
        for _ in range(n_convs - 1):
            layers.append(ConvPReLU(in_channels=width, out_channels=width, kernel=kernel, prelu=prelu, groups=groups))
        self.layers = nn.Sequential(*layers)
        self.out_channels = int(width)
        self.out_size = size

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class InceptionTrunk(nn.Module):
    """A chain of inception modules with 2x2 stride-2 average pools after the modules listed in
    ``pool_after`` (0-based), e.g. after the 2nd and 4th in Table A.1."""

    def __init__(
        self,
        *,
        in_channels: int,
        in_size: int,
        modules: Sequence[Sequence[int]],
        pool_after: Sequence[int] = (),
        prelu: str = "channel",
    ) -> None:
        super().__init__()
        bad = [i for i in pool_after if not 0 <= int(i) < len(modules)]
        if bad:
            raise ValueError(f"pool_after indices {bad} are outside the {len(modules)} modules")
        layers: list[nn.Module] = []
        channels, size = int(in_channels), int(in_size)
        for i, spec in enumerate(modules):
            block = InceptionModule(in_channels=channels, spec=spec, prelu=prelu)
            layers.append(block)
            channels = block.out_channels
            if i in {int(p) for p in pool_after}:
                layers.append(nn.AvgPool2d(2))
                size //= 2
        if size < 1:
            raise ValueError(f"an input of {in_size}x{in_size} pixels is too small for {len(pool_after)} pools")
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels
        self.out_size = size

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def final_pool(size: int, final_pool_size: int | None) -> tuple[nn.Module, int]:
    """The pooling between the last maps (``size`` x ``size``) and the flatten, and its output size.

    None: no pooling (Table A.1).  An integer: adaptive average pooling to at most that size -- small
    cutouts whose maps are already smaller are left as they are.
    """
    if final_pool_size is None:
        return nn.Identity(), size
    if final_pool_size < 1:
        raise ValueError(f"final_pool_size must be >= 1 or None, got {final_pool_size}")
    size = min(size, int(final_pool_size))
    return nn.AdaptiveAvgPool2d(size), size


class InceptionBackbone(nn.Module):
    """Stem + inception trunk + (optional) final average pool + flatten: images -> feature vector.

    With the defaults this is the convolutional part of Pasquet et al. (2019), Table A.1, exactly:
    C1 (5x5, 64) -> P1 -> five modules with P4, P7 after the 2nd and 4th -> Co5 (8x8x348), flattened
    to 22 272 features that feed FC1 directly (there is no pooling between Co5 and FC1 in Table A.1;
    the paper's parameter count, Eq. B.1, confirms it -- see tests/test_models.py).

    ``final_pool_size`` (None = Table A.1) adaptively average-pools the last maps to at most that size
    first, which shrinks the first fully connected layer of reduced networks.
    """

    def __init__(
        self,
        *,
        n_bands: int = 5,
        image_size: int = 64,
        stem_width: int = 64,
        stem_kernel: int = 5,
        modules: Sequence[Sequence[int]] = PASQUET2019_MODULES,
        pool_after: Sequence[int] = PASQUET2019_POOL_AFTER,
        final_pool_size: int | None = None,
        prelu: str = "channel",
    ) -> None:
        super().__init__()
        if n_bands < 1 or image_size < 2:
            raise ValueError(f"need n_bands >= 1 and image_size >= 2, got {n_bands}, {image_size}")
        self.n_bands, self.image_size = int(n_bands), int(image_size)
        self.stem = ConvStem(in_channels=n_bands, width=stem_width, image_size=image_size, kernel=stem_kernel,
                             prelu=prelu)
        self.trunk = InceptionTrunk(in_channels=stem_width, in_size=self.stem.out_size, modules=modules,
                                    pool_after=pool_after, prelu=prelu)
        self.final_pool, size = final_pool(self.trunk.out_size, final_pool_size)
        self.out_features = self.trunk.out_channels * size * size

    def forward(self, images: Tensor) -> Tensor:
        # torch.flatten copies when needed, so channels_last inputs give the same (C, H, W) order.
        return torch.flatten(self.final_pool(self.trunk(self.stem(images))), 1)
