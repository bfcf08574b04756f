"""The step lists of the estimate-only and full FINN flows.

Every step is a named function ``step_x(model, cfg) -> model`` (FINN names intermediate
models and timings after ``__name__``); steps that need data from the caller come from
factories that return named inner functions. finn-plus's own steps are used by name
(strings resolved by ``build_dataflow_cfg``) wherever they do the job unchanged. The steps
live by concept:

* :mod:`finn_flow.streamlining` - convolutions, zero points and streamlining, before the
  hardware conversion;
* :mod:`finn_flow.hw_conversion` - conversion to FINN HW layers, the mapping check, HLS
  preference and bit-width minimisation (every ``step_minimize_bit_width*`` of finn-plus is
  followed, under its own name, by this project's corrections:
  :func:`~finn_flow.hw_conversion.minimize_then_widen`);
* :mod:`finn_flow.emulation` - the Python emulation of the dataflow graph;
* :mod:`finn_flow.folding` - the folding (fit to a budget, target FPS, JSON config);
* :mod:`finn_flow.reports` - the analytical estimates and datapath report.

Import this module inside :func:`finn_flow.no_vivado.finn_session` (:func:`build_steps`
imports ``finn.builder``).

Usage::

    steps = build_steps(full=False, record={}, emulation=(inputs, expected, 1e-4))
    print(step_names(steps))
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper

from finn_flow.emulation import make_step_emulate
from finn_flow.folding import make_step_set_folding
from finn_flow.hw_conversion import (
    make_step_prefer_hls,
    minimize_then_widen,
    step_check_hw_mapping,
    step_convert_to_hw_transformer,
)
from finn_flow.reports import step_attention_resource_estimate
from finn_flow.streamlining import (
    step_lower_conv2d,
    step_lower_zero_points,
    step_prepare_convs,
    step_streamline_transformer,
)

__all__ = ["FULL_FLOW_BACKEND", "Step", "build_steps", "guard_step", "step_names"]

Step = Callable[[ModelWrapper, Any], ModelWrapper]

#: steps up to the dataflow partition (QONNX import, streamlining, HW conversion)
_FRONT = [
    step_prepare_convs,
    step_lower_zero_points,
    "step_qonnx_to_finn",
    "step_tidy_up",
    step_lower_conv2d,
    step_streamline_transformer,
    step_convert_to_hw_transformer,
    step_check_hw_mapping,
    "step_minimize_bit_width_initial",
    "step_create_dataflow_partition",
]

#: full-flow steps after the estimates (need Vivado/Vitis HLS)
FULL_FLOW_BACKEND = [
    "step_generate_hardware",  # HLS/RTL codegen + IP generation + FIFO sizing
    "step_create_stitched_ip",
    "step_measure_rtlsim_performance",
    "step_out_of_context_synthesis",
    "step_prepare_synthesis",
    "step_synthesize_bitfile",
    "step_make_driver",
    "step_deployment_package",
]


def guard_step(step: Step, record: dict) -> Step:
    """Wrap a step so the first exception is recorded (build_dataflow_cfg swallows it)."""

    @functools.wraps(step)
    def guarded_step(model: ModelWrapper, cfg) -> ModelWrapper:
        try:
            return step(model, cfg)
        except BaseException as exc:
            record.setdefault("error", (step.__name__, exc))
            raise

    return guarded_step


def build_steps(
    full: bool,
    record: dict,
    emulation: tuple[np.ndarray, np.ndarray, float] | None = None,
    prefer_hls: bool = False,
) -> list[Step]:
    """The step list: estimate-only (``full=False``) or the full Vivado flow.

    Strings are resolved to finn-plus's registered steps; every step is wrapped by
    :func:`guard_step` (same ``__name__``). ``prefer_hls`` adds
    :func:`~finn_flow.hw_conversion.make_step_prefer_hls`.
    """
    from finn.builder.build_dataflow_steps import build_dataflow_step_lookup

    steps: list = list(_FRONT)
    if emulation is not None:
        steps.append(make_step_emulate(*emulation, record))
    if prefer_hls:
        steps.append(make_step_prefer_hls())
    steps += [
        "step_specialize_layers",
        make_step_set_folding(record),
        "step_minimize_bit_width",
        "step_generate_estimate_reports",
        step_attention_resource_estimate,
    ]
    steps += FULL_FLOW_BACKEND if full else ["step_hw_codegen"]
    resolved = [build_dataflow_step_lookup[s] if isinstance(s, str) else s for s in steps]
    resolved = [
        minimize_then_widen(s) if s.__name__.startswith("step_minimize_bit_width") else s
        for s in resolved
    ]
    return [guard_step(s, record) for s in resolved]


def step_names(steps: list[Step]) -> list[str]:
    """The steps' names (what FINN calls the intermediate models and timings)."""
    return [s.__name__ for s in steps]
