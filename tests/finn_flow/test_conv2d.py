"""2D convolutions (QuantConv2d, NCHW) through FINN's own lowering (finn_flow.conv2d), exact.

Small CNNs written with this project's quantisers (SQ, AQ, APQ from ``brevitas_apq.quant``),
exported with ``brevitas_apq.export``: built by the estimate-only flow and emulated in FINN's
Python execution against QONNX (quantised outputs: max abs difference 0), on random inputs and
on inputs exactly on the input quantiser's half steps, and simulated in C++ (cppsim).
"""

from __future__ import annotations

import json

import brevitas.nn as qnn
import finn_flow_models as models
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

pytest.importorskip("finn")

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.extract_conv_bias import ExtractBiasFromConv
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import qonnx_make_model
from typer.testing import CliRunner

from brevitas_apq.cli import app
from brevitas_apq.export import export_qonnx_model
from brevitas_apq.quant import (
    APQActQuant,
    APQWeightQuant,
    AQActQuant,
    AQWeightQuant,
    SQActQuant,
    SQBiasQuant,
    SQWeightQuant,
    UnsignedActQuant,
    mark_batch,
)
from finn_flow.build import build
from finn_flow.conv2d import BiasQuantParamsAsVectors, conv_problems
from finn_flow.errors import FinnFlowError

pytestmark = pytest.mark.finn


class Cnn(nn.Module):
    """QuantIdentity -> QuantConv2d(k3, pad 1) [-> BatchNorm2d] -> QuantReLU [-> MaxPool2d(2)]
    -> QuantConv2d(k3, stride 2, pad 0 [, dilation, groups]) -> QuantReLU -> flatten ->
    QuantLinear with an output quantiser (so emulation can be compared exactly).

    ``zero_points``: APQ input quantiser (decides AQ on one-sided data), AQ per-channel
    weights in the first conv, APQ weights in the second, an AQ quantiser on its output and on
    the head's output; else SQ everywhere. ReLU outputs are unsigned (zero point 0).
    """

    def __init__(
        self,
        in_ch=1,
        size=12,
        zero_points=False,
        pool=False,
        bn=False,
        dilation=1,
        groups=1,
        mid=4,
        out_ch=6,
    ):
        super().__init__()
        act = AQActQuant if zero_points else SQActQuant
        self.inp = qnn.QuantIdentity(
            act_quant=APQActQuant if zero_points else SQActQuant, return_quant_tensor=True
        )
        self.c1 = qnn.QuantConv2d(
            in_ch,
            mid,
            3,
            padding=1,
            weight_quant=AQWeightQuant if zero_points else SQWeightQuant,
            weight_bit_width=4,
            weight_scaling_per_output_channel=zero_points,
            bias_quant=SQBiasQuant,
        )
        self.bn = nn.BatchNorm2d(mid) if bn else nn.Identity()
        self.r1 = qnn.QuantReLU(act_quant=UnsignedActQuant, bit_width=4, return_quant_tensor=True)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.c2 = qnn.QuantConv2d(
            mid,
            out_ch,
            3,
            stride=2,
            dilation=dilation,
            groups=groups,
            weight_quant=APQWeightQuant if zero_points else SQWeightQuant,
            weight_bit_width=4,
            bias_quant=SQBiasQuant,
            output_quant=act if zero_points else None,
            return_quant_tensor=False,
        )
        self.r2 = qnn.QuantReLU(act_quant=UnsignedActQuant, bit_width=4, return_quant_tensor=True)
        s = size // 2 if pool else size
        s = (s - 1 - 2 * dilation) // 2 + 1
        self.fc = qnn.QuantLinear(
            out_ch * s * s,
            2,
            bias=True,
            weight_quant=APQWeightQuant if zero_points else SQWeightQuant,
            weight_bit_width=4,
            bias_quant=SQBiasQuant,
            output_quant=act,
        )

    def forward(self, x):
        x = self.pool(self.r1(self.bn(self.c1(self.inp(x)))))
        return self.fc(self.r2(self.c2(x)).flatten(1))


NETS = {
    # name: (input shape, Cnn keywords)
    "sq": ((1, 1, 12, 12), {}),
    "zp_pool_bn_dilated": (
        (1, 3, 16, 16),
        {"in_ch": 3, "size": 16, "zero_points": True, "pool": True, "bn": True, "dilation": 2},
    ),
    "zp_depthwise": ((1, 1, 12, 12), {"zero_points": True, "groups": 4, "out_ch": 4}),
}


def _data(shape, n, seed, one_sided):
    """``n`` samples: uniform in [0, 1] (one-sided, like min-max-scaled data) or normal."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.rand if one_sided else torch.randn
    return sample(n, *shape[1:], generator=g)


def _export(tmp_path, name):
    """Calibrate (APQ decides once per mini-batch) and export ``NETS[name]``; the exported
    model, its input shape and inputs to emulate (min-max-scaled-like data in [0, 1] for the
    zero-point nets, whose input quantiser then decides AQ)."""
    shape, kw = NETS[name]
    torch.manual_seed(0)
    model = Cnn(**kw)
    one_sided = kw.get("zero_points", False)
    model.train()
    with torch.no_grad():
        for step in range(6):
            model(_data(shape, 8, step, one_sided))
            mark_batch()
    model.eval()
    path = export_qonnx_model(model, torch.zeros(shape), tmp_path / f"{name}.onnx")
    return path, shape, _data(shape, 4, 99, one_sided).numpy()


def _zero_points(path) -> dict[str, int]:
    """Quant nodes with a non-zero zero point: {"weights": n, "activations": n}."""
    model = ModelWrapper(str(path))
    out = {"weights": 0, "activations": 0}
    for n in model.graph.node:
        if n.op_type == "Quant" and np.any(model.get_initializer(n.input[2]) != 0):
            const = model.get_initializer(n.input[0]) is not None
            out["weights" if const else "activations"] += 1
    return out


def _hw_ops(out_dir) -> list[str]:
    model = ModelWrapper(
        str(out_dir / "intermediate_models" / "step_convert_to_hw_transformer.onnx")
    )
    return [n.op_type for n in model.graph.node]


# ------------------------------------------------------------------------- graph rewrites
def _bias_conv_graph(scale_shape):
    """x (1,2,5,5) -> Conv(W, Quant(b; s, z=0, 8 bit)), scale and zero point of ``scale_shape``."""
    rng = np.random.default_rng(0)
    inits = {
        "W": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float32),
        "s": np.full(scale_shape, 0.05, np.float32),
        "z": np.zeros(scale_shape, np.float32),
        "bw": np.asarray(8.0, np.float32),
    }
    nodes = [
        helper.make_node(
            "Quant", ["b", "s", "z", "bw"], ["bq"], domain="qonnx.custom_op.general",
            signed=1, narrow=1, rounding_mode="ROUND", name="bias_quant",
        ),
        helper.make_node("Conv", ["x", "W", "bq"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[1, 1], group=1, name="conv"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "bias_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
        initializer=[
            helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()) for k, v in inits.items()
        ],
    )
    return ModelWrapper(qonnx_make_model(graph)).transform(InferShapes())


def test_bias_params_as_vectors_lets_qonnx_extract_the_bias_exactly():
    model = _bias_conv_graph(())
    with pytest.raises(ValueError, match="reshape"):  # qonnx 1.0.0 on Brevitas's 0-d scale
        model.transform(ExtractBiasFromConv())
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    ref = execute_onnx(model, {"x": x})["y"]
    fixed, changed = BiasQuantParamsAsVectors().apply(model)
    assert changed
    assert BiasQuantParamsAsVectors().apply(fixed)[1] is False  # nothing 0-d is left
    extracted = fixed.transform(ExtractBiasFromConv())
    assert [n.op_type for n in extracted.graph.node] == ["Quant", "Conv", "Add"]
    np.testing.assert_array_equal(execute_onnx(extracted, {"x": x})["y"], ref)
    vector = _bias_conv_graph((1,))
    assert BiasQuantParamsAsVectors().apply(vector)[1] is False


def _conv_node_graph(ishape, wshape, oshape, group=1, op="Conv", weight_input=False):
    w = np.zeros(wshape, np.float32)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ishape)]
    inits = []
    if weight_input:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, wshape))
    else:
        inits.append(helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()))
    k = list(wshape[2:])
    node = helper.make_node(op, ["x", "W"], ["y"], kernel_shape=k, strides=[1] * len(k),
                            pads=[0] * 2 * len(k), group=group, name="the_conv")  # fmt: skip
    graph = helper.make_graph(
        [node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, oshape)],
        initializer=inits,
    )  # fmt: skip
    return ModelWrapper(qonnx_make_model(graph))


@pytest.mark.parametrize(
    "args,needles",
    [
        (((1, 4, 6, 6), (6, 2, 3, 3), (1, 6, 4, 4), 2), ["'the_conv'", "groups=2", "groups=1"]),
        (((1, 4, 6, 6), (8, 1, 3, 3), (1, 8, 4, 4), 4), ["'the_conv'", "groups=4", "depthwise"]),
        (((2, 4, 6, 6), (6, 4, 3, 3), (2, 6, 4, 4), 1), ["'the_conv'", "batch 2"]),
        (((1, 4, 6), (6, 2, 3), (1, 6, 4), 2), ["'the_conv'", "1D", "groups=1"]),
        (((1, 2, 4, 4, 4), (3, 2, 3, 3, 3), (1, 3, 2, 2, 2), 1), ["'the_conv'", "2D"]),
    ],
)
def test_conv_problems_name_node_and_fix(args, needles):
    problems = conv_problems(_conv_node_graph(*args))
    assert len(problems) == 1
    for needle in needles:
        assert needle in problems[0]


def test_conv_problems_dynamic_weights_and_transposed():
    dyn = _conv_node_graph((1, 2, 6, 6), (3, 2, 3, 3), (1, 3, 4, 4), weight_input=True)
    assert "not a constant" in conv_problems(dyn)[0]
    tr = _conv_node_graph((1, 2, 4, 4), (2, 3, 3, 3), (1, 3, 6, 6), op="ConvTranspose")
    assert "transposed" in conv_problems(tr)[0]
    ok = _conv_node_graph((1, 4, 6, 6), (4, 1, 3, 3), (1, 4, 4, 4), group=4)  # depthwise
    assert conv_problems(ok) == []


# -------------------------------------------------------------------------- FINN builds
@pytest.mark.parametrize("name", list(NETS))
def test_conv2d_builds_and_emulates_exactly(tmp_path, name):
    path, shape, x = _export(tmp_path, name)
    zps = _zero_points(path)
    if NETS[name][1].get("zero_points"):
        assert zps["weights"] > 0 and zps["activations"] > 0, zps
    else:
        assert zps == {"weights": 0, "activations": 0}
    out = tmp_path / "out"
    summary = build(path, out, emulation_inputs=x, tolerance=0.0, quiet=True)
    assert summary["emulation"]["passed"] and summary["emulation"]["max_abs_diff"] == 0.0
    # only the input's NCHW -> NHWC change and the output scaling stay in software
    outside = [n["op"] for n in summary["nodes_outside_dataflow_partition"]]
    assert outside.count("Transpose") == 1 and set(outside) <= {"Transpose", "Mul", "Add"}
    ops = _hw_ops(out)
    assert ops.count("ConvolutionInputGenerator") == 2 + NETS[name][1].get("pool", False)
    assert "FMPadding" in ops  # the first conv's padding
    assert ("VVAU" in ops) == (NETS[name][1].get("groups", 1) > 1)
    assert ("Pool" in ops) == NETS[name][1].get("pool", False)
    assert not {"Conv", "Im2Col", "MaxPool", "MatMul"} & set(ops)


def test_cli_build_emulates_half_step_inputs_exactly(tmp_path):
    """`apq build MODEL.onnx --inputs X.npy` of a zero-point CNN whose inputs all lie exactly on
    the input quantiser's half steps ``(k + 1/2 - z)·s``, where float32 thresholds put inputs
    on the wrong level unless they are correctly rounded (finn_flow.exact_thresholds)."""
    path, shape, _ = _export(tmp_path, "zp_depthwise")
    model = ModelWrapper(str(path))
    quant = next(
        n
        for n in model.graph.node
        if n.op_type == "Quant" and n.input[0] == model.graph.input[0].name
    )
    scale = float(model.get_initializer(quant.input[1]))
    zeropt = float(model.get_initializer(quant.input[2]))
    assert zeropt != 0
    k = np.random.default_rng(3).integers(-128, 127, size=(4, *shape[1:])).astype(np.float64)
    x = ((k + 0.5 - zeropt) * scale).astype(np.float32)
    ties = x / np.float32(scale) + np.float32(zeropt) == k + 0.5  # as QONNX computes, float32
    assert ties.mean() > 0.5
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    args = ["build", str(path), "--inputs", str(tmp_path / "x.npy"), "--windows", "4",
            "--tolerance", "0", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    emulation = json.loads((out / "summary.json").read_text())["emulation"]
    assert emulation["n_inputs"] == 4 and emulation["max_abs_diff"] == 0.0


def test_cli_build_refuses_grouped_conv2d_naming_the_node(tmp_path):
    """groups=2 (not depthwise): a one-line error naming the node and what to change."""
    torch.manual_seed(0)
    model = Cnn(groups=2)
    models.calibrate(model, (4, 1, 12, 12))
    path = export_qonnx_model(model, torch.zeros(1, 1, 12, 12), tmp_path / "grouped.onnx")
    with pytest.raises(FinnFlowError, match=r"Conv 'Conv_1': grouped convolution \(groups=2"):
        build(path, tmp_path / "out", quiet=True)
    result = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "groups=2" in text and "use groups=1" in text


def test_conv2d_cppsim_is_bit_exact(tmp_path, hls_dir):
    """Every HLS kernel of the depthwise zero-point CNN (--prefer-hls: thresholds, MVAU, VVAU)
    compiled with g++ and run on the emulated windows, the padding in Verilator: equal to FINN's
    Python execution, node by node and as a whole, and to QONNX. The sliding-window generator
    exists only as RTL that Verilator cannot build here (checked in Python). Pooling nets are
    not simulated: the finn-hlslib in ../shared/hls predates the ``Pool_batch`` signature
    finn-plus 1.6.1 generates for ``Pool_hls``."""
    path, shape, x = _export(tmp_path, "zp_depthwise")
    out = tmp_path / "out"
    summary = build(
        path, out, emulation_inputs=x[:2], tolerance=0.0, quiet=True, cppsim=2,
        hls_dir=hls_dir, prefer_hls=True,
    )  # fmt: skip
    sim = summary["cppsim"]
    assert sim["passed"] and sim["windows"] == 2
    assert sim["max_abs_diff_vs_python"] == 0.0 and sim["max_abs_diff_vs_qonnx"] == 0.0
    levels = {e["op_type"]: e["level"] for e in summary["verification"]}
    assert {"Thresholding_hls", "MVAU_hls", "VVAU_hls"} <= set(levels)
    assert all(level == "cppsim" for op, level in levels.items() if op.endswith("_hls"))
    assert levels["FMPadding_rtl"] == "rtl-verilator"  # no HLS variant; Verilator builds it
    assert levels["ConvolutionInputGenerator_rtl"] == "python"
    assert all(e["max_abs_diff"] == 0.0 for e in summary["verification"])
