"""brevitas-apq: adaptive (SQ / AQ / APQ) quantisation-aware training for tiny time-series
Transformers, exported to QONNX and built into FINN dataflow accelerators.

Based on Ling et al., "A Study of Quantisation-aware Training on Time Series Transformer Models
for Resource-constrained FPGAs" (arXiv 2310.02654).
"""

__version__ = "0.1.0"
