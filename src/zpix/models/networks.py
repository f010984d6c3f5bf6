"""The image classifier of Pasquet et al. (2019) and its reduced variant, as registered models.

``pasquet2019`` is Table A.1 / Sect. 3.6 exactly: C1 5x5 (64) -> P1 -> five inception modules with
stride-2 average pools after the 2nd and 4th (the last module without its 5x5 branch) -> flatten
(8x8x348) -> [+ E(B-V)] -> FC1 1096 -> FC2 1096 -> 180 logits on 0 <= z <= 0.4.  PReLU in the
convolutions, ReLU in the fully connected layers, average pooling, no batch-norm, no dropout.

``pasquet2019-small`` keeps that layout -- 5x5 PReLU stem, average pools, inception modules, E(B-V)
at FC1, binned PDF -- but reduces depth and width, as the paper did for its 10 000-galaxy (2 %)
training set (Sect. 5, "reducing its depth and width"; Table 2) without giving the dimensions: a
16-map stem, two thin modules (the second without 5x5 branch) each followed by a stride-2 pool, a
final 4x4 average pool and FC 256 -> 256.  About 47 MFLOPs per 64x64x5 image (32x fewer than the
1.52 GFLOPs of the full network) and 0.5 M parameters: it trains at a few hundred images per second
on a 2-core laptop CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from zpix.models.base import PhotoZModel, check_head_fits, check_images
from zpix.models.heads import PASQUET2019_FC, BinnedPDFHead
from zpix.models.inception import PASQUET2019_MODULES, PASQUET2019_POOL_AFTER, InceptionBackbone
from zpix.models.registry import register_model, register_variant


class InceptionPDFNet(PhotoZModel):
    """Inception backbone on the image cube + binned-PDF head (optionally fed E(B-V)); the factories below
    configure the two parts."""

    def __init__(self, *, backbone: InceptionBackbone, head: BinnedPDFHead) -> None:
        super().__init__()
        check_head_fits(head, backbone.out_features)
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor | None, ebv: Tensor | None = None, mags: Tensor | None = None) -> Tensor:
        images = check_images(images, self.backbone.n_bands, self.backbone.image_size, type(self).__name__)
        return self.head(self.backbone(images), ebv)


@register_model("pasquet2019")
def pasquet2019(
    *,
    n_bands: int = 5,
    image_size: int = 64,
    n_bins: int = 180,
    z_min: float = 0.0,
    z_max: float = 0.4,
    use_ebv: bool = True,
    stem_width: int = 64,
    stem_kernel: int = 5,
    modules: Sequence[Sequence[int]] = PASQUET2019_MODULES,
    pool_after: Sequence[int] = PASQUET2019_POOL_AFTER,
    final_pool_size: int | None = None,
    fc_widths: Sequence[int] = PASQUET2019_FC,
    prelu: str = "channel",
) -> InceptionPDFNet:
    """Pasquet et al. (2019), Table A.1: 27 391 464 weights by the paper's Eq. (B.1).

    ``modules`` are ``[reduce, b1, b3, b5]`` per inception module (b5 = 0: no 5x5 branch),
    ``pool_after`` the 0-based modules followed by a stride-2 average pool, ``final_pool_size`` an
    optional adaptive average pool before the flatten (None in the paper), ``prelu`` "channel" (one
    slope per feature map, He et al. 2015's default) or "shared" (one slope per layer).
    """
    backbone = InceptionBackbone(n_bands=n_bands, image_size=image_size, stem_width=stem_width,
                                 stem_kernel=stem_kernel, modules=modules, pool_after=pool_after,
                                 final_pool_size=final_pool_size, prelu=prelu)
    head = BinnedPDFHead(in_features=backbone.out_features, n_bins=n_bins, z_min=z_min, z_max=z_max,
                         hidden=fc_widths, use_ebv=use_ebv)
    return InceptionPDFNet(backbone=backbone, head=head)


#: Reduced layout: 32x32 after the stem, 16x16 after module 1, 8x8 after module 2, pooled to 4x4.
SMALL_MODULES: tuple[tuple[int, int, int, int], ...] = ((16, 24, 24, 16), (24, 32, 32, 0))


register_variant(
    "pasquet2019-small",
    "pasquet2019",
    doc="Reduced Pasquet et al. (2019) network for small training sets and CPUs (same options).",
    stem_width=16,
    modules=SMALL_MODULES,
    pool_after=(0, 1),
    final_pool_size=4,
    fc_widths=(256, 256),
)
