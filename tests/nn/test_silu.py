"""Conv + SiLU (x * Sigmoid(x)): large outputs apply the SiLU in nn/'s own pass after the
convolution (NN_SILU_PASS_MIN_ELEMS), small ones keep oneDNN's swish post-op. Both must give
numpy's result, and DNNL_VERBOSE shows which form ran, so the pass cannot silently stop
applying. Needs Debian's python3-onnx (run with /usr/bin/python3)."""

from __future__ import annotations

import os
import pathlib
import subprocess

import numpy as np
import pytest

from nnlib import xregctl

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# nn/nn-internal.h
SILU_PASS_MIN_ELEMS = 16384


def conv_silu_model(path: pathlib.Path, c_in: int, c_out: int, hw: int, k: int, group: int,
                    rng: np.random.Generator, second_reader: bool = False) -> dict:
    """Conv(k x k, pad k//2) -> Sigmoid, Mul: the SiLU PyTorch exports. With second_reader the
    convolution's output is also a graph output, so the activation cannot be fused at all."""
    w = (rng.standard_normal((c_out, c_in // group, k, k)) * 0.5).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    p = k // 2
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], pads=[p] * 4,
                         group=group),
        helper.make_node("Sigmoid", ["y"], ["s"]),
        helper.make_node("Mul", ["y", "s"], ["z"]),
    ]
    outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, c_out, hw, hw])]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c_out, hw, hw]))
    graph = helper.make_graph(
        nodes, "conv_silu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, hw, hw])], outputs,
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"w": w, "b": b, "k": k, "group": group}


def tolerance(x: np.ndarray, p: dict, group: int, want: np.ndarray) -> np.ndarray:
    """Per element: float32 accumulation of the convolution (a few ulps of the sum of the
    terms' magnitudes; SiLU's slope is at most 1.1) plus a few ulps of the result."""
    s = conv_ref(np.abs(x), np.abs(p["w"]), np.abs(p["b"]), group).ravel()
    return 1e-6 * s + 4e-7 * np.abs(want) + 1e-30


def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, group: int) -> np.ndarray:
    """Direct convolution, stride 1, 'same' padding, in float64."""
    _, c_in, h, wd = x.shape
    c_out, cig, k, _ = w.shape
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((1, c_out, h, wd))
    cog = c_out // group
    for o in range(c_out):
        g = o // cog
        for i in range(cig):
            for dy in range(k):
                for dx in range(k):
                    y[0, o] += w[o, i, dy, dx] * xp[0, g * cig + i, dy:dy + h, dx:dx + wd]
        y[0, o] += b[o]
    return y


def run(model: pathlib.Path, x: np.ndarray, tmp: pathlib.Path) -> tuple[np.ndarray, str]:
    inp, out = tmp / "in.f32", tmp / "out.f32"
    x.astype("<f4").tofile(inp)
    env = dict(os.environ, DNNL_VERBOSE="1", OMP_NUM_THREADS="2")
    r = subprocess.run([xregctl(), "nn-run", str(model), "--input", str(inp), "--output",
                        str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, f"nn-run exit {r.returncode}: {r.stderr[-2000:]}"
    return np.fromfile(out, dtype="<f4"), r.stdout + r.stderr


def conv_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines()
            if ln.startswith("onednn_verbose,exec,cpu,convolution")]


# (c_in, c_out, hw, k, group): 1x1 expand with channels that are not a multiple of the
# 8-channel block (padding lanes), a depthwise 5x5, an odd spatial size so the element count
# is not a multiple of the vector width, and one below the threshold.
CASES = [
    pytest.param(5, 20, 29, 1, 1, True, id="1x1-c20-29x29-pass"),
    pytest.param(24, 24, 27, 5, 24, True, id="dw5-c24-27x27-pass"),
    pytest.param(8, 16, 7, 3, 1, False, id="3x3-c16-7x7-postop"),
]


@pytest.mark.parametrize("c_in,c_out,hw,k,group,pass_expected", CASES)
def test_conv_silu(tmp_path, c_in, c_out, hw, k, group, pass_expected):
    assert (c_out * hw * hw >= SILU_PASS_MIN_ELEMS) == pass_expected, "case no longer tests that"
    rng = np.random.default_rng(c_out * 1000 + hw)
    model = tmp_path / "m.onnx"
    p = conv_silu_model(model, c_in, c_out, hw, k, group, rng)
    # inputs reaching far into both tails of the sigmoid (|y| up to ~100)
    x = (rng.standard_normal((1, c_in, hw, hw)) * 8).astype(np.float32)
    got, log = run(model, x, tmp_path)
    y = conv_ref(x, p["w"], p["b"], group)
    want = (y / (1.0 + np.exp(-y))).ravel()
    assert got.size == want.size
    err = np.abs(got - want)
    tol = tolerance(x, p, group, want)
    i = int(np.argmax(err / tol))
    assert err[i] <= tol[i], f"|diff| {err[i]:.3g} > {tol[i]:.3g} at {i} (want {want[i]:.6g})"
    lines = conv_lines(log)
    assert len(lines) == 1, "expected one convolution step, got:\n" + "\n".join(lines)
    has_swish = "eltwise_swish" in lines[0]
    if pass_expected:
        assert not has_swish, f"SiLU pass not applied (oneDNN swish still fused): {lines[0]}"
    else:
        assert has_swish, f"small output should keep oneDNN's swish post-op: {lines[0]}"


def test_conv_silu_second_reader(tmp_path):
    """The convolution's output is a graph output too: no fusion, the SiLU runs as its own
    Sigmoid and Mul steps, and both outputs are right."""
    rng = np.random.default_rng(7)
    model = tmp_path / "m.onnx"
    p = conv_silu_model(model, 4, 24, 31, 1, 1, rng, second_reader=True)
    x = (rng.standard_normal((1, 4, 31, 31)) * 8).astype(np.float32)
    got, log = run(model, x, tmp_path)
    y = conv_ref(x, p["w"], p["b"], 1)
    silu = (y / (1.0 + np.exp(-y))).ravel()
    want = np.concatenate([silu, y.ravel()])
    assert got.size == want.size
    tol = np.concatenate([tolerance(x, p, 1, silu), tolerance(x, p, 1, y.ravel())])
    assert np.all(np.abs(got - want) <= tol), float(np.max(np.abs(got - want) / tol))
    lines = conv_lines(log)
    assert len(lines) == 1 and "eltwise" not in lines[0], lines


def test_conv_silu_blocked_chain(tmp_path):
    """Conv -> SiLU -> Conv: the SiLU'd tensor stays in oneDNN's blocked layout between the two
    convolutions (20 channels: 4 padding lanes in the last 8-channel block), as in EfficientNet;
    the pass must run on it and leave the second convolution's input right."""
    rng = np.random.default_rng(11)
    c_in, c_mid, c_out, hw = 5, 20, 8, 29
    w1 = (rng.standard_normal((c_mid, c_in, 1, 1)) * 0.5).astype(np.float32)
    b1 = rng.standard_normal(c_mid).astype(np.float32)
    w2 = (rng.standard_normal((c_out, c_mid, 3, 3)) * 0.2).astype(np.float32)
    b2 = rng.standard_normal(c_out).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["y"], kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["y"], ["s"]),
        helper.make_node("Mul", ["y", "s"], ["z"]),
        helper.make_node("Conv", ["z", "w2", "b2"], ["o"], kernel_shape=[3, 3], pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes, "conv_silu_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, hw, hw])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, c_out, hw, hw])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = (rng.standard_normal((1, c_in, hw, hw)) * 8).astype(np.float32)
    got, log = run(path, x, tmp_path)
    y = conv_ref(x, w1, b1, 1)
    z = y / (1.0 + np.exp(-y))
    want = conv_ref(z, w2, b2, 1).ravel()
    # tolerance from the magnitudes of both convolutions' terms
    s1 = conv_ref(np.abs(x), np.abs(w1), np.abs(b1), 1)
    s2 = conv_ref(1.1 * s1, np.abs(w2), np.abs(b2), 1).ravel()
    assert got.size == want.size
    err = np.abs(got - want)
    assert np.all(err <= 2e-6 * s2 + 1e-30), float(np.max(err / s2))
    lines = conv_lines(log)
    assert len(lines) == 2, lines
    first = next(ln for ln in lines if "ic5oc20" in ln)
    assert "eltwise_swish" not in first, f"SiLU pass not applied: {first}"
    # "p": padded (24 lanes for 20 channels)
    assert "dst_f32:p:blocked:aBcd8b" in first, f"intermediate not blocked any more: {first}"
