"""Multimodal CNN of Ait Ouahmed et al. (2024, A&A 683, A26): small sets of bands processed in parallel.

A *modality* is a small set of bands; "first order" 2-band modalities are adjacent pairs
(u_g, g_r, r_i, i_z for ugriz), second order skip one band (u_r, g_i, r_z), and so on -- the
slides' table of modality sizes (2, 3, 4 bands) and orders (1st, 2nd, 3rd): size 3, order 1 is
u_g_r, g_r_i, r_i_z; ``modality_order=(1, 2)`` takes the first- and second-order modalities together
(the slides' "2 band first and second order modalities", 4 + 3 stems for ugriz).  Their best
and simplest configuration -- 2-band, first-order modalities, *early fusion* (about 25 % of the depth
in parallel, 75 % common) -- is the default here:

    per modality m:  Conv 5x5 (32 x M_s) -> PReLU -> avg-pool 2 -> Conv 5x5 (32 x M_s) -> PReLU
    fusion:          concatenate the modalities' maps
    common block:    the inception trunk of Pasquet et al. (2019, Table A.1) -> flatten
                     -> [+ E(B-V)] -> FC 1096 -> FC 1096 -> n_bins logits

with M_s the modality size (the slides' "Conv 5x5x(32xMs)" twice); two of the network's seven
stages (2 parallel convolutions + 5 inception modules) run in parallel.  The parallel stems are one
grouped convolution (``groups`` = number of modalities): mathematically separate stems, one kernel.

Modality dropout (``modality_dropout`` = p): during training each modality of each object is
switched off (its fused maps set to 0) with probability p, at least one kept, and the kept ones are
scaled by n_modalities / n_kept so that the expected input of the common block is unchanged (as in
inverted dropout).  :meth:`MultimodalNet.set_modality_mask` switches modalities off at any time --
at test time, to measure how much the band correlations each one carries matter (the slides'
"multimodality dropout" study): a network trained with modality dropout has learnt to work on any
subset, so Δσ_MAD with modality m off measures what m adds to the others.

:meth:`MultimodalNet.features` is the shared feature extractor (stems + fused trunk, flattened), the
part a domain discriminator is attached to (:mod:`zpix.training.domain`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from zpix.models.base import PhotoZModel, check_images
from zpix.models.heads import PASQUET2019_FC, BinnedPDFHead
from zpix.models.inception import (
    PASQUET2019_MODULES,
    PASQUET2019_POOL_AFTER,
    ConvStem,
    InceptionTrunk,
    final_pool,
)
from zpix.models.networks import SMALL_MODULES
from zpix.models.registry import register_model, register_variant


def modality_bands(n_bands: int, size: int = 2, order: int | Sequence[int] = 1) -> list[list[int]]:
    """Band indices of the modalities of ``size`` bands spaced by ``order`` (1 = adjacent).

    ``modality_bands(5, 2, 1)`` -> [[0, 1], [1, 2], [2, 3], [3, 4]] (u_g, g_r, r_i, i_z);
    ``modality_bands(5, 2, 2)`` -> [[0, 2], [1, 3], [2, 4]] (u_r, g_i, r_z);
    ``modality_bands(5, 3, 1)`` -> [[0, 1, 2], [1, 2, 3], [2, 3, 4]] (u_g_r, g_r_i, r_i_z);
    ``modality_bands(5, 2, (1, 2))`` -> the first-order modalities followed by the second-order ones.
    """
    orders = [int(order)] if isinstance(order, int | float) else [int(o) for o in order]
    if size < 1 or not orders or min(orders) < 1:
        raise ValueError(f"modality size and order(s) must be >= 1, got {size}, {order}")
    out: list[list[int]] = []
    for o in orders:
        span = (size - 1) * o
        if span >= n_bands:
            raise ValueError(f"{n_bands} bands cannot hold a modality of {size} bands of order {o}")
        out += [[start + j * o for j in range(size)] for start in range(n_bands - span) if
                [start + j * o for j in range(size)] not in out]
    return out


def modality_names(bands: Sequence[str], modalities: Sequence[Sequence[int]]) -> list[str]:
    """Names such as ``u_g`` for the modalities' band lists (``bands`` names the image planes)."""
    return ["_".join(str(bands[b]) for b in m) for m in modalities]


class MultimodalNet(PhotoZModel):
    """Parallel per-modality stems, early fusion, shared inception trunk, binned-PDF head."""

    def __init__(
        self,
        *,
        n_bands: int,
        image_size: int,
        n_bins: int,
        z_min: float,
        z_max: float,
        use_ebv: bool,
        modalities: Sequence[Sequence[int]],
        width_per_band: int,
        parallel_convs: int,
        stem_kernel: int,
        modules: Sequence[Sequence[int]],
        pool_after: Sequence[int],
        final_pool_size: int | None,
        fc_widths: Sequence[int],
        modality_dropout: float,
        prelu: str,
    ) -> None:
        super().__init__()
        modalities = [[int(b) for b in m] for m in modalities]
        sizes = {len(m) for m in modalities}
        if not modalities or len(sizes) != 1:
            raise ValueError(f"modalities must be a non-empty list of equal-size band lists, got {modalities}")
        bad = sorted({b for m in modalities for b in m if not 0 <= b < n_bands})
        if bad:
            raise ValueError(f"modalities refer to bands {bad} outside 0..{n_bands - 1}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.n_bands, self.image_size = int(n_bands), int(image_size)
        self.modalities = modalities
        self.n_modalities = len(modalities)
        self.modality_dropout = float(modality_dropout)
        # Gather the bands of every modality side by side; a band shared by two modalities is copied.
        self.register_buffer("band_index", torch.tensor([b for m in modalities for b in m]), persistent=False)
        self.modality_width = int(width_per_band) * len(modalities[0])
        self.stems = ConvStem(
            in_channels=len(self.band_index),
            width=self.n_modalities * self.modality_width,
            image_size=image_size,
            kernel=stem_kernel,
            n_convs=parallel_convs,
            groups=self.n_modalities,
            prelu=prelu,
        )
        self.trunk = InceptionTrunk(in_channels=self.stems.out_channels, in_size=self.stems.out_size,
                                    modules=modules, pool_after=pool_after, prelu=prelu)
        self.final_pool, size = final_pool(self.trunk.out_size, final_pool_size)
        self.out_features = self.trunk.out_channels * size * size
        self.head = BinnedPDFHead(in_features=self.out_features, n_bins=n_bins, z_min=z_min, z_max=z_max,
                                  hidden=fc_widths, use_ebv=use_ebv)
        self.register_buffer("modality_mask", torch.ones(self.n_modalities, dtype=torch.bool), persistent=False)

    def set_modality_mask(self, keep: Sequence[bool] | None) -> None:
        """Switch modalities off (False) in training and inference; None switches all back on."""
        mask = torch.ones(self.n_modalities, dtype=torch.bool) if keep is None else torch.as_tensor(keep)
        if mask.shape != (self.n_modalities,) or not mask.any():
            raise ValueError(f"need {self.n_modalities} booleans with at least one True, got {keep!r}")
        self.modality_mask.copy_(mask.to(torch.bool))

    def _modality_weights(self, batch: int, device: torch.device) -> Tensor | None:
        """(B, n_modalities) weights: 0 for dropped modalities, n / n_kept for kept ones; None if all kept."""
        keep = self.modality_mask.expand(batch, -1)
        if self.training and self.modality_dropout > 0:
            drawn = torch.rand(batch, self.n_modalities, device=device) >= self.modality_dropout
            keep = keep & drawn
            # objects that lost every modality get one of the allowed ones back, drawn at random
            empty = ~keep.any(dim=1)
            if empty.any():
                scores = torch.rand(batch, self.n_modalities, device=device) * self.modality_mask
                rescue = torch.zeros_like(keep).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
                keep = torch.where(empty[:, None], rescue, keep)
        if bool(keep.all()):
            return None
        keep_f = keep.float()
        return keep_f * (self.n_modalities / keep_f.sum(dim=1, keepdim=True))

    def features(self, images: Tensor) -> Tensor:
        """The shared feature extractor: modality stems, fusion, common trunk, flattened (B, out_features)."""
        fused = self.stems(images.index_select(1, self.band_index))
        weights = self._modality_weights(images.shape[0], images.device)
        if weights is not None:
            # one weight per modality, repeated over that modality's maps
            per_map = weights.to(fused.dtype).repeat_interleave(self.modality_width, dim=1)
            fused = fused * per_map[:, :, None, None]
        return torch.flatten(self.final_pool(self.trunk(fused)), 1)

    def forward(self, images: Tensor | None, ebv: Tensor | None = None, mags: Tensor | None = None) -> Tensor:
        images = check_images(images, self.n_bands, self.image_size, "MultimodalNet")
        return self.head(self.features(images), ebv)


@register_model("multimodal")
def multimodal(
    *,
    n_bands: int = 5,
    image_size: int = 64,
    n_bins: int = 180,
    z_min: float = 0.0,
    z_max: float = 0.4,
    use_ebv: bool = True,
    modality_size: int = 2,
    modality_order: int | Sequence[int] = 1,
    modalities: Sequence[Sequence[int]] | None = None,
    width_per_band: int = 32,
    parallel_convs: int = 2,
    stem_kernel: int = 5,
    modules: Sequence[Sequence[int]] = PASQUET2019_MODULES,
    pool_after: Sequence[int] = PASQUET2019_POOL_AFTER,
    final_pool_size: int | None = None,
    fc_widths: Sequence[int] = PASQUET2019_FC,
    modality_dropout: float = 0.0,
    prelu: str = "channel",
) -> MultimodalNet:
    """Ait Ouahmed et al. (2024): first-order 2-band modalities, early fusion, Pasquet et al. trunk.

    ``modality_size`` bands per modality (2, 3, 4 in the slides' table), ``modality_order`` the
    spacing of their bands (1: adjacent, 2: every other band, ...) or several orders together, e.g.
    ``(1, 2)``; ``modalities`` (explicit band-index lists, all the same size) overrides both.
    ``modality_dropout`` p switches each modality of each training object off with probability p.
    """
    if modalities is None:
        modalities = modality_bands(n_bands, modality_size, modality_order)
    return MultimodalNet(
        n_bands=n_bands, image_size=image_size, n_bins=n_bins, z_min=z_min, z_max=z_max, use_ebv=use_ebv,
        modalities=modalities, width_per_band=width_per_band, parallel_convs=parallel_convs,
        stem_kernel=stem_kernel, modules=modules, pool_after=pool_after, final_pool_size=final_pool_size,
        fc_widths=fc_widths, modality_dropout=modality_dropout, prelu=prelu,
    )


register_variant(
    "multimodal-small",
    "multimodal",
    doc="The multimodal model at the size of pasquet2019-small, for CPUs and small training sets.",
    width_per_band=8,
    modules=SMALL_MODULES,
    pool_after=(0, 1),
    final_pool_size=4,
    fc_widths=(256, 256),
)
