"""Post-hoc calibration of binned redshift PDFs, fitted on a run's validation objects and stored in the run.

Methods (``zpix calibrate RUN --method NAME``; see docs/calibration.md):

* ``temperature`` — q ∝ p^(1/T), one scalar (Guo et al. 2017);
* ``pit`` — the CDF mapped through the validation PITs' ECDF (Bordoloi et al. 2010);
* ``pit-local`` — one PIT map per photo-z bin, interpolated in z_phot (conditional recalibration);
* ``pit-width`` — one PIT map per bin of the PDF's 68% width (conditional on the object's own precision);
* ``pit-affine`` / ``pit-beta`` — few-parameter PIT maps: Φ(a Φ⁻¹(u) + b) (shift and stretch in probit space) and
  beta calibration (Kull et al. 2017), fitted by minimum Cramér–von Mises distance;
* ``keep-mean`` — last in a method list: each calibrated PDF translated back to its uncalibrated mean;
* ``student-t`` — regression heads: Gaussian → Student-t with a fitted scale and ν;
* ``photoz`` — Lin et al. calibration against photo-z (issue 12, ``zpix.calibration.photoz``).

``load_calibration(run_dir)`` returns the chain stored in ``run_dir/calibration.json`` (a callable
probs → probs; the identity where there is none); ``zpix predict`` applies it after the ensemble mean.
"""

from zpix.calibration.base import (
    CALIBRATION_FILE,
    Calibration,
    Calibrator,
    FittedStep,
    available_calibrators,
    calibration_path,
    get_calibrator,
    load_calibration,
    register_calibrator,
)

__all__ = ["CALIBRATION_FILE", "Calibration", "Calibrator", "FittedStep", "available_calibrators",
           "calibration_path", "calibrate", "fit_calibration", "get_calibrator", "load_calibration",
           "register_calibrator"]


def __getattr__(name: str):
    # the run-level entry points import torch and the prediction stage: only when used
    if name in ("calibrate", "fit_calibration"):
        from zpix.calibration import fit

        return getattr(fit, name)
    raise AttributeError(name)
