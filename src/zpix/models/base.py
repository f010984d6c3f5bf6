"""The common face of every zpix network.

All models share one forward signature::

    forward(images: Tensor | None, ebv: Tensor | None = None, mags: Tensor | None = None) -> Tensor

with ``images`` (B, bands, H, W) float32, ``ebv`` (B,) or (B, 1), ``mags`` (B, n_mags).  Inputs a model
does not use are ignored.  PDF models return logits (B, n_bins); regression models (B, 2) = (z, log
sigma).  ``model.output_kind`` says which; PDF models also expose ``n_bins``, ``z_min``, ``z_max`` and
``bin_centers()``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from zpix.models.heads import BinnedPDFHead, RegressionHead


class PhotoZModel(nn.Module):
    """Base class: a subclass sets ``self.head`` and implements ``forward``."""

    head: BinnedPDFHead | RegressionHead

    @property
    def output_kind(self) -> str:
        """Either "pdf" (logits over redshift bins) or "regression" ((z, log sigma) per object)."""
        return self.head.output_kind

    @property
    def use_ebv(self) -> bool:
        return self.head.use_ebv

    @property
    def z_min(self) -> float:
        return self.head.z_min

    @property
    def z_max(self) -> float:
        return self.head.z_max

    @property
    def n_bins(self) -> int:
        if not isinstance(self.head, BinnedPDFHead):
            raise AttributeError("n_bins exists only for models with output_kind == 'pdf'")
        return self.head.n_bins

    def init_from(self, sources: Sequence[PhotoZModel]) -> list[str]:
        """Start from the weights of one trained model of the same architecture (fine-tuning, e.g. on
        another survey's spectroscopy).  Returns the names of the tensors copied.

        Subclasses that are built from parts (:class:`zpix.models.hybrid.HybridNet`) also accept
        several sources, one per part.
        """
        if len(sources) != 1:
            raise ValueError(f"{type(self).__name__} starts from exactly one trained model, got {len(sources)}")
        source = sources[0].state_dict()
        try:
            self.load_state_dict(source)  # strict: names missing, unexpected or of another shape all raise
        except RuntimeError as err:
            raise ValueError(f"the source model's weights do not fit this {type(self).__name__}; build both with "
                             f"the same model options ({err})") from err
        return sorted(source)

    def bin_centers(self) -> Tensor:
        """Mid-points of the redshift bins (PDF models only)."""
        if not isinstance(self.head, BinnedPDFHead):
            raise AttributeError("bin_centers() exists only for models with output_kind == 'pdf'")
        return self.head.bin_centers()


def check_head_fits(head: BinnedPDFHead | RegressionHead, n_features: int) -> None:
    """Raise a clear error unless ``head`` reads ``n_features`` features (plus its E(B-V) column)."""
    expected = n_features + int(head.use_ebv)
    if head.mlp[0].in_features != expected:
        raise ValueError(f"the head reads {head.mlp[0].in_features - int(head.use_ebv)} features but the parts "
                         f"before it give {n_features}; build the head with in_features={n_features}")


def check_images(images: Tensor | None, n_bands: int, image_size: int, model: str) -> Tensor:
    """Raise a clear error unless ``images`` is a (B, n_bands, image_size, image_size) tensor."""
    if images is None:
        raise ValueError(f"{model} needs images (B, {n_bands}, {image_size}, {image_size}); got None")
    if images.ndim != 4 or images.shape[1:] != (n_bands, image_size, image_size):
        raise ValueError(
            f"{model} expects images of shape (B, {n_bands}, {image_size}, {image_size}), got "
            f"{tuple(images.shape)}; build the model with n_bands=/image_size= matching your cubes"
        )
    return images
