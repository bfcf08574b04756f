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

**Any model: plans keyed by module name.** :class:`ModulePlan` maps module names or glob
patterns of any model to the quantisers of each role (:class:`ModuleSpec`: ``weight``, ``bias``,
``input``, ``output``, ``act``), the most specific pattern winning an overlap; it is applied by
``brevitas_apq.quantize(model, plan)``. ``BitPlan.to_module_plan()`` is the same plan by the
Transformer's module names. Plan files of both kinds are bounded before they are read
(``load_plan_yaml``: size, nesting, YAML aliases)::

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


def _unknown(kind: str, got: Any, valid: tuple[str, ...] | list[str]) -> PlanError:
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
                raise _unknown("decision key", key, keys)
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
                raise _unknown("layer", key, LAYERS)
        for key in acts:
            if key not in ACTIVATIONS:
                raise _unknown("activation", key, ACTIVATIONS)
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
            raise _unknown("bit preset", bits, BIT_PRESETS)
        if schemes not in SCHEME_PRESETS:
            raise _unknown("scheme preset", schemes, SCHEME_PRESETS)
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
                raise _unknown("plan key", key, top)
        base = data.get("base") or {}
        base_keys = ("bits", "schemes", "threshold")
        for key in base:
            if key not in base_keys:
                raise _unknown("base key", key, base_keys)
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
                raise _unknown("layer", name, LAYERS)
            if not isinstance(roles, Mapping):
                raise PlanError(f"layer {name!r}: expected a mapping of {', '.join(LAYER_ROLES)}")
            current = {role: getattr(layers[name], role) for role in LAYER_ROLES}
            for role, values in roles.items():
                if role not in LAYER_ROLES:
                    raise _unknown(f"role of layer {name!r}", role, LAYER_ROLES)
                current[role] = _merge(layers[name].__getattribute__(role), values, name, role)
            layers[name] = LayerSpec(**current)
        acts = dict(plan.activations)
        for name, values in (data.get("activations") or {}).items():
            if name not in ACTIVATIONS:
                raise _unknown("activation", name, ACTIVATIONS)
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
        return _from_yaml_file(cls, path)

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
            raise _unknown("layer", layer, LAYERS)
        spec = self.layers[layer]
        new = LayerSpec(*(getattr(spec, r).replace(bits=bits) for r in LAYER_ROLES))
        return dataclasses.replace(
            self, layers={**self.layers, layer: new}, name=f"{self.name}+{layer}@{bits}"
        )

    def linear_kwargs(self, layer: str) -> dict[str, Any]:
        """Keyword arguments of ``brevitas.nn.QuantLinear`` for ``layer``'s quantisers."""
        if layer not in self.layers:
            raise _unknown("layer", layer, LAYERS)
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
            raise _unknown("activation", name, ACTIVATIONS)
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


def _from_yaml_file(cls, path: str | Path):
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
            raise _unknown(f"key of {label}", key, keys)
    try:
        return spec.replace(**values)
    except PlanError as err:
        raise PlanError(f"{label}: {err}") from None


# --- plans keyed by module name, for any model --------------------------------------------------

#: The roles a module-name plan can give, by kind of module: a compute layer (``Linear``,
#: ``Conv1d``, ``Conv2d``, float or ``brevitas.nn``) has weight, bias, input and output
#: quantisers; an activation (``ReLU``, ``Identity`` and Brevitas's ``QuantReLU``,
#: ``QuantIdentity``) has one, ``act``.
COMPUTE_ROLES = ("weight", "bias", "input", "output")
ACT_ROLES = ("act",)
MODULE_ROLES = COMPUTE_ROLES + ACT_ROLES
SPEC_KEYS = tuple(f.name for f in dataclasses.fields(QuantSpec))

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
                raise _unknown(f"role of {where}", key, (*MODULE_ROLES, "unsigned"))
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
            raise _unknown(f"key of {where}", key, SPEC_KEYS)
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
                raise _unknown("plan key", key, top)
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
        return _from_yaml_file(cls, path)

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
    "ACTIVATIONS",
    "ACTIVATION_MODULES",
    "BIT_PRESETS",
    "LAYERS",
    "MODULE_ROLES",
    "SCHEMES",
    "SCHEME_PRESETS",
    "UNSIGNED_ACTIVATIONS",
    "BitPlan",
    "DecisionRule",
    "LayerSpec",
    "ModulePlan",
    "ModuleSpec",
    "PlanError",
    "QuantSpec",
    "as_module_plan",
    "load_plan_yaml",
]
