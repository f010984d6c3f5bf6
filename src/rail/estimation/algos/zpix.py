"""zpix as RAIL stages: image networks and the catalogue baselines, inform → estimate.

Installed with ``pip install zpix[rail]``; ``rail.stages.import_and_attach_all()`` finds them
(through ``rail.zpix``).  Every stage writes a qp Ensemble whose ancillary data carry RAIL's point
estimates ``zmode``, ``zmean`` (Pasquet et al. 2019, Eq. 2) and ``zmedian`` computed by zpix from the
binned PDF; ``pdf_format`` chooses the qp representation (``zpix.prediction.pdf_formats``).

* :class:`ZpixInformer` / :class:`ZpixEstimator`: the CNNs of zpix on multi-band images.  The input
  table carries object ids (``id_col``); ``cubes`` points at the zpix cube store that holds their
  images.  Inform trains a zpix run (``zpix train`` with the preset ``zpix_config`` and
  ``train_overrides``) on the table's objects; the model file (RAIL's ``ModelHandle``, a pickle)
  holds the whole run directory, so it is self-contained.  Estimate runs zpix's streaming prediction
  on each chunk of RAIL's chunk iterator.
* :class:`ZpixKNNInformer` / :class:`ZpixKNNEstimator`: the k-NN local linear regression baseline
  (Beck et al. 2016) on RAIL's ``bands`` magnitude columns (``mag_u_lsst``...; non-detections
  ``nondetect_val`` are treated as missing bands).
* :class:`ZpixMagNetInformer` / :class:`ZpixMagNetEstimator`: zpix's magnitude network (ANNz2-like MLP
  with a binned-PDF head) on the same columns.

The redshift grid of the catalogue stages is RAIL's: ``nzbins`` points from ``zmin`` to ``zmax`` are
the edges of ``nzbins − 1`` histogram bins.  Only typed ``config_options`` (``check_stage_params``).
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ceci.config import StageParameter as Param
from rail.core.common_params import SharedParams
from rail.estimation.estimator import CatEstimator
from rail.estimation.informer import CatInformer

__all__ = [
    "ZpixInformer", "ZpixEstimator", "ZpixKNNInformer", "ZpixKNNEstimator", "ZpixMagNetInformer",
    "ZpixMagNetEstimator",
]

_PDF_FORMAT = Param(str, "hist16", msg="qp representation of the output PDFs: hist32, hist16, hist64, packed8 "
                                       "or quantiles:K (see zpix.prediction.pdf_formats)")


def _table(stage: Any, tag: str = "input") -> dict[str, np.ndarray]:
    data = stage.get_data(tag)
    group = stage.config.hdf5_groupname
    return data[group] if group else data


def _ensemble(pdfs: np.ndarray, grid: Any, fmt: str, est: dict[str, np.ndarray] | None = None) -> Any:
    """Binned probabilities → qp Ensemble in ``fmt`` with RAIL's zmode/zmean/zmedian from zpix's estimates."""
    from zpix.pdf import point_estimates
    from zpix.prediction.pdf_formats import encode

    est = est or point_estimates(pdfs, grid)
    ancil = {"zmode": np.asarray(est["z_mode"]), "zmean": np.asarray(est["z_mean"]),
             "zmedian": np.asarray(est["z_median"])}
    return encode(pdfs, grid, fmt, ancil=ancil)


# ------------------------------------------------------------------------------------------------
# image networks


def _pack_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(path, arcname=".")
    return buf.getvalue()


def _unpack_dir(blob: bytes, dest: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def _rows_of_ids(cubes: str, ids: np.ndarray) -> np.ndarray:
    """Cube-store rows of the table's object ids (one clear error for ids the store lacks)."""
    from zpix.store.cube_store import CubeStore

    with CubeStore(cubes, validate=False) as store:
        store_ids = np.asarray(store.ids)
    as_str = store_ids.dtype.kind in "OUS" or np.asarray(ids).dtype.kind in "OUS"
    keys = store_ids.astype(str) if as_str else store_ids
    want = np.asarray(ids).astype(str) if as_str else np.asarray(ids)
    order = np.argsort(keys, kind="stable")
    pos = np.clip(np.searchsorted(keys[order], want), 0, len(keys) - 1)
    rows = order[pos]
    missing = keys[rows] != want
    if missing.any():
        raise ValueError(f"{cubes}: {int(missing.sum())} object id(s) of the input table are not in the cube store "
                         f"(first: {want[missing][:5].tolist()}); give the cube store that holds their images")
    return rows.astype(np.int64)


class ZpixInformer(CatInformer):
    """Train a zpix image network on the objects of the input table (their images are in ``cubes``)."""

    name = "ZpixInformer"
    config_options = CatInformer.config_options.copy()
    config_options.update(
        cubes=Param(str, "", msg="zpix cube store (.h5) holding the images of the table's objects"),
        id_col=SharedParams.copy_param("id_col"),
        zpix_config=Param(str, "pasquet2019", msg="zpix training preset name or YAML file (zpix train --config)"),
        train_overrides=Param(dict, {}, msg="TrainConfig fields that override the preset, e.g. {max_epochs: 5}"),
        val_fraction=Param(float, 0.15, msg="fraction of the table's objects held out for early stopping"),
        seed=Param(int, 0, msg="seed of the train/validation split and of the training"),
    )

    def run(self) -> None:
        import zpix.training.api as api
        from zpix.runs import Split

        table = _table(self)
        if not self.config.cubes:
            raise ValueError(f"{self.name}: set the 'cubes' option to the cube store holding the images")
        if self.config.id_col not in table:
            raise KeyError(f"{self.name}: the input table has no id column {self.config.id_col!r}; set id_col")
        rows = _rows_of_ids(self.config.cubes, table[self.config.id_col])
        rng = np.random.default_rng(self.config.seed)
        perm = rng.permutation(rows.size)
        n_val = max(1, int(round(self.config.val_fraction * rows.size)))
        split = Split(np.sort(rows[perm[n_val:]]), np.sort(rows[perm[:n_val]]), np.empty(0, np.int64))
        with tempfile.TemporaryDirectory(prefix="zpix-rail-") as tmp:
            from zpix.training.config import resolve_config

            overrides = {"cubes": self.config.cubes, "out": str(Path(tmp) / "run"), "seed": self.config.seed,
                         "progress": False, **dict(self.config.train_overrides)}
            result = api.train(str(resolve_config(self.config.zpix_config)), split=split, **overrides)
            self.model = {"zpix_model": "run", "run": _pack_dir(Path(result.run_dir))}
        self.add_data("model", self.model)


class ZpixEstimator(CatEstimator):
    """PDFs of the input table's objects from a zpix image network, chunk by chunk."""

    name = "ZpixEstimator"
    config_options = CatEstimator.config_options.copy()
    config_options.update(
        cubes=Param(str, "", msg="zpix cube store (.h5) holding the images of the table's objects"),
        batch_size=Param(int, 64, msg="images per network batch"),
        device=Param(str, "cpu", msg="torch device: cpu, cuda, cuda:1..."),
        pdf_format=_PDF_FORMAT,
    )

    def __init__(self, args: Any, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._members: list[Any] = []
        self._run_dir: Path | None = None

    def open_model(self, **kwargs: Any) -> Any:
        from zpix.prediction.streaming import load_ensemble

        model = super().open_model(**kwargs)
        if not isinstance(model, dict) or model.get("zpix_model") != "run":
            raise ValueError(f"{self.name}: the model is not a zpix image run (made by ZpixInformer)")
        self._tmp = tempfile.TemporaryDirectory(prefix="zpix-rail-")
        self._run_dir = _unpack_dir(model["run"], Path(self._tmp.name) / "run")
        self._members = load_ensemble(self._run_dir, self.config.device, precision="32")
        return model

    def _process_chunk(self, start: int, end: int, data: Any, first: bool) -> None:
        from zpix.prediction.format import read_predictions
        from zpix.prediction.streaming import predict

        ids = data[self.config.id_col] if self.config.id_col in data else None
        if ids is None:
            raise KeyError(f"{self.name}: the input table has no id column {self.config.id_col!r}; set id_col")
        rows = _rows_of_ids(self.config.cubes, ids)
        out = Path(self._tmp.name) / f"chunk-{start}"
        predict(self._run_dir, self.config.cubes, out, rows=rows, batch_size=self.config.batch_size,
                num_workers=0, device=self.config.device, progress=False, pdf_dtype="float64",
                members=self._members, precision="32")
        pred = read_predictions(out)
        est = {k: pred.catalog[k].to_numpy() for k in ("z_mode", "z_mean", "z_median")}
        self._do_chunk_output(_ensemble(pred.pdfs, pred.grid, self.config.pdf_format, est), start, end, first,
                              data=data)

    def _finalize_run(self) -> None:
        super()._finalize_run()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# ------------------------------------------------------------------------------------------------
# catalogue photometry


def _magnitudes(stage: Any, data: dict[str, np.ndarray], start: int = 0) -> Any:
    """RAIL's table (``bands`` columns, ``nondetect_val`` = not detected) → a zpix MagnitudeTable."""
    from zpix.baselines.tables import MagnitudeTable

    bands = list(stage.config.bands)
    absent = [b for b in bands if b not in data]
    if absent:
        raise KeyError(f"{stage.name}: the input table lacks magnitude column(s) {absent}; set 'bands'")
    mags = np.column_stack([np.asarray(data[b], dtype=np.float64) for b in bands])
    nd = stage.config.nondetect_val
    mags = np.where(np.isnan(mags) if np.isnan(nd) else np.isclose(mags, nd), np.nan, mags)
    n = mags.shape[0]
    id_col = stage.config.get("id_col", "object_id")
    z_col = stage.config.redshift_col
    return MagnitudeTable(
        ids=np.asarray(data[id_col]) if id_col in data else np.arange(start, start + n),
        z_spec=np.asarray(data[z_col], dtype=np.float64) if z_col in data else np.full(n, np.nan),
        ebv=np.zeros(n), mags=mags, bands=bands, source=stage.name)


def _grid(stage: Any) -> Any:
    from zpix.pdf import RedshiftGrid

    # RAIL's nzbins grid points are the edges of nzbins - 1 bins
    return RedshiftGrid(int(stage.config.nzbins) - 1, float(stage.config.zmin), float(stage.config.zmax))


_CATALOG_OPTIONS = dict(
    zmin=SharedParams.copy_param("zmin"),
    zmax=SharedParams.copy_param("zmax"),
    nzbins=SharedParams.copy_param("nzbins"),
    bands=SharedParams.copy_param("bands"),
    ref_band=SharedParams.copy_param("ref_band"),
    nondetect_val=SharedParams.copy_param("nondetect_val"),
    redshift_col=SharedParams.copy_param("redshift_col"),
)


class ZpixKNNInformer(CatInformer):
    """Fit zpix's k-NN local linear regression (Beck et al. 2016) on the training table's magnitudes."""

    name = "ZpixKNNInformer"
    config_options = CatInformer.config_options.copy()
    config_options.update(
        **_CATALOG_OPTIONS,
        k=Param(int, 100, msg="neighbours per object"),
        scale=Param(str, "std", msg="feature scaling: std (divide by the training std) or none"),
        clip_sigma=Param(float, 3.0, msg="neighbours beyond this many rms of the local fit are refitted without"),
    )

    def run(self) -> None:
        from zpix.baselines.knn import KNNConfig, KNNPhotoZ

        grid = _grid(self)
        cfg = KNNConfig(k=self.config.k, ref_band=self.config.ref_band, scale=self.config.scale,
                        clip_sigma=self.config.clip_sigma, n_bins=grid.n_bins, z_min=grid.z_min, z_max=grid.z_max)
        table = _magnitudes(self, _table(self)).labelled(grid.z_min, grid.z_max)
        self.model = KNNPhotoZ(cfg).fit(table)
        self.add_data("model", self.model)


class ZpixKNNEstimator(CatEstimator):
    """PDFs from a fitted zpix k-NN model (``ZpixKNNInformer``)."""

    name = "ZpixKNNEstimator"
    config_options = CatEstimator.config_options.copy()
    config_options.update(**_CATALOG_OPTIONS, pdf_format=_PDF_FORMAT)

    def _process_chunk(self, start: int, end: int, data: Any, first: bool) -> None:
        from zpix.baselines.knn import KNNPhotoZ

        if not isinstance(self.model, KNNPhotoZ):
            raise ValueError(f"{self.name}: the model is not a zpix k-NN model (made by ZpixKNNInformer)")
        res = self.model.predict(_magnitudes(self, data, start))
        self._do_chunk_output(_ensemble(res.pdfs, res.grid, self.config.pdf_format), start, end, first, data=data)


class ZpixMagNetInformer(CatInformer):
    """Train zpix's magnitude network (MLP with a softmax PDF head, cross-entropy) on the training table."""

    name = "ZpixMagNetInformer"
    config_options = CatInformer.config_options.copy()
    config_options.update(
        **_CATALOG_OPTIONS,
        max_epochs=Param(int, 200, msg="maximum training epochs (early stopping on a validation part)"),
        patience=Param(int, 20, msg="epochs without validation improvement before stopping"),
        batch_size=Param(int, 128, msg="training batch size"),
        lr=Param(float, 1e-3, msg="Adam learning rate"),
        val_fraction=Param(float, 0.15, msg="fraction of the training table held out for early stopping"),
        seed=Param(int, 0, msg="seed of the split, the initialisation and the batches"),
    )

    def run(self) -> None:
        from zpix.baselines.magnet import MagNetConfig, train_magnet

        grid = _grid(self)
        cfg = MagNetConfig(n_bins=grid.n_bins, z_min=grid.z_min, z_max=grid.z_max, max_epochs=self.config.max_epochs,
                           patience=self.config.patience, batch_size=self.config.batch_size, lr=self.config.lr,
                           val_fraction=self.config.val_fraction, seed=self.config.seed, use_ebv=False)
        with tempfile.TemporaryDirectory(prefix="zpix-rail-") as tmp:
            net, _ = train_magnet(_magnitudes(self, _table(self)), cfg, work_dir=tmp)
            path = net.save(Path(tmp) / "magnet.ckpt")
            self.model = {"zpix_model": "magnet", "checkpoint": path.read_bytes(),
                          "sidecar": path.with_suffix(".json").read_text()}
        self.add_data("model", self.model)


class ZpixMagNetEstimator(CatEstimator):
    """PDFs from a trained zpix magnitude network (``ZpixMagNetInformer``)."""

    name = "ZpixMagNetEstimator"
    config_options = CatEstimator.config_options.copy()
    config_options.update(**_CATALOG_OPTIONS, pdf_format=_PDF_FORMAT)

    def open_model(self, **kwargs: Any) -> Any:
        from zpix.baselines.magnet import MagNet

        model = super().open_model(**kwargs)
        if not isinstance(model, dict) or model.get("zpix_model") != "magnet":
            raise ValueError(f"{self.name}: the model is not a zpix magnitude network (made by ZpixMagNetInformer)")
        with tempfile.TemporaryDirectory(prefix="zpix-rail-") as tmp:
            path = Path(tmp) / "magnet.ckpt"
            path.write_bytes(model["checkpoint"])
            path.with_suffix(".json").write_text(model["sidecar"])
            self._net = MagNet.load(path)
        return model

    def _process_chunk(self, start: int, end: int, data: Any, first: bool) -> None:
        pdfs = self._net.predict(_magnitudes(self, data, start))
        self._do_chunk_output(_ensemble(pdfs, self._net.grid, self.config.pdf_format), start, end, first, data=data)

