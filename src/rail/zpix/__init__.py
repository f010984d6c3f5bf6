"""zpix's RAIL stages; ``rail.stages.import_and_attach_all()`` imports this package to find them."""

from rail.estimation.algos.zpix import *  # noqa: F403
from rail.estimation.algos.zpix import __all__  # noqa: F401
