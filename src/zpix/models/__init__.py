"""Photo-z networks behind a timm-style registry.

>>> from zpix.models import create_model, list_models
>>> model = create_model("pasquet2019-small", n_bands=4, image_size=36)

Importing this package registers every model (the modules below call ``@register_model``).
"""

from zpix.models import hybrid as _hybrid  # noqa: F401  (registers hybrid, hybrid-images, hybrid-mags)
from zpix.models import multimodal as _multimodal  # noqa: F401  (registers multimodal, multimodal-small)
from zpix.models import networks as _networks  # noqa: F401  (registers pasquet2019, pasquet2019-small)
from zpix.models.registry import create_model, list_models, model_config, register_model

__all__ = ["create_model", "list_models", "model_config", "register_model"]
