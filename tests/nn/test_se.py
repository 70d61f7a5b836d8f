"""Squeeze-excitation as one step (nn/nn-opt.c fuse_squeeze_excitation, nn/nn-dnnl.c se_run):
x * Sigmoid(Conv(SiLU(Conv(GlobalAveragePool(x))))) as torchvision's EfficientNet exports it.
Checked against numpy on oneDNN's blocked layout (the tensor comes from a convolution; 24
channels, and 20 so padding lanes exist), on plain input, at batch 1 and 3; `xregctl nn-info`'s
step count shows whether the fusion applied, and a pooled tensor with a second reader keeps the
four steps. Needs Debian's python3-onnx (run with /usr/bin/python3)."""
import re
import subprocess

import numpy as np
import pytest

from nnlib import xregctl

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HW = 9


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def se_model(path, c, cr, after_conv, extra_output=False):
    rng = np.random.default_rng(c * 10 + cr)
    w = {
        "we": rng.standard_normal((c, 6, 1, 1)).astype(np.float32) * 0.4,
        "w1": rng.standard_normal((cr, c, 1, 1)).astype(np.float32) * 0.4,
        "b1": rng.standard_normal(cr).astype(np.float32) * 0.2,
        "w2": rng.standard_normal((c, cr, 1, 1)).astype(np.float32) * 0.4,
        "b2": rng.standard_normal(c).astype(np.float32) * 0.2,
        "wp": rng.standard_normal((4, c, 1, 1)).astype(np.float32) * 0.4,
    }
    nodes = []
    if after_conv:  # x blocked: produced by a convolution, consumed by another
        nodes.append(helper.make_node("Conv", ["in", "we"], ["x"]))
    nodes += [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Conv", ["p", "w1", "b1"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["hs"]),
        helper.make_node("Mul", ["h", "hs"], ["ha"]),
        helper.make_node("Conv", ["ha", "w2", "b2"], ["g"]),
        helper.make_node("Sigmoid", ["g"], ["s"]),
        helper.make_node("Mul", ["s", "x"], ["se"]),
    ]
    if after_conv:
        nodes.append(helper.make_node("Conv", ["se", "wp"], ["y"]))
    out = "y" if after_conv else "se"
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    cin = 6 if after_conv else c
    g = helper.make_graph(
        nodes, "se", [helper.make_tensor_value_info("in" if after_conv else "x", TensorProto.FLOAT,
                                                    ["batch", cin, HW, HW])],
        outputs, [numpy_helper.from_array(v, k) for k, v in w.items()
                  if after_conv or k not in ("we", "wp")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(m, path)
    return w


def reference(w, inp, after_conv):
    x = np.einsum("oi,nihw->nohw", w["we"][:, :, 0, 0], inp) if after_conv else inp
    p = x.mean(axis=(2, 3))
    h = p @ w["w1"][:, :, 0, 0].T + w["b1"]
    s = sigmoid((h * sigmoid(h)) @ w["w2"][:, :, 0, 0].T + w["b2"])
    se = x * s[:, :, None, None]
    return np.einsum("oi,nihw->nohw", w["wp"][:, :, 0, 0], se) if after_conv else se


def steps(model):
    out = subprocess.run([xregctl(), "nn-info", str(model)], capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(r"(\d+) steps after folding and fusion", out).group(1))


@pytest.mark.parametrize("c,cr,after_conv,batch", [
    (24, 6, True, 1), (24, 6, True, 3), (20, 5, True, 1), (20, 5, True, 3),
    (20, 5, False, 1), (20, 5, False, 2),
    # enough work for both threads: the products split in rows of 16, the last one partial,
    # and 204 channels leave 4 padding lanes in the last 8-channel block
    (204, 51, True, 3)])
def test_squeeze_excitation_matches_numpy(tmp_path, c, cr, after_conv, batch):
    model = tmp_path / "se.onnx"
    w = se_model(model, c, cr, after_conv)
    cin = 6 if after_conv else c
    x = np.random.default_rng(batch).standard_normal((batch, cin, HW, HW)).astype(np.float32)
    want = reference(w, x.astype(np.float64), after_conv)
    inp, out = tmp_path / "x.f32", tmp_path / "y.f32"
    x.tofile(inp)
    subprocess.run([xregctl(), "nn-run", str(model), "--input", str(inp), "--output", str(out),
                    "--threads", "2"], capture_output=True, text=True, check=True)
    got = np.fromfile(out, "<f4").reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    # pool, two 1x1 convolutions and the Mul are one step (plus the two outer convolutions)
    assert steps(model) == (3 if after_conv else 1)


def test_pooled_tensor_with_a_second_reader_keeps_four_steps(tmp_path):
    model = tmp_path / "se2.onnx"
    w = se_model(model, 24, 6, True, extra_output=True)
    x = np.random.default_rng(4).standard_normal((1, 6, HW, HW)).astype(np.float32)
    want = reference(w, x.astype(np.float64), True)
    inp, out = tmp_path / "x.f32", tmp_path / "y.f32"
    x.tofile(inp)
    subprocess.run([xregctl(), "nn-run", str(model), "--input", str(inp), "--output", str(out)],
                   capture_output=True, text=True, check=True)
    got = np.fromfile(out, "<f4")[:want.size].reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    assert steps(model) == 6
