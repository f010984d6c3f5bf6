"""Output heads: a binned redshift PDF (classification) and a Gaussian regression.

``BinnedPDFHead`` follows Pasquet et al. (2019), Sect. 3.5-3.6: the flattened features, plus one
extra input holding the Galactic reddening E(B-V) (Sect. 6.1), go through FC1 (1096, ReLU) and
FC2 (1096, ReLU) to ``n_bins`` outputs; the softmax over them,

    P(z_k) = exp(l_k) / sum_j exp(l_j),   z_k = z_min + (k + 1/2) dz,   dz = (z_max - z_min) / n_bins,

is applied by the user of the model (losses want logits).  With 180 bins on 0-0.4, dz = 2.2e-3.

``RegressionHead`` returns two numbers per object, the redshift z and log sigma, so that regression
models (John William et al., KiDS bright) also carry an uncertainty (Gaussian N(z, sigma^2)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zpix.models.layers import MLP, as_column

PASQUET2019_FC: tuple[int, ...] = (1096, 1096)


class _FeatureHead(nn.Module):
    """Shared part: optional E(B-V) column concatenated to the features, then an MLP."""

    def __init__(self, *, in_features: int, hidden: Sequence[int], n_out: int, use_ebv: bool) -> None:
        super().__init__()
        self.use_ebv = bool(use_ebv)
        self.mlp = MLP(in_features=in_features + int(self.use_ebv), widths=hidden, out_features=n_out)

    def _raw(self, features: Tensor, ebv: Tensor | None) -> Tensor:
        return self.mlp(self._with_ebv(features, ebv))

    def _with_ebv(self, features: Tensor, ebv: Tensor | None) -> Tensor:
        if self.use_ebv:
            if ebv is None:
                raise ValueError(
                    "this model was built with use_ebv=True and needs ebv (B,) in forward(); "
                    "pass the E(B-V) values or build the model with use_ebv=False"
                )
            features = torch.cat([features, as_column(ebv, features.shape[0], "ebv", features.dtype)], 1)
        return features


class BinnedPDFHead(_FeatureHead):
    """FC -> ReLU -> FC -> ReLU -> ``n_bins`` logits over [z_min, z_max] (Pasquet et al. 2019)."""

    output_kind = "pdf"

    def __init__(
        self,
        *,
        in_features: int,
        n_bins: int = 180,
        z_min: float = 0.0,
        z_max: float = 0.4,
        hidden: Sequence[int] = PASQUET2019_FC,
        use_ebv: bool = True,
    ) -> None:
        if n_bins < 2 or not z_max > z_min:
            raise ValueError(f"need n_bins >= 2 and z_max > z_min, got {n_bins}, [{z_min}, {z_max}]")
        super().__init__(in_features=in_features, hidden=hidden, n_out=int(n_bins), use_ebv=use_ebv)
        self.n_bins, self.z_min, self.z_max = int(n_bins), float(z_min), float(z_max)

    def bin_centers(self) -> Tensor:
        """Mid-points z_k = z_min + (k + 1/2) dz of the ``n_bins`` classes (float64)."""
        dz = (self.z_max - self.z_min) / self.n_bins
        return self.z_min + dz * (torch.arange(self.n_bins, dtype=torch.float64) + 0.5)

    def forward(self, features: Tensor, ebv: Tensor | None = None) -> Tensor:
        return self._raw(features, ebv)


class RegressionHead(_FeatureHead):
    """MLP -> (z, log sigma) per object.

    The last linear layer's raw outputs (r0, r1) are mapped affinely so that an untrained network
    already answers on the scale of the redshift range:

        z = (z_min + z_max) / 2 + r0 (z_max - z_min) / 2,     log sigma = log((z_max - z_min) / 2) + r1.
    """

    output_kind = "regression"

    def __init__(
        self,
        *,
        in_features: int,
        z_min: float = 0.0,
        z_max: float = 0.8,
        hidden: Sequence[int] = (256, 128),
        use_ebv: bool = False,
    ) -> None:
        if not z_max > z_min:
            raise ValueError(f"need z_max > z_min, got [{z_min}, {z_max}]")
        super().__init__(in_features=in_features, hidden=hidden, n_out=2, use_ebv=use_ebv)
        self.z_min, self.z_max = float(z_min), float(z_max)
        half = (self.z_max - self.z_min) / 2
        self.register_buffer("_offset", torch.tensor([self.z_min + half, math.log(half)]), persistent=False)
        self.register_buffer("_scale", torch.tensor([half, 1.0]), persistent=False)

    def forward(self, features: Tensor, ebv: Tensor | None = None) -> Tensor:
        *body, last = self.mlp
        hidden = self._with_ebv(features, ebv)
        for layer in body:
            hidden = layer(hidden)
        # log sigma reads the last hidden layer detached: the Gaussian NLL then trains only its own
        # output row, never the shared features, which stay the Huber loss's alone (on the 20k KiDS
        # mock, letting the NLL shape the features left the hybrid at SMAD 0.0107 instead of 0.0090)
        z_raw = F.linear(hidden, last.weight[:1], last.bias[:1])
        log_sigma_raw = F.linear(hidden.detach(), last.weight[1:], last.bias[1:])
        raw = torch.cat([z_raw, log_sigma_raw], dim=1)
        return self._offset.to(raw.dtype) + self._scale.to(raw.dtype) * raw


def make_head(
    kind: str,
    *,
    in_features: int,
    n_bins: int,
    z_min: float,
    z_max: float,
    hidden: Sequence[int],
    use_ebv: bool,
) -> BinnedPDFHead | RegressionHead:
    """Build the head named ``kind`` ("pdf" or "regression")."""
    if kind == "pdf":
        return BinnedPDFHead(in_features=in_features, n_bins=n_bins, z_min=z_min, z_max=z_max, hidden=hidden,
                             use_ebv=use_ebv)
    if kind == "regression":
        return RegressionHead(in_features=in_features, z_min=z_min, z_max=z_max, hidden=hidden, use_ebv=use_ebv)
    raise ValueError(f"head must be 'pdf' or 'regression', got {kind!r}")
