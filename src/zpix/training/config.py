"""A run's whole description: one YAML file that is saved beside its checkpoints.

:class:`TrainConfig` is a pydantic dataclass: every field is converted to its type and checked when
the config is made (from YAML, ``--set KEY=VALUE`` or Python), so a bad value stops `zpix train`
before any file is written.  YAML reads ``3e-4`` as a string; pydantic turns it into the float the
field asks for.  A pydantic dataclass (rather than a BaseModel) keeps ``dataclasses.replace``,
``fields`` and ``asdict`` working for every caller.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from zpix.pdf import RedshiftGrid
from zpix.plain_types import check_known_options
from zpix.store.cube_store import ON_BAD_DEFAULT


@dataclass(config=ConfigDict(extra="forbid"))
class TrainConfig:
    """Everything that defines a training run (Pasquet et al. 2019, Sect. 3; defaults follow the paper
    where it states them: cross-entropy over 180 bins on 0-0.4, Adam, batch 128, dihedral augmentation,
    80/20 train/test split, ensembles of models differing only in their seed)."""

    cubes: str = ""
    out: str = "runs/zpix"
    model: str = "pasquet2019-small"
    model_args: dict[str, Any] = field(default_factory=dict)
    # redshift grid of the PDF (classification bins, and the grid regression PDFs are drawn on)
    n_bins: int = 180
    z_min: float = 0.0
    z_max: float = 0.4
    use_ebv: bool = True
    use_mags: bool = False
    # data split: a test fraction held out for prediction, a validation fraction of the rest
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    max_train: int | None = None  # subsample the training set (learning curves)
    on_bad: Literal["error", "drop", "zero"] = ON_BAD_DEFAULT
    # optimisation
    # auto: cross-entropy for PDF heads, Huber (+ Gaussian NLL for sigma) for regression
    loss: Literal["auto", "cross_entropy", "huber"] = "auto"
    huber_delta: float = 1e-4  # John William et al. chose 1e-4 by trial
    lr: float = 1e-3
    weight_decay: float = 0.0
    # "plateau": multiply lr by lr_factor when val_loss has not improved for lr_patience epochs
    # (on the 20k mock one such drop took sigma_MAD from 0.0127 to 0.0118); "cosine": lr follows
    # half a cosine from lr to 0 over max_epochs, step by step (for comparisons at a fixed budget);
    # "none": constant lr
    lr_schedule: Literal["none", "plateau", "cosine"] = "plateau"
    lr_factor: float = 0.1
    lr_patience: int = 2
    batch_size: int = 128
    max_epochs: int = 30
    max_steps: int = -1
    patience: int = 5
    augment: bool = True
    # warm start: run directories or .ckpt files whose weights initialise the model before training
    # (the same architecture: fine-tuning; single-branch hybrid runs: the branches of a hybrid, see
    # HybridNet.init_from).  Ensemble member k starts from member k (mod the count) of each run.
    init_from: list[str] = field(default_factory=list)
    # ensembles (Sect. 3.8): member k uses seed + k
    ensemble: int = 1
    seed: int = 0
    # post-hoc calibration fitted on the validation rows after training (zpix.calibration, docs/calibration.md;
    # "auto": the chain chosen by cross-validation there),
    # applied by `zpix predict`; [] switches it off (--set calibrate=[])
    calibrate: list[str] = field(default_factory=lambda: ["auto"])
    # hardware, passed straight to Lightning
    accelerator: str = "auto"
    devices: Any = "auto"
    # "auto": bf16-mixed where the hardware runs bf16 natively and faster than fp32, else 32-true
    # (zpix.hardware.training_precision; the first convolution and the head stay fp32, zpix.precision)
    precision: str = "auto"
    strategy: str = "auto"
    # DataLoader worker processes; "auto": from the cores (zpix.hardware.loader_workers)
    num_workers: int | Literal["auto"] = "auto"
    channels_last: bool = True  # NHWC: +14% training speed for pasquet2019 on CPU (benchmarks/speed.py)
    # torch.compile backend for the training forward, or "none"; "inductor" with channels-last took
    # pasquet2019 CPU training from 47% to 60% of the matmul roof (benchmarks/speed.py; needs a C++ compiler)
    compile: str = "none"
    progress: bool = True
    # adversarial domain adaptation (zpix.training.domain): a cube store of unlabelled images of the
    # field to adapt to (its z_spec is never read), and the options of the objective (DomainConfig)
    target_cubes: str = ""
    domain: dict[str, Any] = field(default_factory=dict)
    # Lin et al. bias correction after training (zpix.debias, docs/bias_correction.md): DebiasConfig options
    # plus "out" (default <out>-debiased) and "calibrate" (default [photoz]); {} switches it off
    debias: dict[str, Any] = field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from zpix.models import list_models

        if name not in list_models():
            raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
        return name

    @model_validator(mode="after")
    def _ranges(self) -> TrainConfig:
        problems = []
        if self.n_bins < 2:
            problems.append(f"n_bins must be >= 2, got {self.n_bins}")
        if not self.z_max > self.z_min:
            problems.append(f"z_max ({self.z_max}) must exceed z_min ({self.z_min})")
        if not 0 < self.test_fraction < 1:
            problems.append(f"test_fraction must lie in (0, 1), got {self.test_fraction}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        for name in ("lr_factor", "huber_delta"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.lr >= 0:
            problems.append(f"lr must be >= 0, got {self.lr}")
        for name, low in (("batch_size", 1), ("max_epochs", 1), ("ensemble", 1), ("num_workers", 0),
                          ("patience", 0), ("lr_patience", 0)):
            if getattr(self, name) != "auto" and getattr(self, name) < low:
                problems.append(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.max_train is not None and self.max_train < 1:
            problems.append(f"max_train must be >= 1 or null, got {self.max_train}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def grid(self) -> RedshiftGrid:
        return RedshiftGrid(self.n_bins, self.z_min, self.z_max)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        check_known_options(cls, values, "training")
        try:
            return cls(**values)
        except ValidationError as err:
            raise ValueError(describe(err)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file, or a packaged preset by name (``pasquet2019``; see :func:`preset_names`)."""
        path = resolve_config(path)
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
        values = values.get("train", values)  # accept a saved run config (with a 'train' section)
        try:
            return cls.from_dict(values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the config with the library versions, atomically."""
        from zpix.atomic import write_yaml

        write_yaml(path, {"train": self.to_dict(), "versions": library_versions(), **(extra or {})})


def describe(err: ValidationError) -> str:
    """One line per invalid option: ``option lr: Input should be a valid number (got 'abc')``."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        got = f" (got {e['input']!r})" if where and "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"option {where}: {msg}{got}" if where else msg)
    return "invalid training config: " + "; ".join(lines)


def preset_names() -> list[str]:
    """The presets packaged in ``zpix/configs``, usable as ``--config NAME``."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("zpix").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def resolve_config(path: str | Path) -> Path:
    """``path`` if it is a file, else the packaged preset of that name (``pasquet2019``)."""
    if Path(path).is_file():
        return Path(path)
    name = str(path).removesuffix(".yaml")
    preset = resources.files("zpix").joinpath("configs", f"{name}.yaml")
    if preset.is_file():
        return Path(str(preset))
    raise FileNotFoundError(f"{path}: no such config file, and no packaged preset of that name "
                            f"(presets: {', '.join(preset_names())})")


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("zpix", "torch", "lightning", "numpy", "h5py", "qp-prob", "galsim", "astropy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions
