"""Prediction: a trained run applied to cube stores, written as a prediction directory.

``streaming`` runs the ensemble batch by batch; ``format`` defines the prediction directory
(qp PDFs + Parquet catalogue) that every method writes and every evaluation reads.
"""

from zpix.prediction.streaming import load_ensemble, merge_predictions, predict

__all__ = ["load_ensemble", "merge_predictions", "predict"]
