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

from zpix.atomic import AtomicDir
from zpix.hardware import inference_chunk, inference_precision, predict_batch
from zpix.pdf import RedshiftGrid
from zpix.plain_types import to_plain
from zpix.precision import cast_body, runs_in_bf16
from zpix.prediction.format import PredictionWriter, iter_pdfs, read_predictions, rows_record
from zpix.prediction.journal import ChunkJournal, file_identity, rows_digest
from zpix.runs import RunInputError, check_inputs, checkpoint_paths, select_rows
from zpix.store.cube_store import CubeStore
from zpix.store.dataset import CubeDataset
from zpix.training.module import PhotoZModule


def load_ensemble(model: str | os.PathLike, device: str | torch.device = "cpu",
                  channels_last: bool = True, precision: str = "32") -> list[PhotoZModule]:
    """Load every member of a run (or one checkpoint) in eval mode.

    ``channels_last`` (NHWC) memory layout was measured 1.6x faster for pasquet2019 inference on
    CPU (benchmarks/speed.py); the numbers are the same up to float rounding.  ``precision`` "bf16"
    runs the convolutional body in bf16 between an fp32 first convolution and an fp32 head
    (:func:`zpix.precision.cast_body`); "auto" picks it where the hardware is measurably faster in
    bf16 (:func:`zpix.hardware.inference_precision`).
    """
    precision = inference_precision(precision, device)
    # compile is a training choice: prediction batches vary in size and would trigger recompilations
    members = [PhotoZModule.load_from_checkpoint(p, map_location=device, channels_last=channels_last,
                                                 compile="none")
               for p in checkpoint_paths(model)]
    grids = {RedshiftGrid.from_dict(m.hparams.grid) for m in members}
    if len(grids) != 1:
        raise ValueError(f"{model}: ensemble members use different redshift grids {grids}")
    for m in members:
        m.eval()
        if precision == "bf16":
            cast_body(m.model)
    return members


def member_probabilities(members: list[PhotoZModule], batch: dict[str, torch.Tensor],
                         chunk: int | None = None) -> torch.Tensor:
    """Every member's PDFs (M, B, n_bins) in fp32, the networks run on slices of ``chunk`` images.

    Slicing keeps each forward pass at the batch size the CPU runs fastest (zpix.hardware.inference_chunk)
    while the loader and the writer work on the whole batch; each object is computed on its own, so
    the result does not depend on the slicing.  Compiled members (:func:`compile_members`) get every
    slice padded to ``chunk`` images, the one shape they were compiled for.
    """
    n = len(batch["ebv"])
    step = int(chunk) if chunk else max(n, 1)
    parts = []
    for start in range(0, n, step):
        part = {k: v[start:start + step] for k, v in batch.items()}
        short = step - len(part["ebv"])
        if short and any(getattr(m, "_compiled", None) is not None for m in members):
            part = {k: torch.cat([v, v[-1:].expand(short, *v.shape[1:])]) for k, v in part.items()}
        parts.append(torch.stack([m(part).float() for m in members])[:, :step - short])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def compile_members(members: list[PhotoZModule], chunk: int) -> list[PhotoZModule]:
    """Compile each member's network for inference on batches of ``chunk`` (in place; returns them).

    TorchInductor with weight freezing: the weights become constants, convolutions are pre-packed for
    oneDNN and the PReLU, pooling and concatenation around them fused into generated C++ loops.  The
    compilation (a minute or more on 2 cores, and a C++ compiler) runs here, on a dummy batch; it pays
    only on long runs.
    """
    import torch._inductor.config as inductor_config

    for m in members:
        cfg = m.hparams.model_config
        device = m.edges.device
        m._compiled = torch.compile(m.model, dynamic=False)
        n_bands, size = cfg.get("n_bands", 5), cfg.get("image_size", 64)
        dummy = {"image": torch.zeros(chunk, n_bands, size, size, device=device),
                 "ebv": torch.zeros(chunk, device=device)}
        with inductor_config.patch(freezing=True), torch.inference_mode():
            m(dummy)
    return members


def _extra_columns(store: CubeStore) -> list[str]:
    """Per-object numeric columns worth carrying into the catalogue (for trend plots)."""
    names = ["ebv"] + [f"catalog/{c}" for c in store.catalog_columns
                       if store.file[f"catalog/{c}"].dtype.kind in "fiub"]
    return names


def check_model_fits(model: str | os.PathLike, module: PhotoZModule, store: CubeStore) -> None:
    """The network's own input size against the cube store (also for bare checkpoints and older runs)."""
    config = module.hparams.model_config
    want = (config.get("n_bands"), config.get("image_size"))
    n_bands, height, width = store.image_shape
    if want[0] is not None and (n_bands, height, width) != (want[0], want[1], want[1]):
        raise RunInputError(f"cannot predict {store.path} with {model}: the cube store has {n_bands} bands of "
                            f"{height}x{width} pixels but the trained network reads {want[0]} bands of "
                            f"{want[1]}x{want[1]}; use a cube store made like its training data")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def predict(
    model: str | os.PathLike,
    cubes: str | os.PathLike,
    out: str | os.PathLike,
    rows: np.ndarray | None = None,
    batch_size: int | None = None,
    num_workers: int = 1,
    device: str | None = None,
    on_bad: str = "error",
    overwrite: bool = False,
    progress: bool = True,
    pdf_dtype: str = "float32",
    calibrate: bool = True,
    split: str = "auto",
    chunk_rows: int = 4096,
    pdf_format: str | None = None,
    members: list[PhotoZModule] | None = None,
    precision: str = "auto",
    compile: bool = False,
) -> Path:
    """Predict PDFs for ``rows`` of ``cubes`` with the model/ensemble ``model``.

    ``precision`` ("32", "bf16" or "auto", see :func:`load_ensemble`) and ``batch_size`` (default
    :func:`zpix.hardware.predict_batch`) are chosen from the machine unless given; ``compile`` compiles
    the networks first (:func:`compile_members`), which pays on long runs only.

    ``pdf_format`` stores the PDFs in a compact qp representation (``zpix.prediction.pdf_formats``;
    default: hist with ``pdf_dtype``); ``members`` are the already loaded members of ``model`` (a Dask
    worker or a RAIL stage loads them once for many calls).

    Without ``rows``, ``split`` picks them (:func:`zpix.runs.select_rows`): "auto" takes the run's test
    rows when ``cubes`` is the run's own cube store and every row otherwise.  The cube store is checked
    against the run's input spec first.  Finished chunks of ``chunk_rows`` are committed to a journal
    (:mod:`zpix.prediction.journal`): a killed run, rerun with the same arguments, continues.

    With ``calibrate`` the run's fitted calibration (``calibration.json``, see ``zpix.calibration``) is
    applied to the ensemble mean; without it, or where the run has none, the PDFs are the network's own.
    """
    from zpix.calibration import load_calibration
    from zpix.quality import load_quality
    from zpix.quality.features import FeatureCapture

    device = device or default_device()
    precision = inference_precision(precision, device)
    batch_size = batch_size or predict_batch(device)
    calibration = load_calibration(model) if calibrate else None
    # per-object quality columns (zpix.quality) come with the calibration they were fitted after
    quality = load_quality(model) if calibrate else None
    members = members or load_ensemble(model, device, precision=precision)
    first = members[0]
    # what the networks really compute in (a magnitude network has no body to put in bf16)
    precision = "bf16" if any(runs_in_bf16(m.model) for m in members) else "32"
    grid = RedshiftGrid.from_dict(first.hparams.grid)
    # whether the network reads magnitudes is the trained model's own property (a hybrid-images run has
    # none), never the factory's default n_mags
    use_mags = any(bool(getattr(m.model, "use_mags", False)) for m in members)
    with CubeStore(cubes, on_bad=on_bad) as store:  # type: ignore[arg-type]
        check_inputs(model, store, needs_mags=use_mags)
        check_model_fits(model, first, store)
        rows, selection = select_rows(model, store, split, rows=rows)
    dataset = CubeDataset(cubes, indices=rows, use_mags=use_mags, on_bad=on_bad)  # type: ignore[arg-type]
    order = np.asarray(dataset.indices, dtype=np.int64).copy()
    if order.size == 0:
        raise ValueError(f"{cubes}: no rows to predict (selection {selection['split']!r}, on_bad {on_bad!r})")
    # chunks are whole batches, so a resumed run forms the same batches as an uninterrupted one
    chunk_rows = max(1, int(chunk_rows) // batch_size) * batch_size
    n_chunks = -(-order.size // chunk_rows)
    meta: dict[str, Any] = {"model": str(model), "members": [str(p) for p in checkpoint_paths(model)],
                            "model_name": first.hparams.model_name, "cubes": str(cubes),
                            "calibration": [st.to_dict() for st in calibration.steps] if calibration else [],
                            "rows": selection}
    key = to_plain({"members": [file_identity(p) for p in checkpoint_paths(model)], "store": selection["store"],
                    "cubes": str(Path(cubes).resolve()), "rows": rows_digest(order), "batch_size": batch_size,
                    "chunk_rows": chunk_rows, "device": torch.device(device).type, "on_bad": on_bad,
                    "precision": precision, "calibration": meta["calibration"], "quality": quality is not None})
    work = AtomicDir(out, "predictions", overwrite=overwrite, token="resume", keep_on_error=True)
    journal = ChunkJournal(work.path, key)
    try:
        todo = [i for i in range(n_chunks) if i not in journal.done()]
        if todo:
            dataset.indices = np.concatenate([order[i * chunk_rows:(i + 1) * chunk_rows] for i in todo])
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                pin_memory=device.startswith("cuda"))
            with CubeStore(cubes, on_bad=on_bad, validate=False) as store:  # type: ignore[arg-type]
                extra_names = _extra_columns(store)
                ids_ds = store.file["ids"]
                pending: list[dict[str, np.ndarray]] = []
                chunks = iter(todo)
                current = next(chunks)
                with_features = quality is not None and quality.train_features is not None
                capture = FeatureCapture(members[0].model) if with_features else nullcontext()
                # the capture keeps the head input of the last forward pass: one pass per batch then
                chunk = None if with_features else inference_chunk(device)
                if compile:
                    chunk = chunk or batch_size
                    compile_members(members, chunk)
                with torch.inference_mode(), capture:
                    for batch in tqdm(loader, disable=not progress, desc="predict", unit="batch"):
                        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                        member_probs = member_probabilities(members, batch, chunk)
                        probs = member_probs.mean(0)
                        index = batch["index"].cpu().numpy()
                        order_b = np.argsort(index)
                        # h5py reads want increasing rows; undo the sort after
                        inv = np.argsort(order_b)
                        sorted_rows = index[order_b]
                        part = {f"x_{name.split('/')[-1]}": store.file[name][sorted_rows][inv]
                                for name in extra_names}
                        ids = ids_ds[sorted_rows][inv]
                        part["ids"] = ids.astype(str) if ids.dtype.kind == "O" else ids
                        pdfs = probs.cpu().numpy()
                        part["pdfs"] = calibration(pdfs.astype(np.float64)) if calibration else pdfs
                        if quality is not None:
                            member_zmean = member_probs.double().cpu().numpy() @ grid.centers
                            cols = quality.columns(part["pdfs"], member_zmean=member_zmean,
                                                   features=getattr(capture, "last", None))
                            part.update({f"x_{k}": v for k, v in cols.items()})
                        part["z"] = batch["z"].cpu().numpy()
                        pending.append(part)
                        if sum(len(p["ids"]) for p in pending) == min(chunk_rows, order.size - current * chunk_rows):
                            journal.commit(current, {k: np.concatenate([p[k] for p in pending]) for k in part})
                            pending, current = [], next(chunks, -1)
        with PredictionWriter(out, grid, order.size, method="cnn", meta=meta, overwrite=overwrite,
                              pdf_dtype=pdf_dtype, work=work, pdf_format=pdf_format) as writer:
            for chunk in journal.chunks(n_chunks):
                extra = {k[2:]: v for k, v in chunk.items() if k.startswith("x_")}
                writer.write(chunk["ids"], chunk["pdfs"].astype(np.float64), chunk["z"], extra)
            journal.clear()
            journal.close()
    except KeyboardInterrupt:
        journal.close()  # the committed chunks stay: rerunning the same command continues
        raise
    except BaseException:
        journal.close()
        work.abort()
        raise
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
    # the merged rows include training objects if any part does (zpix evaluate checks this)
    n_training = sum(int(rows_record(info.meta).get("n_training_rows", 0)) for info in infos)
    rows = {"split": "merged", "n_rows": n_total, "n_training_rows": n_training}
    with PredictionWriter(out, grid, n_total, method=infos[0].method, overwrite=overwrite,
                          meta={"merged_from": [str(p) for p in parts], "rows": rows}) as writer:
        for part, info in zip(parts, infos, strict=True):
            cat = info.catalog
            for start, stop, pdfs in iter_pdfs(part, chunk_size):
                chunk = cat.iloc[start:stop]
                extra = {c: chunk[c].to_numpy() for c in cat.columns if c not in core}
                writer.write(chunk["id"].to_numpy(), pdfs, chunk["z_spec"].to_numpy(), extra)
    return Path(out)
