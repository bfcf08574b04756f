"""Quantise any model with a module-name plan: ``brevitas_apq.quantize(model, plan)``.

The plan (:class:`~brevitas_apq.module_plans.ModulePlan`, a YAML file, or the Transformer's
:class:`~brevitas_apq.plans.BitPlan`) names modules or glob patterns and gives each its
quantisers (SQ / AQ / APQ, bits, threshold). ``quantize`` rebuilds every module the plan
configures as a ``brevitas.nn`` layer with this project's injectors, keeping its float weights:

* a float ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` becomes ``QuantLinear`` /
  ``QuantConv1d`` / ``QuantConv2d``, an ``nn.ReLU`` a ``QuantReLU``, an ``nn.Identity`` a
  ``QuantIdentity`` (a placeholder where an activation quantiser belongs);
* a ``brevitas.nn`` layer of these kinds is rebuilt as the same class with the plan's
  quantisers; quantisers the plan does not give (roles it leaves out) are rebuilt from their
  own injector and keep their learned state.

Modules the plan does not name stay as they are. The rewrite is Brevitas's own:
``brevitas.graph.base.ModuleToModuleByInstance`` builds each new layer from the old one's
attributes (features, kernel, stride, padding, bias...) and ``brevitas.graph.utils.set_module``
puts it in place, under every name the old instance had (a shared module stays shared).

Example::

    import torch
    from torch import nn
    import brevitas_apq
    from brevitas_apq.module_plans import ModulePlan

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    plan = ModulePlan.from_dict({"modules": {
        "0": {"input": {"bits": 8, "scheme": "apq"}, "weight": 4, "bias": 8},
        "1": {"act": 4},                      # after a ReLU: unsigned, zero point 0
        "2": {"weight": 8, "bias": 8},
    }})
    qmodel = brevitas_apq.quantize(model, plan)   # model itself is left float
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and Brevitas load on first use: `import brevitas_apq` stays light
    from torch import nn

    from brevitas_apq.module_plans import ModulePlan, ModuleSpec
    from brevitas_apq.plans import BitPlan, DecisionRule

__all__ = ["quantize"]


def float_to_quant() -> dict[type, type]:
    """The ``brevitas.nn`` layer each float module becomes."""
    import brevitas.nn as qnn
    from torch import nn

    return {
        nn.Linear: qnn.QuantLinear,
        nn.Conv1d: qnn.QuantConv1d,
        nn.Conv2d: qnn.QuantConv2d,
        nn.ReLU: qnn.QuantReLU,
        nn.Identity: qnn.QuantIdentity,
    }


def quantize(
    model: nn.Module, plan: ModulePlan | BitPlan | str | Path, *, inplace: bool = False
) -> nn.Module:
    """Return ``model`` with the quantisers of ``plan`` (see the module docstring).

    ``plan``: a :class:`ModulePlan`, the path of a module-name plan file, or a ``BitPlan`` (the
    Transformer's presets, by its module names). The model is copied first unless
    ``inplace=True``. A plan that does not fit the model raises ``PlanError`` before anything
    changes. The result is in the training mode of ``model``; train (or calibrate) it before
    evaluating: activation quantisers collect their range in training mode.

    Example:
        >>> from torch import nn
        >>> from brevitas_apq.module_plans import ModulePlan, ModuleSpec
        >>> from brevitas_apq.plans import QuantSpec
        >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> plan = ModulePlan({
        ...     "0": ModuleSpec(input=QuantSpec(8, "apq"), weight=QuantSpec(4, "aq")),
        ...     "1": ModuleSpec(act=QuantSpec(4)),
        ...     "2": ModuleSpec(weight=QuantSpec(8)),
        ... })
        >>> q = quantize(mlp, plan)
        >>> type(q[0]).__name__, q[0].weight_quant.tensor_quant.quant_scheme
        ('QuantLinear', 'aq')
    """
    from brevitas.graph.utils import set_module
    from torch import nn

    from brevitas_apq.module_plans import as_module_plan

    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize needs a torch.nn.Module, got {type(model).__name__}")
    plan = as_module_plan(plan)
    resolved = plan.resolve(model)  # every check happens here, before the model changes
    if not inplace:
        model = copy.deepcopy(model)
    for name, spec in resolved.items():
        old = model.get_submodule(name)
        new = _rebuild(old, name, spec, plan.decision)
        for full_name, module in model.named_modules(remove_duplicate=False):
            if module is old:
                set_module(model, new, full_name)
    return model


def _rebuild(old: nn.Module, name: str, spec: ModuleSpec, decision: DecisionRule) -> nn.Module:
    """The ``brevitas.nn`` layer for ``old`` with ``spec``'s quantisers and ``old``'s state."""
    # Not brevitas.graph.quantize.layerwise_quantize: it builds each new layer on the meta
    # device and loads the old layer's state dict with assign=True, which leaves the APQ
    # quantisers' own buffers (use_zero_point, running_min, ...) missing from the float state
    # dict (load_state_dict fails; with strict=False they would stay on the meta device). The
    # same rewriter it uses, ModuleToModuleByInstance, builds the layer here on the real device,
    # and the float weights (and kept quantisers' state) are loaded afterwards.
    from brevitas.graph.base import ModuleToModuleByInstance
    from brevitas.graph.utils import signature_keys
    from brevitas.nn.mixin.base import QuantLayerMixin

    from brevitas_apq.module_plans import COMPUTE_ROLES, module_kind

    kwargs = spec.kwargs(old, decision)
    replaced = [f"{role}_quant." for role in spec.roles]
    if isinstance(old, QuantLayerMixin):
        target = type(old)
        roles = (*COMPUTE_ROLES,) if module_kind(old) == "compute" else ("act", "input")
        for role in roles:
            proxy = getattr(old, f"{role}_quant", None)
            keyword = f"{role}_quant" in signature_keys(target)  # QuantIdentity: act only
            if proxy is not None and keyword and f"{role}_quant" not in kwargs:
                kwargs[f"{role}_quant"] = proxy.quant_injector if proxy.is_quant_enabled else None
    else:
        classes = float_to_quant()
        target = classes[next(c for c in classes if isinstance(old, c))]
        kwargs["return_quant_tensor"] = False
    new = ModuleToModuleByInstance(old, target, **kwargs).init_new_module(
        old, name, load_state_dict=False
    )
    state = {
        k: v for k, v in old.state_dict().items() if not any(k.startswith(p) for p in replaced)
    }
    _, unexpected = new.load_state_dict(state, strict=False)
    if unexpected:  # a float layer's state is its weight and bias, which the new layer has
        raise RuntimeError(f"{name}: state not taken over by the quantised layer: {unexpected}")
    parameter = next(old.parameters(), None)
    if parameter is not None:
        new.to(parameter.device)
    return new.train(old.training)
