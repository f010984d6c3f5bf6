"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", Sect. 4.2).

One scalar T > 0 divides the logits: q_k = softmax(l_k / T).  Since softmax(l / T) ∝ p^(1/T) with
p = softmax(l), it acts on probabilities and so applies to an ensemble's mean PDF as well.  T is fitted
by minimising the negative log-likelihood of the bin holding z_spec on the validation objects,

    NLL(T) = -(1/N) Σ_i log q_{i, k(z_i)}(T).

T > 1 widens over-confident PDFs, T < 1 sharpens under-confident ones.  For a Gaussian PDF drawn on the
grid (a regression head) p^(1/T) is again a Gaussian with σ' = σ √T, so this is also the "fitted σ scale"
of a regression head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from zpix.calibration.base import PROB_FLOOR, Calibrator, check_probs, register_calibrator
from zpix.pdf import RedshiftGrid

#: Search range of log T (T from 1/20 to 20: far outside anything a trained network needs).
LOG_T_BOUNDS = (-3.0, 3.0)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """q ∝ p^(1/T), row-normalised, computed in log space (bins with p = 0 stay 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logp = np.log(p) / float(temperature)
    logp -= logsumexp(logp, axis=1, keepdims=True)
    return np.exp(logp)


def tempered_nll(logp: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean −log q_{k(z)} for q ∝ p^(1/T), from log p (floored) and the z_spec bins."""
    scaled = logp / temperature
    rows = np.arange(len(labels))
    return float(np.mean(logsumexp(scaled, axis=1) - scaled[rows, labels]))


@register_calibrator("temperature")
class TemperatureScaling(Calibrator):
    """q ∝ p^(1/T) with one T fitted by NLL on validation objects (Guo et al. 2017)."""

    def __init__(self, temperature: float = 1.0) -> None:
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)

    def fit(self, *, probs: np.ndarray, z_spec: np.ndarray, grid: RedshiftGrid, **context: Any) -> None:
        p = check_probs(probs, grid)
        labels = grid.labels(z_spec)
        logp = np.log(np.maximum(p, PROB_FLOOR))
        res = minimize_scalar(lambda lt: tempered_nll(logp, labels, float(np.exp(lt))),
                              bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
        self.temperature = float(np.exp(res.x))

    def apply(self, probs: np.ndarray, **context: Any) -> np.ndarray:
        return temper(check_probs(probs), self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemperatureScaling:
        return cls(temperature=float(d["temperature"]))

    def summary(self) -> str:
        return f"T = {self.temperature:.4g}"
