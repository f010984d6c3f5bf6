"""Split representation and classification (Lin et al. 2022, Sect. 3.1): reuse a trained network's
representation, frozen, and retrain only its classification head.

Every zpix network with a binned-PDF head ends in ``self.head(features, ebv)`` (image CNNs, the
multimodal network, the hybrid and the magnitude network ``hybrid-mags``).  A forward pre-hook on
that head records its inputs, so the representation of each object is computed once, by the
network's own forward (same preprocessing, no augmentation), and the head alone is then retrained on
those stored features — seconds instead of a retraining of the whole network.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zpix.models.heads import BinnedPDFHead
from zpix.pdf import RedshiftGrid


@dataclass
class HeadInputs:
    """What the head of one network sees for a set of objects, and what it answered."""

    features: np.ndarray  # (N, F) float32
    ebv: np.ndarray | None  # (N,) float32, or None when the head does not read E(B-V)
    probs: np.ndarray  # (N, n_bins) the network's own probabilities (step-1 model)
    z: np.ndarray  # (N,) z_spec as given by the batches (NaN where unknown)
    index: np.ndarray | None  # (N,) the batches' "index" entries (cube-store rows) when present

    def take(self, rows: np.ndarray) -> HeadInputs:
        return HeadInputs(self.features[rows], None if self.ebv is None else self.ebv[rows], self.probs[rows],
                          self.z[rows], None if self.index is None else self.index[rows])


def pdf_head(module: Any) -> BinnedPDFHead:
    """The binned-PDF head of a :class:`~zpix.training.module.PhotoZModule` (clear error otherwise)."""
    head = getattr(module.model, "head", None)
    if not isinstance(head, BinnedPDFHead):
        raise ValueError(f"{module.hparams.model_name}: bias correction retrains a binned-PDF head, but this model's "
                         f"head is {type(head).__name__}; use a model with a PDF head (e.g. hybrid with head='pdf')")
    return head


@torch.inference_mode()
def head_inputs(module: Any, batches: Iterable[dict[str, Tensor]], device: str = "cpu") -> HeadInputs:
    """Run ``module`` (eval mode, no augmentation) over ``batches`` and keep its head's inputs."""
    head = pdf_head(module)
    module.eval().to(device)
    captured: list[tuple[Tensor, Tensor | None]] = []

    def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
        feats = args[0]
        ebv = args[1] if len(args) > 1 else None
        captured.append((feats.detach().float().cpu(), None if ebv is None else ebv.detach().float().cpu()))

    handle = head.register_forward_pre_hook(hook)
    probs, zs, index = [], [], []
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            probs.append(module.probabilities(module.raw_output(batch, train=False)).float().cpu())
            zs.append(batch["z"].float().cpu())
            if "index" in batch:
                index.append(batch["index"].cpu())
    finally:
        handle.remove()
    if not captured:
        raise ValueError("head_inputs: no batch to run")
    feats = torch.cat([f.reshape(f.shape[0], -1) for f, _ in captured]).numpy()
    ebv = None if captured[0][1] is None else torch.cat([e.reshape(-1) for _, e in captured]).numpy()
    return HeadInputs(feats, ebv if head.use_ebv else None, torch.cat(probs).numpy(), torch.cat(zs).numpy(),
                      torch.cat(index).numpy() if index else None)


def extended_head(head: BinnedPDFHead, grid: RedshiftGrid) -> BinnedPDFHead:
    """A copy of ``head`` whose output covers ``grid``: the old bins keep their weights, new bins at the
    ends start with zero weights and the smallest old bias (improbable until retrained).

    ``grid`` must extend the head's own grid by whole bins of the same width.
    """
    old = RedshiftGrid(head.n_bins, head.z_min, head.z_max)
    offset = (old.z_min - grid.z_min) / old.width
    k_low = int(round(offset))
    if (abs(offset - k_low) > 1e-6 or k_low < 0 or abs(grid.width - old.width) > 1e-9 * old.width
            or k_low + old.n_bins > grid.n_bins):
        raise ValueError(f"grid {grid} does not extend the head's grid {old} by whole bins")
    new = copy.deepcopy(head)
    if grid == old:
        return new
    last_old: nn.Linear = head.mlp[-1]
    last = nn.Linear(last_old.in_features, grid.n_bins)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(float(last_old.bias.min()))
        last.weight[k_low:k_low + old.n_bins] = last_old.weight
        last.bias[k_low:k_low + old.n_bins] = last_old.bias
    new.mlp[-1] = last
    new.n_bins, new.z_min, new.z_max = grid.n_bins, grid.z_min, grid.z_max
    return new


def _soft_ce(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Cross-entropy with soft targets, −Σ_k q_k log softmax(l)_k, averaged (weighted) over objects."""
    per = -(targets * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum()


def _head_logits(head: BinnedPDFHead, feats: Tensor, ebv: Tensor | None) -> Tensor:
    return head(feats, ebv if head.use_ebv else None)


def train_head(
    head: BinnedPDFHead,
    train: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    val: tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None] | None = None,
    *,
    lr: float = 3e-4,
    epochs: int = 30,
    patience: int = 5,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> tuple[BinnedPDFHead, dict[str, Any]]:
    """Retrain ``head`` (in place, on CPU) with Adam on soft-label cross-entropy.

    ``train`` = (features, ebv or None, targets (N, n_bins)); ``val`` adds per-object weights (or None)
    and picks the epoch of lowest weighted validation loss (early stopping with ``patience``).
    Returns the head at its best epoch and the loss history.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    f_tr = torch.as_tensor(train[0], dtype=torch.float32)
    e_tr = None if train[1] is None else torch.as_tensor(train[1], dtype=torch.float32)
    q_tr = torch.as_tensor(train[2], dtype=torch.float32)
    if q_tr.shape != (f_tr.shape[0], head.n_bins):
        raise ValueError(f"train_head: targets {tuple(q_tr.shape)} do not match {f_tr.shape[0]} objects x "
                         f"{head.n_bins} bins")
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)

    def val_loss() -> float:
        if val is None:
            return math.nan
        head.eval()
        with torch.no_grad():
            w = None if val[3] is None else torch.as_tensor(val[3], dtype=torch.float32)
            loss = _soft_ce(_head_logits(head, torch.as_tensor(val[0], dtype=torch.float32),
                                         None if val[1] is None else torch.as_tensor(val[1], dtype=torch.float32)),
                            torch.as_tensor(val[2], dtype=torch.float32), w)
        head.train()
        return float(loss)

    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    best, best_state, since = val_loss(), copy.deepcopy(head.state_dict()), 0
    history["val_loss"].append(best)
    n = f_tr.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(0, n, batch_size):
            i = perm[s:s + batch_size]
            loss = _soft_ce(_head_logits(head, f_tr[i], None if e_tr is None else e_tr[i]), q_tr[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(i)
        history["train_loss"].append(total / n)
        v = val_loss()
        history["val_loss"].append(v)
        if val is None or v < best - 1e-6:
            best, best_state, since = v, copy.deepcopy(head.state_dict()), 0
        else:
            since += 1
            if since >= patience:
                break
    head.load_state_dict(best_state)
    head.eval()
    # converged: early stopping ended the run (the validation loss stopped improving before the epoch limit)
    return head, {**history, "best_val_loss": best, "epochs_run": len(history["train_loss"]),
                  "converged": bool(val is not None and since >= patience)}


@torch.inference_mode()
def head_probs(head: BinnedPDFHead, features: np.ndarray, ebv: np.ndarray | None, batch: int = 8192) -> np.ndarray:
    """Softmax probabilities of ``head`` on stored features (N, n_bins), float64."""
    head.eval()
    out = []
    for s in range(0, features.shape[0], batch):
        f = torch.as_tensor(features[s:s + batch], dtype=torch.float32)
        e = None if ebv is None else torch.as_tensor(ebv[s:s + batch], dtype=torch.float32)
        out.append(torch.softmax(_head_logits(head, f, e).float(), dim=1).double().numpy())
    return np.concatenate(out) if out else np.empty((0, head.n_bins))
