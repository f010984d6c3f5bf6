"""Per-object quality scores and flags for a prediction catalogue (docs/calibration.md, "Quality").

See :mod:`zpix.quality.scores`.
"""

from zpix.quality.scores import (
    FLAG_BITS,
    QUALITY_FILE,
    QualityModel,
    fit_quality,
    load_quality,
    n_modes,
    outlier_probability,
)

__all__ = ["FLAG_BITS", "QUALITY_FILE", "QualityModel", "fit_quality", "load_quality", "n_modes",
           "outlier_probability"]
