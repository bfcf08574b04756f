"""Plans keyed by module name, for any model: :class:`ModulePlan` and :class:`ModuleSpec`.

A :class:`ModulePlan` maps module names or glob patterns of any model to the quantisers of
each role (:class:`ModuleSpec`: ``weight``, ``bias``, ``input``, ``output``, ``act``), the most
specific pattern winning an overlap, validated against the model (a pattern that matches
nothing fails loudly, naming the closest modules); ``brevitas_apq.quantize(model, plan)``
applies it. Each role's :class:`~brevitas_apq.plans.QuantSpec` and the plan's
:class:`~brevitas_apq.plans.DecisionRule` are those of ``brevitas_apq.plans``, and
``BitPlan.to_module_plan()`` is the Transformer's plan by its module names. Plan files are
bounded before they are read (``plans.load_plan_yaml``)::

    modules:
      "encoder.*.q_proj": {weight: {bits: 4, scheme: sq}, output: {bits: 8, scheme: apq}}
      head: {weight: 8, bias: 8}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from brevitas_apq.io import write_text
from brevitas_apq.plans import (
    BitPlan,
    DecisionRule,
    PlanError,
    QuantSpec,
    from_yaml_file,
    unknown_error,
)
from brevitas_apq.quant import SCHEME_QUANTIZERS, UnsignedActQuant

#: The roles a module-name plan can give, by kind of module: a compute layer (``Linear``,
#: ``Conv1d``, ``Conv2d``, float or ``brevitas.nn``) has weight, bias, input and output
#: quantisers; an activation (``ReLU``, ``Identity`` and Brevitas's ``QuantReLU``,
#: ``QuantIdentity``) has one, ``act``.
COMPUTE_ROLES = ("weight", "bias", "input", "output")
ACT_ROLES = ("act",)
MODULE_ROLES = COMPUTE_ROLES + ACT_ROLES
SPEC_KEYS = tuple(f.name for f in dataclasses.fields(QuantSpec))


def module_kind(module: Any) -> str | None:
    """``"compute"``, ``"act"`` or ``None`` (not quantisable by a plan) for a module."""
    import brevitas.nn as qnn
    from torch import nn

    if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):  # brevitas.nn's subclass these
        return "compute"
    if isinstance(module, nn.ReLU | nn.Identity | qnn.QuantReLU | qnn.QuantIdentity):
        return "act"
    return None


def _is_relu(module: Any) -> bool:
    import brevitas.nn as qnn
    from torch import nn

    return isinstance(module, nn.ReLU | qnn.QuantReLU)


@dataclass(frozen=True)
class ModuleSpec:
    """The quantisers a module-name plan gives to the modules one pattern matches.

    ``weight``, ``bias``, ``input``, ``output`` (compute layers) and ``act`` (activations): a
    :class:`QuantSpec` each, or ``None`` for no quantiser. ``unsigned`` is for ``act``: an
    unsigned grid with zero point 0 (``UnsignedActQuant``, scheme ``sq``), for tensors that are
    one-sided by construction; ``None`` means unsigned after a ReLU and signed elsewhere.

    Example:
        >>> spec = ModuleSpec(weight=QuantSpec(4), bias=QuantSpec(8), input=QuantSpec(8, "apq"))
        >>> spec.roles
        ('weight', 'bias', 'input')
    """

    weight: QuantSpec | None = None
    bias: QuantSpec | None = None
    input: QuantSpec | None = None
    output: QuantSpec | None = None
    act: QuantSpec | None = None
    unsigned: bool | None = None

    def __post_init__(self) -> None:
        for role in MODULE_ROLES:
            value = getattr(self, role)
            if value is not None and not isinstance(value, QuantSpec):
                raise PlanError(f"{role}={value!r} is not a QuantSpec")
        if not self.roles:
            raise PlanError(f"an entry gives no quantiser; give one of {', '.join(MODULE_ROLES)}")
        if self.unsigned is not None and not isinstance(self.unsigned, bool):
            raise PlanError(f"unsigned={self.unsigned!r} is invalid; allowed: true, false")
        if self.unsigned is not None and self.act is None:
            raise PlanError("unsigned is for the act quantiser; give act too, or drop unsigned")
        if self.unsigned and self.act.scheme != "sq":
            raise PlanError(
                f"an unsigned act quantiser has zero point 0: scheme {self.act.scheme!r} is not "
                "allowed there (give only its bits, or unsigned: false)"
            )
        for role in ("bias", "input", "output", "act"):
            value = getattr(self, role)
            if value is not None and value.per_channel:
                raise PlanError(f"{role}: per_channel is for weights only")

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this entry gives a quantiser to, in ``MODULE_ROLES`` order."""
        return tuple(r for r in MODULE_ROLES if getattr(self, r) is not None)

    @classmethod
    def from_dict(
        cls, data: Any, defaults: Mapping[str, Any] | None = None, where: str = "entry"
    ) -> ModuleSpec:
        """An entry from YAML: ``{role: {bits, scheme, threshold, per_channel} | bits,
        unsigned: bool}``; ``defaults`` fills the keys a role leaves out (``per_channel`` for
        weights only)."""
        if not isinstance(data, Mapping):
            raise PlanError(f"{where}: expected a mapping of {', '.join(MODULE_ROLES)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "unsigned":
                values[key] = value
            elif key in MODULE_ROLES:
                base = dict(defaults or {})
                if key != "weight":  # a per_channel default is for the weights
                    base.pop("per_channel", None)
                values[key] = _spec_from(value, base, f"{where}.{key}")
            else:
                raise unknown_error(f"role of {where}", key, (*MODULE_ROLES, "unsigned"))
        try:
            return cls(**values)
        except PlanError as err:
            raise PlanError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {r: getattr(self, r).to_dict() for r in self.roles}
        if self.unsigned is not None:
            out["unsigned"] = self.unsigned
        return out

    def restricted(self, roles: tuple[str, ...]) -> ModuleSpec:
        """This entry with only ``roles`` (the ones a particular module has)."""
        keep = {r: getattr(self, r) for r in roles if getattr(self, r) is not None}
        unsigned = self.unsigned if "act" in keep else None
        return ModuleSpec(**keep, unsigned=unsigned)

    def kwargs(self, module: Any, decision: DecisionRule | None = None) -> dict[str, Any]:
        """Brevitas keyword arguments of this entry's quantisers for ``module``'s layer
        (``weight_quant=...``, ``weight_bit_width=...``, ...; ``act_quant=`` for activations)."""
        decision = decision or DecisionRule()
        out: dict[str, Any] = {}
        for role in self.roles:
            spec = getattr(self, role)
            prefix = "" if role == "act" else f"{role}_"
            if role == "act":
                unsigned = _is_relu(module) if self.unsigned is None else self.unsigned
                quant = UnsignedActQuant if unsigned else SCHEME_QUANTIZERS[spec.scheme].act
            elif role in ("input", "output"):
                quant = SCHEME_QUANTIZERS[spec.scheme].act
            else:
                quant = getattr(SCHEME_QUANTIZERS[spec.scheme], role)
            out[f"{role}_quant"] = quant
            out[f"{prefix}bit_width"] = spec.bits
            out[f"{prefix}symmetry_threshold"] = spec.threshold
            if role == "weight" and spec.per_channel:
                out["weight_scaling_per_output_channel"] = True
            out.update(decision.kwargs(prefix))
        return out


def _spec_from(value: Any, defaults: Mapping[str, Any], where: str) -> QuantSpec:
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"bits": value}
    if not isinstance(value, Mapping):
        raise PlanError(f"{where}: expected bits or a mapping with {', '.join(SPEC_KEYS)}")
    for key in value:
        if key not in SPEC_KEYS:
            raise unknown_error(f"key of {where}", key, SPEC_KEYS)
    merged = {**defaults, **value}
    if "bits" not in merged:
        raise PlanError(f"{where}: no bits; give bits here or in the plan's defaults")
    try:
        return QuantSpec(**merged)
    except PlanError as err:
        raise PlanError(f"{where}: {err}") from None


def _literal_prefix(pattern: str) -> str:
    for i, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:i]
    return pattern


def _specificity(pattern: str) -> tuple[int, int, int]:
    """Sort key of the overlap rule: exact names first, then the longer literal prefix, then
    more literal characters."""
    prefix = _literal_prefix(pattern)
    literal = sum(c not in "*?[]" for c in pattern)
    return (prefix == pattern, len(prefix), literal)


@dataclass(frozen=True)
class ModulePlan:
    """A bit plan keyed by module name, for any model (``brevitas_apq.quantize``).

    ``modules`` maps a module name or a glob pattern (``fnmatch``: ``*`` matches any
    characters, dots included, ``?`` one, ``[seq]`` one of a set) to a :class:`ModuleSpec`.
    Applied to a model (:meth:`resolve`), every pattern must match at least one module that a
    plan can quantise (``Linear``, ``Conv1d``, ``Conv2d``, ``ReLU``, ``Identity``, and the
    ``brevitas.nn`` layers of these), or the plan fails naming the pattern and the closest
    module names; every role an entry gives must land on some module it matches (a bias on a
    layer without bias is skipped), and every module it matches must take one of its roles.

    **Overlaps: the most specific pattern wins, entirely** (its entry is the module's whole
    configuration; entries do not merge): an exact name beats any glob, then the longer literal
    prefix (the characters before the first ``*``, ``?`` or ``[``) wins, then the pattern with
    more literal characters. Two patterns that still tie on a module are an error.

    The APQ ``decision`` rule is one for the whole plan, as in :class:`BitPlan`.

    Example (YAML, ``ModulePlan.from_yaml``; Python: ``ModulePlan({"head": ModuleSpec(...)})``)::

        name: my-cnn
        defaults: {scheme: sq, threshold: 0.1}     # keys a role leaves out
        modules:
          "features.*": {weight: 4, bias: 8, act: 4}          # bits only: the defaults
          features.0: {input: {bits: 8, scheme: apq}, weight: 8, bias: 8}
          head: {weight: 8, bias: 8, output: {bits: 8, scheme: apq}}
        decision: {rule: paper}

    ``features.0`` (exact) takes its own entry, the other ``features.*`` modules the glob's:
    weights and biases for the convolutions, ``act`` for the ReLUs.
    """

    modules: Mapping[str, ModuleSpec]
    name: str = "custom"
    description: str = field(default="", compare=False)
    decision: DecisionRule = field(default_factory=DecisionRule)

    def __post_init__(self) -> None:
        if not isinstance(self.modules, Mapping) or not self.modules:
            raise PlanError("a module-name plan needs modules: a mapping of names or patterns")
        modules = dict(self.modules)
        for pattern, spec in modules.items():
            if not isinstance(pattern, str) or not pattern:
                raise PlanError(f"module pattern {pattern!r} is invalid; allowed: a non-empty name")
            if not isinstance(spec, ModuleSpec):
                raise PlanError(f"module {pattern!r}: {spec!r} is not a ModuleSpec")
        if not isinstance(self.decision, DecisionRule):
            raise PlanError(f"decision={self.decision!r} is not a DecisionRule")
        object.__setattr__(self, "modules", modules)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> ModulePlan:
        """A plan from the YAML structure (see the class docstring)."""
        if not isinstance(data, Mapping):
            raise PlanError("a module-name plan must be a mapping with key modules")
        top = ("name", "description", "defaults", "modules", "decision")
        for key in data:
            if key not in top:
                raise unknown_error("plan key", key, top)
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, Mapping):
            raise PlanError(f"defaults: expected a mapping with {', '.join(SPEC_KEYS)}")
        _spec_from({"bits": defaults.get("bits", 8)}, defaults, "defaults")  # validate them
        modules = data.get("modules")
        if not isinstance(modules, Mapping) or not modules:
            raise PlanError("modules: expected a mapping of module names or patterns to roles")
        specs = {
            str(pattern): ModuleSpec.from_dict(entry, defaults, f"module {str(pattern)!r}")
            for pattern, entry in modules.items()
        }
        return cls(
            specs,
            name=str(data.get("name", "custom")),
            description=str(data.get("description", "")),
            decision=DecisionRule.from_dict(data.get("decision") or {}),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModulePlan:
        return from_yaml_file(cls, path)

    def to_dict(self) -> dict[str, Any]:
        """The explicit form: every role of every entry spelled out."""
        return {
            "name": self.name,
            **({"description": self.description} if self.description else {}),
            "modules": {pattern: spec.to_dict() for pattern, spec in self.modules.items()},
            "decision": self.decision.to_dict(),
        }

    def to_yaml(self, path: str | Path) -> Path:
        """Write the explicit form atomically."""
        return write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    # --- use ------------------------------------------------------------------------------------

    def resolve(self, model: Any) -> dict[str, ModuleSpec]:
        """``{module name: its entry}`` for every module of ``model`` the plan configures (in
        the model's order), each entry restricted to the roles the module has; ``PlanError``
        for anything that does not fit the model (see the class docstring)."""
        from fnmatch import fnmatchcase

        candidates, others = _plannable_modules(model)
        winners: dict[str, str] = {}
        for name in candidates:
            matching = [p for p in self.modules if fnmatchcase(name, p)]
            if not matching:
                continue
            ranked = sorted(matching, key=_specificity, reverse=True)
            if len(ranked) > 1 and _specificity(ranked[0]) == _specificity(ranked[1]):
                raise PlanError(
                    f"patterns {ranked[0]!r} and {ranked[1]!r} match module {name!r} equally "
                    "specifically; make one more specific (an exact name wins over a glob)"
                )
            winners[name] = ranked[0]
        for pattern in self.modules:
            if not any(fnmatchcase(name, pattern) for name in candidates):
                raise _matches_nothing(pattern, candidates, others)
        resolved: dict[str, ModuleSpec] = {}
        landed: dict[str, set[str]] = {p: set() for p in self.modules}
        for name, pattern in winners.items():
            module, spec = candidates[name], self.modules[pattern]
            roles = COMPUTE_ROLES if module_kind(module) == "compute" else ACT_ROLES
            if "bias" in roles and getattr(module, "bias", None) is None:
                roles = tuple(r for r in roles if r != "bias")
            given = tuple(r for r in spec.roles if r in roles)
            if not given:
                raise PlanError(
                    f"pattern {pattern!r} matches {name!r} ({type(module).__name__}) but gives it "
                    f"none of its roles ({', '.join(roles)}); it gives {', '.join(spec.roles)}"
                )
            landed[pattern].update(given)
            resolved[name] = spec.restricted(given)
        for pattern, spec in self.modules.items():
            applied = [n for n, p in winners.items() if p == pattern]
            lost = [r for r in spec.roles if r not in landed[pattern]]
            if applied and lost:
                raise PlanError(
                    f"pattern {pattern!r} gives {', '.join(lost)}, but no module it applies to "
                    f"({', '.join(applied[:5])}{', ...' if len(applied) > 5 else ''}) has "
                    f"{'that role' if len(lost) == 1 else 'those roles'}"
                )
        return resolved


def _plannable_modules(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The modules a plan can quantise, by name, and the other named modules (for messages).

    Modules inside a ``brevitas.nn`` layer (its quantisers' parts) are neither."""
    from brevitas.nn.mixin.base import QuantLayerMixin

    candidates: dict[str, Any] = {}
    others: dict[str, Any] = {}
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, QuantLayerMixin):
            inside.append(name)
        (candidates if module_kind(module) else others)[name] = module
    return candidates, others


def _matches_nothing(pattern: str, candidates: dict, others: dict) -> PlanError:
    from difflib import get_close_matches
    from fnmatch import fnmatchcase

    unplannable = [
        f"{n} ({type(m).__name__})" for n, m in others.items() if fnmatchcase(n, pattern)
    ]
    if unplannable:
        return PlanError(
            f"pattern {pattern!r} matches only modules a plan cannot quantise: "
            f"{', '.join(unplannable[:5])}; quantisable are Linear, Conv1d, Conv2d, ReLU, "
            "Identity and their brevitas.nn layers"
        )
    names = list(candidates)
    close = get_close_matches(pattern, names, n=5, cutoff=0.5) or names[:5]
    return PlanError(
        f"pattern {pattern!r} matches no module of the model; closest module names: "
        f"{', '.join(close) if close else '(the model has no quantisable module)'}"
    )


def as_module_plan(plan: Any) -> ModulePlan:
    """A :class:`ModulePlan` from a ``ModulePlan``, a ``BitPlan`` (the Transformer's, see
    :meth:`BitPlan.to_module_plan`) or the path of a module-name plan file."""
    if isinstance(plan, ModulePlan):
        return plan
    if isinstance(plan, BitPlan):
        return plan.to_module_plan()
    if isinstance(plan, str | Path):
        return ModulePlan.from_yaml(plan)
    raise PlanError(f"plan={plan!r} is not a ModulePlan, a BitPlan or the path of a plan file")


__all__ = [
    "ACT_ROLES",
    "COMPUTE_ROLES",
    "MODULE_ROLES",
    "ModulePlan",
    "ModuleSpec",
    "as_module_plan",
    "module_kind",
]
