"""brevitas-apq: adaptive (SQ / AQ / APQ) quantisation-aware training for tiny time-series
Transformers, exported to QONNX and built into FINN dataflow accelerators.

Based on Ling et al., "A Study of Quantisation-aware Training on Time Series Transformer Models
for Resource-constrained FPGAs" (arXiv 2310.02654).

``brevitas_apq.quantize(model, plan)`` quantises any model with a module-name plan (see
``brevitas_apq.quantize`` and ``brevitas_apq.module_plans.ModulePlan``).
"""

from brevitas_apq.quantize import quantize

__version__ = "0.1.0"

__all__ = ["__version__", "quantize"]
