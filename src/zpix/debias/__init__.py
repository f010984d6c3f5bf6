"""Bias correction with respect to spec-z (Lin et al. 2022): balanced subsets, soft labels, edge shift,
retraining of the classification head on a frozen representation.  See :mod:`zpix.debias.api`."""

from zpix.debias.api import DebiasConfig, debias_run, prepare_labels, retrain_heads

__all__ = ["DebiasConfig", "debias_run", "prepare_labels", "retrain_heads"]
