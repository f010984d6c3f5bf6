"""Numerical precision of the networks: fp32 everywhere, or a bf16 body between fp32 ends.

bf16 keeps fp32's exponent range but only 8 significant bits (a relative rounding step of 2⁻⁸ ≈
0.4 %).  Where that loses accuracy was measured on a trained ``pasquet2019-small`` (benchmarks/speed.py,
``bf16_vs_fp32``, diagnostics): rounding the input pixels, the features or the logits to bf16 (each
alone, the rest in fp32) moves z_mean by random amounts that average out -- no bias.  Rounding the
*weights* of the first convolution does not: it is a fixed perturbation of the filters that turn the
five bands into colours, so it shifts every redshift the same way, and it made most of the bias of
plain autocast.  The trunk's weights add a smaller shift, the head's almost none.  The policy:

* **the first convolution of every stem** (the one that reads the pixels) stays fp32;
* **every convolution-free part** stays fp32: the fully connected head and the magnitude encoder of
  the hybrid model (a few percent of the FLOPs), so the logits, the softmax and z_mean = Σ z_k p_k
  (computed in fp32/fp64 by the callers) never see bf16 weights.

The **body** -- the inception trunk and any further stem convolutions -- runs in bf16.  Two ways of
running the same partition:

* :func:`cast_body` (inference): the body's weights are stored in bf16 and its inputs cast to bf16;
  its output comes back as fp32.  No autocast (which would re-cast the weights at every call).
* :func:`keep_ends_fp32` (training under Lightning's ``bf16-mixed``, i.e. ``torch.autocast``): the fp32
  parts run with autocast switched off, on fp32 inputs; the body is left to autocast, and the weights
  stay fp32 (the optimiser's master copy).

In fp32 (``precision="32"``) nothing is changed, so the fp32 numerics are those of the plain model.
Both functions only replace the ``forward`` of some submodules (an instance attribute), so
``state_dict`` keys and checkpoints are the same as without them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zpix.models.inception import ConvStem, InceptionTrunk

#: Inference precisions: fp32, bf16 body (see the module docstring), or the hardware's measured choice.
PRECISIONS = ("32", "bf16", "auto")


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value


class _PrecisionForward:
    """A module's own forward, called with floating inputs cast to ``dtype`` and autocast off.

    Stored as the module's ``forward`` attribute (``nn.Module.__call__`` calls ``self.forward``); it
    holds the module itself, so ``copy.deepcopy`` and pickling carry it along.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype, out_dtype: torch.dtype | None) -> None:
        self.module = module
        self.dtype = dtype
        self.out_dtype = out_dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(_cast(a, self.dtype) for a in args)
        kwargs = {k: _cast(v, self.dtype) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            out = type(self.module).forward(self.module, *args, **kwargs)
        return out if self.out_dtype is None else _cast(out, self.out_dtype)


def _wrapped(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), _PrecisionForward)


def body_modules(model: nn.Module) -> list[str]:
    """Names of the submodules run in bf16: every inception trunk, and the stem layers after the first
    convolution (e.g. the second stem convolution of the multimodal network)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, InceptionTrunk):
            names.append(name)
        elif isinstance(module, ConvStem):
            names += [f"{name}.layers.{i}" for i, layer in enumerate(module.layers)
                      if i > 0 and any(p.numel() for p in layer.parameters())]
    return names


def fp32_modules(model: nn.Module) -> list[str]:
    """Names of the submodules kept in fp32: the first layer of every stem, and every child of the
    model that holds weights but no convolution (the head, the magnitude encoder)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, ConvStem):
            names.append(f"{name}.layers.0")
    for name, module in model.named_children():
        has_conv = any(isinstance(m, nn.Conv2d) for m in module.modules())
        if not has_conv and any(p.numel() for p in module.parameters()):
            names.append(name)
    return names


def cast_body(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Inference in mixed precision: the body's weights in ``dtype``, everything else in fp32 (in place).

    Each body module receives its inputs cast to ``dtype`` and returns fp32, so the code around it
    (pools, concatenations, the head) sees the same types as in fp32.  A model without a convolutional
    body (the magnitude network) is left as it is: by the policy above its parts all stay fp32, so bf16
    and fp32 are the same computation for it.  Returns ``model``.
    """
    for name in body_modules(model):
        module = model.get_submodule(name)
        if _wrapped(module):
            continue
        module.to(dtype)
        module.forward = _PrecisionForward(module, dtype, torch.float32)
    return model


def runs_in_bf16(model: nn.Module) -> bool:
    """True when :func:`cast_body` has put some of ``model`` in bf16."""
    return any(_wrapped(model.get_submodule(name)) for name in body_modules(model))


def keep_ends_fp32(model: nn.Module) -> nn.Module:
    """Mixed-precision training under autocast: the parts named by :func:`fp32_modules` run in fp32
    with autocast off; the rest is left to autocast (in place).  Returns ``model``."""
    for name in fp32_modules(model):
        module = model.get_submodule(name)
        if not _wrapped(module):
            module.forward = _PrecisionForward(module, torch.float32, None)
    return model


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string (``bf16-mixed`` → bfloat16), else None."""
    if precision in ("bf16-mixed", "bf16", "bf16-true"):
        return torch.bfloat16
    if precision in ("16-mixed", "16", "16-true"):
        return torch.float16
    return None
