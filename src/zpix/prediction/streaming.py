"""Streaming prediction: cube store → redshift PDFs (qp HDF5) + a point-estimate catalogue.

The ensemble PDF is the mean of the members' PDFs (Pasquet et al. 2019, Sect. 3.8); the
catalogue's z_mean is Eq. (2), z_phot = Σ_k z_k P(z_k).  Memory is bounded by the batch size:
images are read, predicted and written batch by batch, and the output directory appears
only when the whole run has succeeded (a killed run leaves nothing that looks complete).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zpix.pdf import RedshiftGrid
from zpix.prediction.format import PredictionWriter, iter_pdfs, read_predictions
from zpix.runs import checkpoint_paths
from zpix.store.cube_store import CubeStore
from zpix.store.dataset import CubeDataset
from zpix.training.module import PhotoZModule


def load_ensemble(model: str | os.PathLike, device: str | torch.device = "cpu",
                  channels_last: bool = True) -> list[PhotoZModule]:
    """Load every member of a run (or one checkpoint) in eval mode.

    ``channels_last`` (NHWC) memory layout was measured 1.6x faster for pasquet2019 inference on
    CPU (benchmarks/speed.py); the numbers are the same up to float rounding.
    """
    # compile is a training choice: prediction batches vary in size and would trigger recompilations
    members = [PhotoZModule.load_from_checkpoint(p, map_location=device, channels_last=channels_last,
                                                 compile="none")
               for p in checkpoint_paths(model)]
    grids = {RedshiftGrid.from_dict(m.hparams.grid) for m in members}
    if len(grids) != 1:
        raise ValueError(f"{model}: ensemble members use different redshift grids {grids}")
    for m in members:
        m.eval()
    return members


def _extra_columns(store: CubeStore) -> list[str]:
    """Per-object numeric columns worth carrying into the catalogue (for trend plots)."""
    names = ["ebv"] + [f"catalog/{c}" for c in store.catalog_columns
                       if store.file[f"catalog/{c}"].dtype.kind in "fiub"]
    return names


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def predict(
    model: str | os.PathLike,
    cubes: str | os.PathLike,
    out: str | os.PathLike,
    rows: np.ndarray | None = None,
    batch_size: int = 64,
    num_workers: int = 1,
    device: str | None = None,
    on_bad: str = "error",
    overwrite: bool = False,
    progress: bool = True,
    pdf_dtype: str = "float32",
) -> Path:
    """Predict PDFs for ``rows`` of ``cubes`` (default: all valid rows) with the model/ensemble ``model``."""
    device = device or default_device()
    members = load_ensemble(model, device)
    first = members[0]
    grid = RedshiftGrid.from_dict(first.hparams.grid)
    use_mags = any(bool(getattr(m.model, "zpix_config", {}).get("n_mags", 0)) for m in members)
    dataset = CubeDataset(cubes, indices=rows, use_mags=use_mags, on_bad=on_bad)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.startswith("cuda"))
    meta: dict[str, Any] = {"model": str(model), "members": [str(p) for p in checkpoint_paths(model)],
                            "model_name": first.hparams.model_name, "cubes": str(cubes)}
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else nullcontext())
    with CubeStore(cubes, on_bad=on_bad, validate=False) as store:  # type: ignore[arg-type]
        extra_names = _extra_columns(store)
        ids_ds = store.file["ids"]
        with PredictionWriter(out, grid, len(dataset), method="cnn", meta=meta, overwrite=overwrite,
                              pdf_dtype=pdf_dtype) as writer, torch.inference_mode():
            for batch in tqdm(loader, disable=not progress, desc="predict", unit="batch"):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast:
                    probs = torch.stack([m(batch) for m in members]).float().mean(0)
                index = batch["index"].cpu().numpy()
                order = np.argsort(index)
                # h5py reads want increasing rows; undo the sort after
                inv = np.argsort(order)
                sorted_rows = index[order]
                extra = {name.split("/")[-1]: store.file[name][sorted_rows][inv] for name in extra_names}
                ids = ids_ds[sorted_rows][inv]
                ids = ids.astype(str) if ids.dtype.kind == "O" else ids
                writer.write(ids, probs.cpu().numpy().astype(np.float64), batch["z"].cpu().numpy(), extra)
    return Path(out)


def merge_predictions(parts: list[str | os.PathLike], out: str | os.PathLike, overwrite: bool = True,
                      chunk_size: int = 50_000) -> Path:
    """Concatenate prediction directories (e.g. the k held-out folds) into one, streaming the PDFs."""
    infos = [read_predictions(p, load_pdfs=False) for p in parts]
    grid = infos[0].grid
    if any(info.grid != grid for info in infos):
        raise ValueError(f"cannot merge predictions on different grids: {[str(p) for p in parts]}")
    core = {"id", "z_mean", "z_median", "z_mode", "z_lo68", "z_hi68", "width68", "z_spec"}
    n_total = sum(len(info) for info in infos)
    with PredictionWriter(out, grid, n_total, method=infos[0].method, overwrite=overwrite,
                          meta={"merged_from": [str(p) for p in parts]}) as writer:
        for part, info in zip(parts, infos, strict=True):
            cat = info.catalog
            for start, stop, pdfs in iter_pdfs(part, chunk_size):
                chunk = cat.iloc[start:stop]
                extra = {c: chunk[c].to_numpy() for c in cat.columns if c not in core}
                writer.write(chunk["id"].to_numpy(), pdfs, chunk["z_spec"].to_numpy(), extra)
    return Path(out)
