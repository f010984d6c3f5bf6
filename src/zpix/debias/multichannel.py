"""Multi-channel outputs in redshift and r magnitude (Lin et al. 2022, slides "multi-channel outputs").

The retrained classification head answers, instead of one softmax over redshift bins, a joint softmax
over M r-magnitude channels × K redshift bins,

    p(m, z_k | θ) = exp(l_{m,k}) / Σ_{m′,k′} exp(l_{m′,k′}),

trained on joint labels q(m, z′ | m_i, z_i) = δ(m, m_i) · q̃(z′ | z_i) (the soft labels of
:mod:`zpix.debias.labels` in redshift, the object's own channel in magnitude).  Its redshift PDF is the
marginal over the channels,

    p(z_k | θ) = Σ_m p(m | θ) p(z_k | m, θ) = Σ_m p(m, z_k | θ),

which :class:`MagChannelPDFHead` returns as logits ``log Σ_m exp(l_{m,k})`` (a log-sum-exp over the
channels): their softmax is that marginal exactly, so every user of a binned-PDF model (``zpix predict``,
the calibration, the evaluation) reads the marginal K-bin PDF without knowing about the channels.

The channels are M equal-count bins of the r magnitude of the head's training rows (the balanced
subset); their M − 1 inner edges are saved with the head (``PhotoZModule(head_channels=...)`` rebuilds it
from a checkpoint) and in ``debias.json``.  ``DebiasConfig(mag_channels=M)`` / ``zpix debias
--mag-channels M`` switch it on; the default M = 1 is the single-channel head of :mod:`zpix.debias.api`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zpix.models.heads import PASQUET2019_FC, BinnedPDFHead


class MagChannelPDFHead(BinnedPDFHead):
    """A binned-PDF head with M r-magnitude channels: the same MLP as :class:`BinnedPDFHead` up to its
    last layer, which gives M × ``n_bins`` joint logits; ``forward`` returns the logits of the marginal
    over the channels (see the module docstring)."""

    def __init__(
        self,
        *,
        in_features: int,
        n_bins: int = 180,
        z_min: float = 0.0,
        z_max: float = 0.4,
        hidden: Sequence[int] = PASQUET2019_FC,
        use_ebv: bool = True,
        mag_edges: Sequence[float] = (17.0,),
    ) -> None:
        super().__init__(in_features=in_features, n_bins=n_bins, z_min=z_min, z_max=z_max, hidden=hidden,
                         use_ebv=use_ebv)
        edges = [float(e) for e in mag_edges]
        if not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or not np.isfinite(edges).all():
            raise ValueError(f"mag_edges must be 1 or more finite, increasing inner channel edges, got {edges}")
        self.mag_edges = edges
        self.n_channels = len(edges) + 1
        last: nn.Linear = self.mlp[-1]
        self.mlp[-1] = nn.Linear(last.in_features, self.n_channels * self.n_bins)

    def joint_logits(self, features: Tensor, ebv: Tensor | None = None) -> Tensor:
        """Logits l_{m,k} of the joint softmax over (channel, redshift bin), shape (B, M, n_bins)."""
        return self._raw(features, ebv).reshape(-1, self.n_channels, self.n_bins)

    def forward(self, features: Tensor, ebv: Tensor | None = None) -> Tensor:
        return torch.logsumexp(self.joint_logits(features, ebv).float(), dim=1)

    def channel_config(self) -> dict[str, Any]:
        """What rebuilds this head on top of a model's ordinary head (``PhotoZModule(head_channels=...)``)."""
        return {"n_channels": self.n_channels, "mag_edges": list(self.mag_edges)}


def _hidden_widths(head: BinnedPDFHead) -> list[int]:
    return [m.out_features for m in head.mlp if isinstance(m, nn.Linear)][:-1]


def with_mag_channels(head: BinnedPDFHead, *, n_channels: int, mag_edges: Sequence[float]) -> MagChannelPDFHead:
    """A :class:`MagChannelPDFHead` of ``head``'s architecture and grid, starting from its weights: the hidden
    layers are copied and every channel's output rows are ``head``'s, so p(m|θ) starts uniform, p(z|m,θ)
    equal to ``head``'s PDF, and the marginal is exactly ``head``'s PDF until retrained."""
    if isinstance(head, MagChannelPDFHead):
        raise ValueError("the head already has magnitude channels; start from the run it was debiased from")
    if int(n_channels) != len(mag_edges) + 1:
        raise ValueError(f"{n_channels} channels need {int(n_channels) - 1} inner magnitude edges, "
                         f"got {list(mag_edges)}")
    new = MagChannelPDFHead(in_features=head.mlp[0].in_features - int(head.use_ebv), n_bins=head.n_bins,
                            z_min=head.z_min, z_max=head.z_max, hidden=_hidden_widths(head), use_ebv=head.use_ebv,
                            mag_edges=mag_edges)
    src = head.state_dict()
    last = f"mlp.{len(head.mlp) - 1}."
    state = {k: v for k, v in src.items() if not k.startswith(last)}
    state[last + "weight"] = src[last + "weight"].repeat(new.n_channels, 1)
    state[last + "bias"] = src[last + "bias"].repeat(new.n_channels)
    new.load_state_dict(state)
    new.to(next(head.parameters()).dtype)
    return new


# --------------------------------------------------------------------------------------------
# channels and joint labels


def channel_edges(mag: np.ndarray, n_channels: int) -> np.ndarray:
    """The M − 1 inner edges of M equal-count bins of ``mag`` (its finite values)."""
    m = np.asarray(mag, dtype=np.float64)
    m = m[np.isfinite(m)]
    if int(n_channels) < 2:
        raise ValueError(f"magnitude channels need n_channels >= 2, got {n_channels}")
    if m.size < n_channels:
        raise ValueError(f"{m.size} objects with a finite r magnitude cannot fill {n_channels} magnitude channels")
    edges = np.quantile(m, np.arange(1, n_channels) / n_channels)
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"the r magnitudes do not split into {n_channels} channels of distinct edges ({edges}); "
                         "use fewer --mag-channels")
    return edges


def channel_index(mag: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Channel of each magnitude: m such that e_{m−1} ≤ mag < e_m (open-ended outer channels; NaN → last)."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(mag, dtype=np.float64), side="right")


def joint_targets(targets: np.ndarray, channel: np.ndarray, n_channels: int) -> np.ndarray:
    """q(m, z′) = δ(m, m_i) q̃(z′|z_i): (N, n_bins) redshift labels placed in each object's channel,
    flattened channel-major to (N, n_channels × n_bins) like :meth:`MagChannelPDFHead.joint_logits`."""
    n, k = targets.shape
    out = np.zeros((n, int(n_channels), k), dtype=np.float32)
    out[np.arange(n), np.asarray(channel, dtype=np.int64)] = targets
    return out.reshape(n, -1)


class _JointView(nn.Module):
    """The head seen through its joint logits, flattened, so that :func:`zpix.debias.head.train_head`
    (soft-label cross-entropy, early stopping) trains it unchanged."""

    def __init__(self, head: MagChannelPDFHead) -> None:
        super().__init__()
        self.head = head
        self.use_ebv = head.use_ebv
        self.n_bins = head.n_channels * head.n_bins

    def forward(self, features: Tensor, ebv: Tensor | None = None) -> Tensor:
        return self.head.joint_logits(features, ebv).reshape(features.shape[0], -1)


def channel_record(plan: Any) -> dict[str, Any]:
    """The channels of a :class:`zpix.debias.api.LabelPlan` with ``mag_channels`` > 1: their inner edges
    (equal-count over the subset's r magnitudes) and how many subset / validation objects each holds."""
    m = int(plan.config.mag_channels)
    edges = channel_edges(plan.mag, m)
    return {"n_channels": m, "mag_edges": edges.tolist(),
            "train_counts": np.bincount(channel_index(plan.mag, edges), minlength=m).tolist(),
            "val_counts": np.bincount(channel_index(plan.val_mag, edges), minlength=m).tolist()}


def retrain_multichannel_heads(
    heads: list[BinnedPDFHead],
    train_inputs: list[Any],
    val_inputs: list[Any],
    plan: Any,
) -> tuple[list[MagChannelPDFHead], list[dict[str, Any]]]:
    """:func:`zpix.debias.api.retrain_heads` with ``plan.config.mag_channels`` magnitude channels: each
    member's head, extended to ``plan.grid`` and split into channels (:func:`with_mag_channels`), is trained
    on the joint labels of the subset rows, early-stopped on those of the validation rows (weighted as
    in the single-channel case)."""
    from zpix.debias.head import extended_head, train_head

    cfg = plan.config
    rec = channel_record(plan)
    m, edges = rec["n_channels"], rec["mag_edges"]
    targets = joint_targets(plan.train_targets(), channel_index(plan.mag, edges), m)
    val_targets = joint_targets(plan.val_targets(), channel_index(plan.val_mag, edges), m)
    new_heads, histories = [], []
    for k, (head, tr, va) in enumerate(zip(heads, train_inputs, val_inputs, strict=True)):
        if tr.features.shape[0] != targets.shape[0]:
            raise ValueError(f"member {k}: {tr.features.shape[0]} training feature rows but {targets.shape[0]} labels")
        view = _JointView(with_mag_channels(extended_head(head, plan.grid), n_channels=m, mag_edges=edges))
        view, hist = train_head(view, (tr.features, tr.ebv, targets),  # type: ignore[arg-type]
                                (va.features, va.ebv, val_targets, plan.val_weight), lr=cfg.lr, epochs=cfg.epochs,
                                patience=cfg.patience, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                                seed=cfg.seed + k)
        new_heads.append(view.head)
        histories.append({**hist, "mag_channels": m})
    return new_heads, histories


@torch.inference_mode()
def channel_probs(head: MagChannelPDFHead, features: np.ndarray, ebv: np.ndarray | None) -> np.ndarray:
    """The joint probabilities p(m, z_k | θ) of stored features, (N, M, n_bins) float64."""
    head.eval()
    f = torch.as_tensor(features, dtype=torch.float32)
    e = None if ebv is None or not head.use_ebv else torch.as_tensor(ebv, dtype=torch.float32)
    logits = head.joint_logits(f, e).float()
    return torch.softmax(logits.reshape(len(f), -1), dim=1).reshape(logits.shape).double().numpy()


def head_like(head: BinnedPDFHead, record: dict[str, Any]) -> MagChannelPDFHead:
    """The multi-channel head described by ``record`` (:meth:`MagChannelPDFHead.channel_config`) in place of a
    freshly built model's ``head`` (what ``PhotoZModule(head_channels=record)`` uses; the checkpoint's
    weights are loaded afterwards)."""
    if not isinstance(head, BinnedPDFHead):
        raise ValueError(f"head_channels needs a binned-PDF head, this model's is {type(head).__name__}")
    unknown = sorted(set(record) - {"n_channels", "mag_edges"})
    if unknown:
        raise ValueError(f"head_channels: unknown key(s) {unknown}; expected n_channels and mag_edges")
    return with_mag_channels(head, n_channels=int(record["n_channels"]), mag_edges=record["mag_edges"])


def describe_channels(record: dict[str, Any]) -> str:
    """One line of ``zpix info`` for the channels in ``debias.json``."""
    e = record["mag_edges"]
    bounds = [f"r < {e[0]:.2f}"] + [f"{a:.2f}-{b:.2f}" for a, b in zip(e, e[1:], strict=False)] + [f"r >= {e[-1]:.2f}"]
    parts = [f"{b} (n={n})" for b, n in zip(bounds, record["train_counts"], strict=True)]
    return (f"  magnitude channels: {record['n_channels']} (p(z|θ) = Σ_m p(m|θ) p(z|m,θ), the marginal is the "
            "saved PDF): " + ", ".join(parts))
