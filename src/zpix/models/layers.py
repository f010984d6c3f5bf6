"""Small building blocks shared by every network: PReLU convolutions, "same" average pooling, MLPs.

Pasquet et al. (2019, Sect. 3.2 and 3.6) use Parametric ReLUs (He et al. 2015) in all convolution
layers,

    f(x) = x          if x >= 0
    f(x) = alpha * x  if x < 0,      (Eq. 1)

ReLU in the fully connected layers, and average (never max) pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRELU_MODES = ("channel", "shared")


class PReLU2d(nn.Module):
    """PReLU whose slopes are either one per channel or one per *segment* of channels.

    ``segments`` lists the channel counts of consecutive convolution layers that were fused into one
    convolution for speed (see :class:`zpix.models.inception.InceptionModule`).  With
    ``mode="channel"`` every channel has its own alpha (He et al. 2015, channel-wise variant); with
    ``mode="shared"`` each segment -- i.e. each original convolution layer -- shares one alpha
    (He et al. 2015, channel-shared variant).  Either way the fused layer is mathematically identical to
    the separate layers it replaces.
    """

    def __init__(self, *, segments: Sequence[int], mode: str = "channel", init: float = 0.25) -> None:
        super().__init__()
        if mode not in PRELU_MODES:
            raise ValueError(f"prelu mode must be one of {PRELU_MODES}, got {mode!r}")
        self.segments = [int(s) for s in segments]
        self.mode = mode
        n_alpha = sum(self.segments) if mode == "channel" else len(self.segments)
        self.weight = nn.Parameter(torch.full((n_alpha,), float(init)))
        # Channel index -> alpha index, for the shared mode (a buffer so it follows .to(device)).
        index = torch.repeat_interleave(torch.arange(len(self.segments)), torch.tensor(self.segments))
        self.register_buffer("_index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        alpha = self.weight if self.mode == "channel" else self.weight[self._index]
        return F.prelu(x, alpha)


class ConvPReLU(nn.Module):
    """Convolution (``kernel`` x ``kernel``, stride 1, zero "same" padding, with bias) then PReLU.

    ``out_segments`` (default: one segment of ``out_channels``) tells the PReLU which output channels
    belong to which logical convolution layer when several layers sharing one input are fused.
    ``groups`` > 1 runs independent convolutions on channel groups (parallel modality branches).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel: int,
        prelu: str = "channel",
        out_segments: Sequence[int] | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"convolution kernels must be odd for 'same' padding, got {kernel}")
        segments = list(out_segments) if out_segments is not None else [out_channels]
        if sum(segments) != out_channels:
            raise ValueError(f"segments {segments} do not add up to {out_channels} channels")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups)
        self.act = PReLU2d(segments=segments, mode=prelu)
        # He et al. (2015) initialisation, derived for (P)ReLU networks without batch-norm: keeps the
        # activation variance constant through depth, with the negative slope at its initial 0.25.
        nn.init.kaiming_normal_(self.conv.weight, a=0.25, mode="fan_in", nonlinearity="leaky_relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


def avg_pool_same(x: Tensor, kernel: int) -> Tensor:
    """Stride-1 average pooling that keeps H x W, as TensorFlow's ``padding="SAME"``.

    For the 2x2 stride-1 pooling branch of the inception modules (Table A.1: P2, P3, P5, P6, P8,
    "32x32 -> 32x32").  TensorFlow pads ``kernel - 1`` pixels, ``(kernel - 1) // 2`` before and the rest
    after, and averages over the real pixels only.  PyTorch pads symmetrically, so we pad
    ``kernel // 2`` on both sides, exclude the padding from the mean, and for even kernels drop the
    first output row/column, which leaves exactly TensorFlow's windows.
    """
    out = F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    if kernel % 2 == 0:
        out = out[..., 1:, 1:]
    return out


class MLP(nn.Sequential):
    """Fully connected layers with ReLU after each hidden layer and none after the last one."""

    def __init__(self, *, in_features: int, widths: Sequence[int], out_features: int | None = None) -> None:
        layers: list[nn.Module] = []
        n = in_features
        for w in widths:
            layers += [nn.Linear(n, int(w)), nn.ReLU(inplace=True)]
            n = int(w)
        if out_features is not None:
            layers.append(nn.Linear(n, out_features))
            n = out_features
        super().__init__(*layers)
        self.out_features = n


def as_column(value: Tensor, batch: int, name: str, dtype: torch.dtype) -> Tensor:
    """Validate a per-object scalar input given as (B,) or (B, 1) and return it as (B, 1) ``dtype``."""
    if value.ndim == 1:
        value = value.unsqueeze(1)
    if value.ndim != 2 or value.shape != (batch, 1):
        raise ValueError(f"{name} must have shape ({batch},) or ({batch}, 1), got {tuple(value.shape)}")
    return value.to(dtype)
