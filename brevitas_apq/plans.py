"""Per-layer bit plans: typed, frozen, validated configurations of every quantiser of a model.

A plan gives each quantised object its bit width and scheme (SQ, AQ or APQ with its threshold):
the eight linear layers ``L1``-``L8`` (weight, bias and output activation each) and the extra
activation quantisers of the Transformer (attention scores, softmax, residual adds, ...).
Plans come from presets or YAML and fail loudly on anything that matches nothing::

    from brevitas_apq.plans import BitPlan

    plan = BitPlan.from_presets("mixed-4-8", "sq-apq")   # the paper's proposal
    plan.layers["L8"].weight.bits                         # 8
    plan.to_yaml("plan.yaml")
    same = BitPlan.from_yaml("plan.yaml")

Bit presets: ``all-8``, ``all-4``, ``mixed-4-8`` (L8 -- its weights, bias and output -- at 8
bits, L1-L7 at 4). A bit preset sets the quantisers of the paper's model: the weights, biases
and outputs of the eight linear layers. The extra activation quantisers that only exist to make
the model integer-deployable on FINN (model input, positional-encoding add, attention scores,
softmax, context, residual adds, norms, ReLU, pooling) stay at 8 bits in every preset
(``EXTRA_ACTIVATION_BITS``); a plan file can lower them. Measured on Beijing PM2.5 (model
predicting the level; post-training quantisation of a trained float model, one quantiser at 4
bits, all else at 8; test RMSE against 19.7 with all at 8): the positional-encoding add at 4
bits gives 86, the pooled features 37, the attention residual 35, the model input 26 -- each
alone worse than the persistence forecast (18.6). The model input quantises data (min-max
scaled PM2.5, 0-994 µg/m³: a 4-bit step is 66 µg/m³), and the shared add quantisers carry the
PM2.5 signal, whose informative range is a small part of the tensor's range.

Scheme presets: ``all-sq``, ``all-aq``, ``sq-aq`` (SQ for weights and biases, AQ for
activations), ``sq-apq`` (SQ for weights and biases, APQ for activations) and ``all-apq``.

YAML files may start from presets and override single entries::

    base: {bits: mixed-4-8, schemes: sq-apq, threshold: 0.1}
    layers:
      L1: {weight: {bits: 8}}
    activations:
      scores: {bits: 8, scheme: aq}

The APQ decision rule is one setting for the whole plan (top-level key ``decision``, field
``BitPlan.decision``): ``rule`` ``paper`` (SQ iff S <= threshold after every mini-batch) or
``hysteresis`` (a band of relative half-width ``band`` around the threshold, applied to a moving
average of S with weight ``momentum`` for the newest mini-batch; see
``brevitas_apq.quant.core``). Plan files without it use the default rule::

    decision: {rule: paper}

Two activations are one-sided by construction and always use an unsigned grid with zero point 0
(``UnsignedActQuant``): ``softmax`` (probabilities) and ``relu`` (the FFN activation). On
``[0, max]`` the unsigned grid is exactly the asymmetric quantiser, at no zero-point cost, and it
is what FINN needs after ReLU. Their entries take a bit width; a scheme other than ``sq`` is
rejected.

**Any model: plans keyed by module name** are ``brevitas_apq.module_plans.ModulePlan``;
``BitPlan.to_module_plan()`` is this plan by the Transformer's module names. Plan files of both
kinds are bounded before they are read (``load_plan_yaml``: size, nesting, YAML aliases).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from brevitas_apq.errors import APQError
from brevitas_apq.io import write_text
from brevitas_apq.quant import SCHEME_QUANTIZERS, UnsignedActQuant
from brevitas_apq.quant.core import (
    DEFAULT_DECISION_BAND,
    DEFAULT_DECISION_MOMENTUM,
    DEFAULT_DECISION_RULE,
)
from brevitas_apq.quant.validation import (
    SCHEMES,
    check_band,
    check_bit_width,
    check_decision_rule,
    check_momentum,
    check_scheme,
    check_threshold,
)

if TYPE_CHECKING:  # module_plans builds on this module
    from brevitas_apq.module_plans import ModulePlan

LAYERS = ("L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8")
LAYER_ROLES = ("weight", "bias", "output")
ACTIVATIONS = (
    "input",  # model input, before L1
    "pos",  # both inputs of the positional-encoding add (one shared quantiser)
    "scores",  # attention scores, the softmax input
    "softmax",  # softmax output (unsigned)
    "context",  # attention-weighted values, the input of L5
    "res1",  # both inputs of the attention residual add (shared)
    "norm1",  # after the first normalisation
    "relu",  # after the FFN ReLU (unsigned)
    "res2",  # both inputs of the FFN residual add (shared)
    "norm2",  # after the second normalisation
    "pool",  # after average pooling over time, the input of L8
)
UNSIGNED_ACTIVATIONS = ("softmax", "relu")
EXTRA_ACTIVATION_BITS = 8  # bits of the ACTIVATIONS in every preset (see the module docstring)
BIT_PRESETS = ("all-8", "all-4", "mixed-4-8")
SCHEME_PRESETS = ("all-sq", "all-aq", "sq-aq", "sq-apq", "all-apq")
APQ_SCHEMES = ("sq-apq", "all-apq")  # the scheme presets with adaptive quantisers


class PlanError(APQError):
    """A plan that names something that does not exist or holds an invalid value."""


def unknown_error(kind: str, got: Any, valid: tuple[str, ...] | list[str]) -> PlanError:
    return PlanError(f"unknown {kind} {got!r}; valid: {', '.join(valid)}")


# --- reading plan files: bounded before anything is built ------------------------------------

#: What a plan file may hold. A YAML alias re-uses a node, so a few hundred bytes of nested
#: aliases expand to billions of nodes, and deep nesting overflows Python's stack; both are
#: refused while the file is parsed as a stream of events, before any node is built. Real plans
#: are a few levels deep, have no aliases and a few hundred nodes.
MAX_PLAN_BYTES = 1 << 20  # file size
MAX_PLAN_DEPTH = 32  # nesting of mappings and sequences, aliases expanded
MAX_PLAN_ALIASES = 64  # uses of an alias (``*name``)
MAX_PLAN_NODES = 100_000  # nodes after expanding every alias


def load_plan_yaml(path: str | Path) -> Any:
    """The parsed content of a plan file, or ``PlanError`` naming the file and the problem.

    The file is checked against ``MAX_PLAN_BYTES``, ``MAX_PLAN_DEPTH``, ``MAX_PLAN_ALIASES`` and
    ``MAX_PLAN_NODES`` on PyYAML's event stream (nothing is expanded), then read with
    ``yaml.safe_load``.
    """
    where = f"plan file {str(path)!r}"
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PLAN_BYTES:
            raise PlanError(
                f"{where} has {size:,} bytes, more than a plan may have ({MAX_PLAN_BYTES:,})"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PlanError(f"{where} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise PlanError(f"{where} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    try:
        _check_yaml_bounds(text, where)
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PlanError(f"{where} is not valid YAML: {err}") from None


def _check_yaml_bounds(text: str, where: str) -> None:
    """Walk the YAML events of ``text``; raise ``PlanError`` as soon as a bound is exceeded."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, height)
    stack: list[list] = []  # open collections: [anchor, nodes before it, height of children]
    nodes = aliases = 0

    def reached(height: int) -> None:  # a node of this height opens at the current depth
        if len(stack) + height > MAX_PLAN_DEPTH:
            raise PlanError(
                f"{where} nests deeper than {MAX_PLAN_DEPTH} levels (aliases expanded); a plan "
                "is a few levels deep"
            )
        if stack:
            stack[-1][2] = max(stack[-1][2], height)

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            reached(1)
            stack.append([event.anchor, nodes, 0])
            nodes += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before, height = stack.pop()
            if stack:
                stack[-1][2] = max(stack[-1][2], height + 1)
            if anchor is not None:
                anchors[anchor] = (nodes - before, height + 1)
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_PLAN_ALIASES:
                raise PlanError(
                    f"{where} uses more than {MAX_PLAN_ALIASES} YAML aliases (*name); write the "
                    "entries out, or use a glob pattern for many modules"
                )
            size, height = anchors.get(event.anchor, (1, 0))
            reached(height)
            nodes += size
        if nodes > MAX_PLAN_NODES:
            raise PlanError(
                f"{where} expands to more than {MAX_PLAN_NODES:,} YAML nodes (aliases expanded); "
                "a plan has a few hundred"
            )


@dataclass(frozen=True)
class QuantSpec:
    """Bit width and scheme of one quantiser; ``per_channel`` (weights only, YAML key
    ``per_channel``): one scale and zero point per output channel instead of per tensor."""

    bits: int
    scheme: str = "sq"
    threshold: float = 0.1
    per_channel: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.per_channel, bool):
            raise PlanError(f"per_channel={self.per_channel!r} is invalid; allowed: true, false")
        try:
            object.__setattr__(self, "bits", check_bit_width(self.bits, "bits"))
            object.__setattr__(self, "scheme", check_scheme(self.scheme, "scheme"))
            object.__setattr__(self, "threshold", check_threshold(self.threshold, "threshold"))
        except ValueError as err:
            raise PlanError(str(err)) from None

    def replace(self, **changes: Any) -> QuantSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        # The threshold is written for every scheme so that a later override to APQ keeps it.
        out = {"bits": self.bits, "scheme": self.scheme, "threshold": self.threshold}
        return {**out, "per_channel": True} if self.per_channel else out


@dataclass(frozen=True)
class DecisionRule:
    """How every APQ quantiser of a plan decides between SQ and AQ (see the module docstring)."""

    rule: str = DEFAULT_DECISION_RULE
    band: float = DEFAULT_DECISION_BAND
    momentum: float = DEFAULT_DECISION_MOMENTUM

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "rule", check_decision_rule(self.rule, "rule"))
            object.__setattr__(self, "band", check_band(self.band, "band"))
            object.__setattr__(self, "momentum", check_momentum(self.momentum, "momentum"))
        except ValueError as err:
            raise PlanError(f"decision: {err}") from None

    @classmethod
    def from_dict(cls, data: Any) -> DecisionRule:
        if isinstance(data, str):
            data = {"rule": data}
        if not isinstance(data, Mapping):
            raise PlanError("decision: expected a mapping with rule, band, momentum")
        keys = ("rule", "band", "momentum")
        for key in data:
            if key not in keys:
                raise unknown_error("decision key", key, keys)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "band": self.band, "momentum": self.momentum}

    def kwargs(self, prefix: str = "") -> dict[str, Any]:
        """The quantiser keywords (Brevitas-prefixed with ``prefix``) of this rule."""
        return {
            f"{prefix}decision_rule": self.rule,
            f"{prefix}decision_band": self.band,
            f"{prefix}decision_momentum": self.momentum,
        }


@dataclass(frozen=True)
class LayerSpec:
    """The three quantisers of a linear layer."""

    weight: QuantSpec
    bias: QuantSpec
    output: QuantSpec


@dataclass(frozen=True)
class BitPlan:
    """A complete, validated plan for the Transformer's quantisers (see the module docstring)."""

    layers: Mapping[str, LayerSpec]
    activations: Mapping[str, QuantSpec]
    name: str = "custom"
    description: str = field(default="", compare=False)
    decision: DecisionRule = field(default_factory=DecisionRule)

    def __post_init__(self) -> None:
        layers, acts = dict(self.layers), dict(self.activations)
        for key in layers:
            if key not in LAYERS:
                raise unknown_error("layer", key, LAYERS)
        for key in acts:
            if key not in ACTIVATIONS:
                raise unknown_error("activation", key, ACTIVATIONS)
        missing = [k for k in LAYERS if k not in layers] + [k for k in ACTIVATIONS if k not in acts]
        if missing:
            raise PlanError(f"plan {self.name!r} has no entry for: {', '.join(missing)}")
        for key in UNSIGNED_ACTIVATIONS:
            if acts[key].scheme != "sq":
                raise PlanError(
                    f"activation {key!r} always uses an unsigned grid with zero point 0; "
                    f"scheme {acts[key].scheme!r} is not allowed there (give only its bits)"
                )
        for name, spec in layers.items():
            if spec.bias.per_channel or spec.output.per_channel:
                raise PlanError(f"layer {name!r}: per_channel is for weights only")
        if any(spec.per_channel for spec in acts.values()):
            raise PlanError("per_channel is for weights only, not for activations")
        if not isinstance(self.decision, DecisionRule):
            raise PlanError(f"decision={self.decision!r} is not a DecisionRule")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "activations", acts)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_presets(
        cls,
        bits: str = "mixed-4-8",
        schemes: str = "sq-apq",
        threshold: float = 0.1,
        decision: DecisionRule | None = None,
    ) -> BitPlan:
        """A plan from a bit preset and a scheme preset (see the module docstring)."""
        if bits not in BIT_PRESETS:
            raise unknown_error("bit preset", bits, BIT_PRESETS)
        if schemes not in SCHEME_PRESETS:
            raise unknown_error("scheme preset", schemes, SCHEME_PRESETS)
        param_scheme = {"all-aq": "aq", "all-apq": "apq"}.get(schemes, "sq")
        act_scheme = {"all-sq": "sq", "all-aq": "aq", "sq-aq": "aq"}.get(schemes, "apq")

        def bits_of(layer: str) -> int:
            if bits == "all-8" or (bits == "mixed-4-8" and layer == "L8"):
                return 8
            return 4

        def spec(b: int, scheme: str) -> QuantSpec:
            return QuantSpec(b, scheme, threshold)

        layers = {
            name: LayerSpec(
                weight=spec(bits_of(name), param_scheme),
                bias=spec(bits_of(name), param_scheme),
                output=spec(bits_of(name), act_scheme),
            )
            for name in LAYERS
        }
        acts = {
            name: spec(EXTRA_ACTIVATION_BITS, "sq" if name in UNSIGNED_ACTIVATIONS else act_scheme)
            for name in ACTIVATIONS
        }
        return cls(layers, acts, name=f"{bits}/{schemes}", decision=decision or DecisionRule())

    @classmethod
    def parse(
        cls,
        text: str,
        schemes: str | None = None,
        threshold: float = 0.1,
        decision: DecisionRule | None = None,
    ) -> BitPlan:
        """A plan from a command-line value: ``"BITS/SCHEMES"``, ``BITS`` plus ``schemes``, or
        the path of a YAML file. ``decision`` replaces the plan's decision rule (a YAML file's
        own ``decision`` otherwise)."""
        bits, _, scheme_part = text.partition("/")
        if bits in BIT_PRESETS:
            return cls.from_presets(bits, scheme_part or schemes or "sq-apq", threshold, decision)
        path = Path(text)
        if path.is_file():
            plan = cls.from_yaml(path)
            return plan if decision is None else dataclasses.replace(plan, decision=decision)
        raise PlanError(
            f"plan {text!r} is neither a preset nor an existing YAML file; presets: "
            f"BITS or BITS/SCHEMES with BITS in {', '.join(BIT_PRESETS)} and SCHEMES in "
            f"{', '.join(SCHEME_PRESETS)}"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BitPlan:
        """A plan from the YAML structure (a ``base`` of presets plus overrides)."""
        if not isinstance(data, Mapping):
            raise PlanError("a plan must be a mapping with keys base, layers, activations, name")
        top = ("name", "description", "base", "layers", "activations", "decision")
        if "modules" in data:
            raise PlanError(
                "this is a module-name plan (key 'modules'), not a plan of the paper's "
                "Transformer: load it with ModulePlan.from_yaml and apply it with "
                "brevitas_apq.quantize(model, plan)"
            )
        for key in data:
            if key not in top:
                raise unknown_error("plan key", key, top)
        base = data.get("base") or {}
        base_keys = ("bits", "schemes", "threshold")
        for key in base:
            if key not in base_keys:
                raise unknown_error("base key", key, base_keys)
        decision = DecisionRule.from_dict(data.get("decision") or {})
        plan = cls.from_presets(
            base.get("bits", "all-8"),
            base.get("schemes", "all-sq"),
            base.get("threshold", 0.1),
            decision,
        )
        layers = dict(plan.layers)
        for name, roles in (data.get("layers") or {}).items():
            if name not in LAYERS:
                raise unknown_error("layer", name, LAYERS)
            if not isinstance(roles, Mapping):
                raise PlanError(f"layer {name!r}: expected a mapping of {', '.join(LAYER_ROLES)}")
            current = {role: getattr(layers[name], role) for role in LAYER_ROLES}
            for role, values in roles.items():
                if role not in LAYER_ROLES:
                    raise unknown_error(f"role of layer {name!r}", role, LAYER_ROLES)
                current[role] = _merge(layers[name].__getattribute__(role), values, name, role)
            layers[name] = LayerSpec(**current)
        acts = dict(plan.activations)
        for name, values in (data.get("activations") or {}).items():
            if name not in ACTIVATIONS:
                raise unknown_error("activation", name, ACTIVATIONS)
            acts[name] = _merge(acts[name], values, name)
        return cls(
            layers,
            acts,
            name=str(data.get("name", plan.name if "base" in data else "custom")),
            description=str(data.get("description", "")),
            decision=decision,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> BitPlan:
        return from_yaml_file(cls, path)

    # --- output ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The explicit form: every layer role and activation spelled out."""
        return {
            "name": self.name,
            "layers": {
                name: {role: getattr(spec, role).to_dict() for role in LAYER_ROLES}
                for name, spec in self.layers.items()
            },
            "activations": {name: spec.to_dict() for name, spec in self.activations.items()},
            "decision": self.decision.to_dict(),
        }

    def to_yaml(self, path: str | Path) -> Path:
        """Write the explicit form atomically."""
        return write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    # --- use ------------------------------------------------------------------------------------

    def with_layer_bits(self, layer: str, bits: int) -> BitPlan:
        """A copy with all three quantisers of ``layer`` at ``bits``."""
        if layer not in LAYERS:
            raise unknown_error("layer", layer, LAYERS)
        spec = self.layers[layer]
        new = LayerSpec(*(getattr(spec, r).replace(bits=bits) for r in LAYER_ROLES))
        return dataclasses.replace(
            self, layers={**self.layers, layer: new}, name=f"{self.name}+{layer}@{bits}"
        )

    def linear_kwargs(self, layer: str) -> dict[str, Any]:
        """Keyword arguments of ``brevitas.nn.QuantLinear`` for ``layer``'s quantisers."""
        if layer not in self.layers:
            raise unknown_error("layer", layer, LAYERS)
        spec = self.layers[layer]
        return {
            "weight_quant": SCHEME_QUANTIZERS[spec.weight.scheme].weight,
            "weight_bit_width": spec.weight.bits,
            "weight_symmetry_threshold": spec.weight.threshold,
            "weight_scaling_per_output_channel": spec.weight.per_channel,
            "bias_quant": SCHEME_QUANTIZERS[spec.bias.scheme].bias,
            "bias_bit_width": spec.bias.bits,
            "bias_symmetry_threshold": spec.bias.threshold,
            "output_quant": SCHEME_QUANTIZERS[spec.output.scheme].act,
            "output_bit_width": spec.output.bits,
            "output_symmetry_threshold": spec.output.threshold,
            **self.decision.kwargs("weight_"),
            **self.decision.kwargs("bias_"),
            **self.decision.kwargs("output_"),
            "return_quant_tensor": False,
        }

    def act_kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments of ``QuantIdentity`` / ``QuantReLU`` for activation ``name``."""
        if name not in self.activations:
            raise unknown_error("activation", name, ACTIVATIONS)
        spec = self.activations[name]
        quant = (
            UnsignedActQuant if name in UNSIGNED_ACTIVATIONS else SCHEME_QUANTIZERS[spec.scheme].act
        )
        return {
            "act_quant": quant,
            "bit_width": spec.bits,
            "symmetry_threshold": spec.threshold,
            **self.decision.kwargs(),
            "return_quant_tensor": False,
        }

    def to_module_plan(self) -> ModulePlan:
        """This plan keyed by the Transformer's module names (``L1``..``L8``, ``input_quant``,
        ``relu``, ... see ``ACTIVATION_MODULES``), for ``brevitas_apq.quantize``."""
        from brevitas_apq.module_plans import ModulePlan, ModuleSpec

        modules = {
            name: ModuleSpec(weight=spec.weight, bias=spec.bias, output=spec.output)
            for name, spec in self.layers.items()
        }
        for act, spec in self.activations.items():
            unsigned = act in UNSIGNED_ACTIVATIONS
            modules[ACTIVATION_MODULES[act]] = ModuleSpec(act=spec, unsigned=unsigned)
        return ModulePlan(
            modules, name=self.name, description=self.description, decision=self.decision
        )

    def summary(self) -> dict[str, str]:
        """``{object: "4b apq"}`` for display."""
        out = {}
        for name, spec in self.layers.items():
            for role in LAYER_ROLES:
                q = getattr(spec, role)
                out[f"{name}.{role}"] = f"{q.bits}b {q.scheme}"
        for name, q in self.activations.items():
            out[name] = f"{q.bits}b {'unsigned' if name in UNSIGNED_ACTIVATIONS else q.scheme}"
        return out


def from_yaml_file(cls, path: str | Path):
    """``cls.from_dict`` of a bounded plan file (:func:`load_plan_yaml`), errors naming it."""
    data = load_plan_yaml(path)
    try:
        return cls.from_dict(data or {})
    except PlanError as err:
        raise PlanError(f"plan file {str(path)!r}: {err}") from None


def _merge(spec: QuantSpec, values: Any, *where: str) -> QuantSpec:
    label = ".".join(where)
    if not isinstance(values, Mapping):
        raise PlanError(f"{label}: expected a mapping with bits, scheme, threshold, per_channel")
    keys = ("bits", "scheme", "threshold", "per_channel")
    for key in values:
        if key not in keys:
            raise unknown_error(f"key of {label}", key, keys)
    try:
        return spec.replace(**values)
    except PlanError as err:
        raise PlanError(f"{label}: {err}") from None


#: The Transformer's module for each of its extra activation quantisers
#: (``brevitas_apq.models.TimeSeriesTransformer``), used by ``BitPlan.to_module_plan``.
ACTIVATION_MODULES = {
    "input": "input_quant",
    "pos": "pos_quant",
    "scores": "scores_quant",
    "softmax": "softmax_quant",
    "context": "context_quant",
    "res1": "res1_quant",
    "norm1": "norm1_quant",
    "relu": "relu",
    "res2": "res2_quant",
    "norm2": "norm2_quant",
    "pool": "pool_quant",
}


__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_MODULES",
    "BIT_PRESETS",
    "LAYERS",
    "SCHEMES",
    "SCHEME_PRESETS",
    "UNSIGNED_ACTIVATIONS",
    "BitPlan",
    "DecisionRule",
    "LayerSpec",
    "PlanError",
    "QuantSpec",
    "load_plan_yaml",
]
