"""A timm-style model registry.

A factory is a plain function whose keyword-only arguments (all with defaults) are the model's
configuration, ``def factory(*, n_bands=5, ...)``; the classes it builds take keyword-only arguments
too, so no option is ever passed by position.  ``@register_model("name")`` records it;
``create_model(name, **overrides)`` resolves the overrides against the factory's signature, builds the
model and stamps it with

* ``model.zpix_name``   -- the registered name,
* ``model.zpix_config`` -- every keyword argument after defaults were applied, converted to plain
  JSON/YAML types (tuples become lists),

so that a checkpoint can rebuild the very same architecture with
``create_model(model.zpix_name, **model.zpix_config)``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering ``factory`` under ``name``.

    Every parameter of the factory must be keyword-only and have a default: the defaults are the
    model's reference configuration ("default configs beside the model", as in timm).
    """

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        for p in inspect.signature(factory).parameters.values():
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"factory for {name!r}: parameter {p.name!r} needs a default value")
            if p.kind is not p.KEYWORD_ONLY:
                raise TypeError(f"factory for {name!r}: parameter {p.name!r} must be keyword-only "
                                "(def factory(*, option=default, ...))")
        _REGISTRY[name] = factory
        return factory

    return decorator


def register_variant(name: str, base: str, doc: str = "", **defaults: Any) -> None:
    """Register ``name`` as the already registered factory ``base`` with other default values.

    One class and one factory, several named configurations (e.g. ``hybrid-images`` is ``hybrid``
    with ``use_mags=False``): the variant's signature is the base's with ``defaults`` substituted.
    """
    base_factory = _factory(base)
    signature = inspect.signature(base_factory)
    unknown = sorted(set(defaults) - set(signature.parameters))
    if unknown:
        raise ValueError(f"model {base!r} has no option(s) {', '.join(unknown)}")
    params = [p.replace(default=defaults.get(p.name, p.default)) for p in signature.parameters.values()]

    def factory(**kwargs: Any) -> nn.Module:
        return base_factory(**kwargs)

    factory.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = doc or f"Variant of {base!r} with defaults {defaults}."
    register_model(name)(factory)


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def _plain(value: Any, key: str) -> Any:
    """Convert a config value to JSON/YAML types (tuple -> list), refusing anything else."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, tuple | list):
        return [_plain(v, key) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, key) for k, v in value.items()}
    # numpy scalars and 0-d tensors carry .item(); anything else cannot go into a checkpoint config.
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _plain(item(), key)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"config value {key}={value!r} is not JSON/YAML-serialisable")


def _factory(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models()) or "(none)"
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full configuration ``create_model(name, **overrides)`` would use, without building it."""
    factory = _factory(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(unknown)}; its options are: {', '.join(params)}"
        )
    config = {k: _plain(overrides.get(k, p.default), k) for k, p in params.items()}
    json.dumps(config)  # belt and braces: the checkpoint stores this dict as JSON/YAML
    return config


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword ``overrides`` of its default configuration.

    Raises ``ValueError`` for an unknown name (listing the known ones) or an unknown option.
    """
    config = model_config(name, **overrides)
    model = _factory(name)(**config)
    model.zpix_name = name
    model.zpix_config = config
    return model
