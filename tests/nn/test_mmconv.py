"""Constant-weight MatMul and Gemm with at least NN_MATMUL_CONV_ROWS (8) rows per sample run as
oneDNN's 1x1 convolution over the rows (nn/nn-dnnl.c matmul_conv; docs/nn.md "Products as 1x1
convolutions"), with the bias, GELU and residual sum they fused. Results must match float64
numpy, XREG_NN_PROFILE=steps must show the engine ("oneDNN-1x1", so the path cannot silently stop
being used), fewer rows, a transposed A, a broadcast Gemm C and XREG_NN_MATMUL_CONV=0 must keep
oneDNN's matmul.
Needs Debian's python3-onnx (run with /usr/bin/python3)."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess

import numpy as np
import pytest

from nnlib import avx2_fma, xregctl

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# jit_1x1 is oneDNN's AVX2 kernel; elsewhere the product stays a matmul (checked below)
ONE_BY_ONE = "oneDNN-1x1" if avx2_fma() else "oneDNN"


def save(path: pathlib.Path, nodes, inputs, outputs, inits: dict) -> None:
    graph = helper.make_graph(nodes, "mmconv", inputs, outputs,
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_mlp(path: pathlib.Path, batch, s: int, k: int, h: int,
              rng: np.random.Generator) -> dict:
    """ViT's MLP block: x [B, S, K] -> MatMul(w1) + b1 -> GELU (the Erf form) -> MatMul(w2) + b2
    -> + x. nn/ fuses bias, GELU and the residual into the two products."""
    p = {"w1": (rng.standard_normal((k, h)) / np.sqrt(k)).astype(np.float32),
         "b1": rng.standard_normal(h).astype(np.float32),
         "w2": (rng.standard_normal((h, k)) / np.sqrt(h)).astype(np.float32),
         "b2": rng.standard_normal(k).astype(np.float32),
         "sqrt2": np.array(math.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
         "half": np.array(0.5, np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Div", ["a1", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["a1", "e1"], ["g0"]),
        helper.make_node("Mul", ["g0", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["a2"]),
        helper.make_node("Add", ["a2", "x"], ["out"]),
    ]
    save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, s, k])],
         [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, s, k])], p)
    return p


def mlp_expected(x: np.ndarray, p: dict) -> np.ndarray:
    from math import erf
    x64 = x.astype(np.float64)
    a1 = x64 @ p["w1"].astype(np.float64) + p["b1"]
    g = 0.5 * a1 * (1.0 + np.vectorize(erf)(a1 / math.sqrt(2.0)))
    return g @ p["w2"].astype(np.float64) + p["b2"] + x64


def build_gemm(path: pathlib.Path, m: int, k: int, n: int, trans_a: int, c_shape: tuple,
               rng: np.random.Generator) -> dict:
    """Gemm(A, B [N, K] transposed, C, alpha 0.5, beta 2) -> Relu: torchvision's Linear (C of
    [N]), with the scalings and broadcast C a hand-written file may carry."""
    p = {"b": (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32),
         "c": rng.standard_normal(c_shape).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "b", "c"], ["y"], alpha=0.5, beta=2.0, transA=trans_a,
                              transB=1),
             helper.make_node("Relu", ["y"], ["out"])]
    save(path, nodes,
         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, m] if trans_a else [m, k])],
         [helper.make_tensor_value_info("out", TensorProto.FLOAT, [m, n])], p)
    return p


def gemm_expected(x: np.ndarray, p: dict, trans_a: int) -> np.ndarray:
    a = x.astype(np.float64).T if trans_a else x.astype(np.float64)
    return np.maximum(0.5 * a @ p["b"].astype(np.float64).T + 2.0 * p["c"], 0)


def close(got: np.ndarray, want: np.ndarray) -> None:
    """float32 products over K <= 300: within 1e-5 of the largest output (measured: at most
    1.1e-6); a bias or residual dropped, or a GELU replaced, is off by far more."""
    assert got.shape == want.shape
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e-5 * float(np.max(np.abs(want))), (err, float(np.max(np.abs(want))))


def run(model: pathlib.Path, x: np.ndarray, tmp: pathlib.Path, out_shape, threads: int = 1,
        conv: str = "1") -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Output and the (op, engine) of every step, from XREG_NN_PROFILE=steps."""
    inp, out = tmp / "in.f32", tmp / "out.f32"
    x.astype("<f4").tofile(inp)
    env = dict(os.environ, XREG_NN_PROFILE="steps", XREG_NN_MATMUL_CONV=conv)
    r = subprocess.run([xregctl(), "nn-run", str(model), "--input", str(inp), "--output",
                        str(out), "--threads", str(threads)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, f"nn-run exit {r.returncode}: {r.stderr[-2000:]}"
    steps = [(ln.split()[2], ln.split()[3]) for ln in r.stderr.splitlines()
             if ln.strip().startswith("step ")]
    return np.fromfile(out, dtype="<f4").reshape(out_shape), steps


MLP_CASES = [
    # tokens per sample, width, hidden, batch in the file, batch run, threads
    pytest.param(197, 64, 256, 1, 1, 1, id="vit-like-197"),
    pytest.param(8, 48, 96, 1, 1, 2, id="8-rows-t2"),
    pytest.param(13, 37, 45, 1, 1, 1, id="odd-widths"),
    pytest.param(20, 32, 128, "N", 3, 2, id="dynamic-batch3-t2"),
]


@pytest.mark.parametrize("s,k,h,file_batch,batch,threads", MLP_CASES)
def test_mlp_as_1x1(tmp_path, s, k, h, file_batch, batch, threads):
    rng = np.random.default_rng(s * 1000 + k + h)
    model = tmp_path / "m.onnx"
    p = build_mlp(model, file_batch, s, k, h, rng)
    x = rng.standard_normal((batch, s, k)).astype(np.float32)
    want = mlp_expected(x, p)
    got, steps = run(model, x, tmp_path, x.shape, threads)
    # bias, GELU and residual fused: two steps, both convolutions
    assert steps == [("MatMul", ONE_BY_ONE)] * 2, steps
    close(got, want)
    ref, steps0 = run(model, x, tmp_path, x.shape, threads, conv="0")
    assert steps0 == [("MatMul", "oneDNN")] * 2, steps0
    close(ref, want)


def test_few_rows_stay_matmul(tmp_path):
    """7 rows per sample: oneDNN's matmul (its sgemm is faster for a row or a few)."""
    rng = np.random.default_rng(7)
    model = tmp_path / "m.onnx"
    p = build_mlp(model, 1, 7, 32, 64, rng)
    x = rng.standard_normal((1, 7, 32)).astype(np.float32)
    got, steps = run(model, x, tmp_path, x.shape)
    assert steps == [("MatMul", "oneDNN")] * 2, steps
    close(got, mlp_expected(x, p))


@pytest.mark.parametrize("trans_a,c_shape,engine", [
    pytest.param(0, (72,), ONE_BY_ONE, id="gemm"),
    pytest.param(1, (72,), "oneDNN", id="gemm-transA"),
    # a bias per output channel only: broadcast C keeps the matmul
    pytest.param(0, (1,), "oneDNN", id="gemm-C-scalar"),
    pytest.param(0, (24, 72), "oneDNN", id="gemm-C-matrix"),
])
def test_gemm(tmp_path, trans_a, c_shape, engine):
    m, k, n = 24, 40, 72
    rng = np.random.default_rng(11 + trans_a + len(c_shape))
    model = tmp_path / "m.onnx"
    p = build_gemm(model, m, k, n, trans_a, c_shape, rng)
    x = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    got, steps = run(model, x, tmp_path, (m, n), threads=2)
    assert steps == [("Gemm", engine)], steps
    close(got, gemm_expected(x, p, trans_a))
