"""nn/nn-opt.c absorb_views: attention's batched MatMuls read q, k, v in place and write their
result where the following Transpose would have put it; Transposes that only move size-1 axes
become views. Checked on the pattern PyTorch's nn.MultiheadAttention exports (sequence-first,
Slice/Reshape/Transpose/Div per head group), built here with Debian's python3-onnx: the outputs
must match numpy at batch 1 and 3, the copies must be gone (step count from `xregctl nn-info`),
and a chain with a second reader must be left alone and still be right.

    XREGCTL=build/daemon/xregctl /usr/bin/python3 -m pytest -q tests/nn/test_views.py
"""
import os
import re
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

T, E, H = 7, 16, 4   # tokens, embedding, heads
D = E // H


def attention_model(path, extra_output=False, residual=False):
    rng = np.random.default_rng(5)
    w = {
        "Wqkv": rng.standard_normal((E, 3 * E)).astype(np.float32) * 0.3,
        "bqkv": rng.standard_normal(3 * E).astype(np.float32) * 0.1,
        "Wo": rng.standard_normal((E, E)).astype(np.float32) * 0.3,
        "bo": rng.standard_normal(E).astype(np.float32) * 0.1,
        "sqrt_d": np.array(np.sqrt(D), np.float32),
        "heads_shape": np.array([T, -1, D], np.int64),
        "flat_shape": np.array([-1, E], np.int64),
        "seq_shape": np.array([T, -1, E], np.int64),
        "ax2": np.array([2], np.int64),
    }
    for i in range(4):
        w[f"s{i}"] = np.array([i * E], np.int64)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xs"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["xs", "Wqkv"], ["p"]),
        helper.make_node("Add", ["bqkv", "p"], ["qkv"]),
    ]
    for i, name in enumerate("qkv"):
        nodes += [
            helper.make_node("Slice", ["qkv", f"s{i}", f"s{i + 1}", "ax2"], [f"{name}_s"]),
            helper.make_node("Reshape", [f"{name}_s", "heads_shape"], [f"{name}_r"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["q_r"], ["q_t"], perm=[1, 0, 2]),
        helper.make_node("Div", ["q_t", "sqrt_d"], ["q"]),
        helper.make_node("Transpose", ["k_r"], ["kt"], perm=[1, 2, 0]),
        helper.make_node("Transpose", ["v_r"], ["v"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["sc"]),
        helper.make_node("Softmax", ["sc"], ["a"], axis=-1),
        helper.make_node("MatMul", ["a", "v"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[1, 0, 2]),
        helper.make_node("Reshape", ["ot", "flat_shape"], ["of"]),
        helper.make_node("Gemm", ["of", "Wo", "bo"], ["g"], transB=1),
        helper.make_node("Reshape", ["g", "seq_shape"], ["gs"]),
        helper.make_node("Transpose", ["gs"], ["yt" if residual else "y"], perm=[1, 0, 2]),
    ]
    if residual:  # the encoder's x + attention(x): a sum post-op behind the two views
        nodes.append(helper.make_node("Add", ["yt", "x"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", T, E])]
    if extra_output:  # k's transposed copy is also an output: it must stay a real tensor
        outputs.append(helper.make_tensor_value_info("kt", TensorProto.FLOAT, ["heads", D, T]))
    g = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", T, E])], outputs,
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return w


def reference(w, x):
    b = x.shape[0]
    qkv = np.transpose(x, (1, 0, 2)) @ w["Wqkv"] + w["bqkv"]           # [T, B, 3E]
    q, k, v = (qkv[..., i * E:(i + 1) * E].reshape(T, b * H, D) for i in range(3))
    q = np.transpose(q, (1, 0, 2)) / np.float32(np.sqrt(D))
    kt = np.transpose(k, (1, 2, 0))
    s = q @ kt
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.transpose(a @ np.transpose(v, (1, 0, 2)), (1, 0, 2)).reshape(-1, E)
    g = (o @ w["Wo"].T + w["bo"]).reshape(T, b, E)
    return np.transpose(g, (1, 0, 2)), kt


@pytest.fixture(scope="module")
def xregctl():
    path = os.environ.get("XREGCTL")
    if not path:
        pytest.fail("XREGCTL is not set (meson sets it)", pytrace=False)
    return path


def steps(xregctl, model):
    out = subprocess.run([xregctl, "nn-info", str(model)], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"(\d+) steps after folding and fusion \((\d+) fused\)", out)
    assert m, out
    return int(m.group(1))


def run(xregctl, model, x, tmp_path):
    inp, out = tmp_path / "x.f32", tmp_path / "y.f32"
    x.astype("<f4").tofile(inp)
    subprocess.run([xregctl, "nn-run", str(model), "--input", str(inp), "--output", str(out)],
                   capture_output=True, text=True, check=True)
    return np.fromfile(out, "<f4")


@pytest.mark.parametrize("batch", [1, 3])
def test_attention_in_place_matches_numpy(xregctl, tmp_path, batch):
    model = tmp_path / "attn.onnx"
    w = attention_model(model)
    x = np.random.default_rng(batch).standard_normal((batch, T, E)).astype(np.float32)
    want, _ = reference(w, x)
    got = run(xregctl, model, x, tmp_path).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), \
        np.abs(got - want).max()
    # batch 1: the three Slice/Reshape/Transpose chains, the Div, the result's Transpose gone;
    # the two Transposes that move only the size-1 batch axis are views (still steps)
    assert steps(xregctl, model) == 9


@pytest.mark.parametrize("batch", [1, 3])
def test_residual_behind_views_is_a_sum_post_op(xregctl, tmp_path, batch):
    model = tmp_path / "attn_res.onnx"
    w = attention_model(model, residual=True)
    x = np.random.default_rng(7 + batch).standard_normal((batch, T, E)).astype(np.float32)
    want = reference(w, x)[0] + x
    got = run(xregctl, model, x, tmp_path).reshape(want.shape)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    # batch 1: the Gemm's Reshape and size-1 Transpose views and the Add are folded into it
    assert steps(xregctl, model) == 7


def test_second_reader_keeps_the_copy(xregctl, tmp_path):
    model = tmp_path / "attn2.onnx"
    w = attention_model(model, extra_output=True)
    x = np.random.default_rng(9).standard_normal((1, T, E)).astype(np.float32)
    want, kt = reference(w, x)
    got = run(xregctl, model, x, tmp_path)
    n = want.size
    assert np.abs(got[:n] - want.ravel()).max() <= 1e-5 * max(1.0, np.abs(want).max())
    assert np.abs(got[n:] - kt.ravel()).max() <= 1e-6 * max(1.0, np.abs(kt).max())
    # k's Slice/Reshape/Transpose stay (the Transpose is an output), the rest as above
    assert steps(xregctl, model) == 9 + 3


@pytest.mark.parametrize("perm", [[1, 0, 2], [2, 0, 1], [0, 2, 1], [1, 2, 0]])
def test_large_transpose_and_slice_match_numpy(xregctl, tmp_path, perm):
    """Above NN_PARALLEL_MIN_ELEMS the reference Transpose and Slice split rows over threads."""
    shape = [64, 40, 48]
    g = helper.make_graph(
        [helper.make_node("Slice", ["x", "st", "en", "ax"], ["s"]),
         helper.make_node("Transpose", ["s"], ["y"], perm=[0] + [p + 1 for p in perm])],
        "copies", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"] + shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 3], np.int64), "st"),
         numpy_helper.from_array(np.array([63, 40], np.int64), "en"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "ax")])
    model = tmp_path / "copies.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), model)
    x = np.random.default_rng(1).standard_normal([2] + shape).astype(np.float32)
    want = np.transpose(x[:, 1:63, 3:40, :], [0] + [p + 1 for p in perm])
    inp, out = tmp_path / "x.f32", tmp_path / "y.f32"
    x.tofile(inp)
    subprocess.run([xregctl, "nn-run", str(model), "--input", str(inp), "--output", str(out),
                    "--threads", "2"], capture_output=True, text=True, check=True)
    got = np.fromfile(out, "<f4")
    assert got.size == want.size and np.array_equal(got, want.ravel())


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_large_same_shape_arithmetic_matches_numpy(xregctl, tmp_path, op):
    """Above NN_PARALLEL_MIN_ELEMS same-shape float arithmetic runs on the session's threads."""
    shape = [3, 197, 200]
    g = helper.make_graph(
        [helper.make_node("Abs", ["x"], ["a"]),
         helper.make_node("Add", ["a", "one"], ["t"]),
         helper.make_node(op, ["x", "t"], ["y"])],
        "arith", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    model = tmp_path / "arith.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), model)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    t = np.abs(x) + np.float32(1)
    want = {"Add": x + t, "Sub": x - t, "Mul": x * t, "Div": x / t}[op]
    inp, out = tmp_path / "x.f32", tmp_path / "y.f32"
    x.tofile(inp)
    subprocess.run([xregctl, "nn-run", str(model), "--input", str(inp), "--output", str(out),
                    "--threads", "2"], capture_output=True, text=True, check=True)
    assert np.array_equal(np.fromfile(out, "<f4"), want.ravel())
