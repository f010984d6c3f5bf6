"""The network's learned features (the input of its head) and the members' PDFs, for calibration and quality."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from zpix.pdf import RedshiftGrid


class FeatureCapture:
    """Keep the network's penultimate activations (the output of the last hidden layer of its head's MLP,
    which the output layer reads) while the context is open; the head's input where the MLP has no hidden
    layer.  Every zpix network has a ``head`` with an ``mlp``."""

    def __init__(self, model: nn.Module) -> None:
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise ValueError(f"{type(model).__name__} has no .head module; its features cannot be read")
        self.head = head
        mlp = getattr(head, "mlp", None)
        hidden = [m for m in mlp if isinstance(m, nn.ReLU)] if isinstance(mlp, nn.Sequential) else []
        # a forward hook on the last ReLU module: both heads call their hidden layers as modules (the
        # regression head applies its output layer's weights directly, so a hook there would never fire)
        self.layer = hidden[-1] if hidden else None
        self.last: np.ndarray | None = None
        self._handle: Any = None

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.last = args[0].detach().float().cpu().numpy()

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.last = output.detach().float().cpu().numpy()

    def __enter__(self) -> FeatureCapture:
        self._handle = (self.head.register_forward_pre_hook(self._pre_hook) if self.layer is None
                        else self.layer.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


def infer(run: str | os.PathLike, cubes: str | os.PathLike, rows: np.ndarray, *, with_features: bool = False,
          batch_size: int = 64, device: str | None = None, on_bad: str = "error", members: list | None = None
          ) -> dict[str, Any]:
    """Uncalibrated ensemble-mean PDFs of ``rows`` (in the order given), with the members' z_mean (M, N),
    z_spec and, with ``with_features``, member 0's penultimate activations (N, F; :class:`FeatureCapture`)."""
    from zpix.prediction.streaming import default_device, load_ensemble
    from zpix.store.dataset import CubeDataset

    device = device or default_device()
    members = members or load_ensemble(run, device)
    grid = RedshiftGrid.from_dict(members[0].hparams.grid)
    centers = torch.as_tensor(grid.centers, dtype=torch.float64)
    use_mags = any(bool(getattr(m.model, "use_mags", False)) for m in members)
    dataset = CubeDataset(cubes, indices=np.asarray(rows), use_mags=use_mags, on_bad=on_bad)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    probs, zmeans, feats, zs, index = [], [], [], [], []
    capture = FeatureCapture(members[0].model) if with_features else nullcontext()
    with capture, torch.inference_mode():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            member_probs = torch.stack([m(batch) for m in members]).double().cpu()
            probs.append(member_probs.mean(0).numpy())
            zmeans.append((member_probs @ centers).numpy())
            if with_features:
                feats.append(capture.last)  # type: ignore[union-attr]
            zs.append(batch["z"].double().cpu().numpy())
            index.append(batch["index"].cpu().numpy())
    return {"probs": np.concatenate(probs), "member_zmean": np.concatenate(zmeans, axis=1),
            "features": np.concatenate(feats) if with_features else None, "z_spec": np.concatenate(zs),
            "index": np.concatenate(index), "grid": grid}
