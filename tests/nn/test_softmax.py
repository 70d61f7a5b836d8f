"""Softmax over contiguous rows runs as nn/'s own AVX2 step (softmax_step in nn/nn-dnnl.c):
against numpy in float64, rows whose length is not a multiple of 8, ViT's 12x197x197 on two
threads, the opset-11 form that flattens the axes from `axis` on, masked (-inf) entries, and
rows whose maximum is infinite or NaN (IEEE results, as the reference kernel gives).
Needs Debian's python3-onnx (run with /usr/bin/python3)."""

from __future__ import annotations

import os
import pathlib
import subprocess

import numpy as np
import pytest

from nnlib import avx2_fma, xregctl

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

pytestmark = pytest.mark.skipif(not avx2_fma(), reason="nn/'s Softmax kernel needs AVX2 and FMA")



def model(path: pathlib.Path, shape: list[int], axis: int, opset: int) -> None:
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=axis)], "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def reference(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax over all axes from axis on, in float64, IEEE throughout."""
    rows = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(rows - rows.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)


def run(path: pathlib.Path, x: np.ndarray, tmp: pathlib.Path) -> np.ndarray:
    inp, out = tmp / "in.f32", tmp / "out.f32"
    x.astype("<f4").tofile(inp)
    r = subprocess.run([xregctl(), "nn-run", str(path), "--input", str(inp), "--output",
                        str(out), "--threads", "2"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, XREG_NN_PROFILE="steps"))
    assert r.returncode == 0, f"nn-run exit {r.returncode}: {r.stderr[-2000:]}"
    # the step ran on nn's own kernel, not oneDNN's or the reference
    assert any(ln.split()[2:4] == ["Softmax", "nn"] for ln in r.stderr.splitlines()
               if ln.strip().startswith("step")), r.stderr
    return np.fromfile(out, dtype="<f4").reshape(x.shape)


def check(got: np.ndarray, want: np.ndarray) -> None:
    """Each element within 2e-6 of its value (the exp is good to ~2e-7) and 1e-12 absolute;
    NaN exactly where the reference has NaN. A sum off by 1e-4 fails it."""
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    err = np.abs(got[ok] - want[ok])
    tol = 2e-6 * np.abs(want[ok]) + 1e-12
    i = int(np.argmax(err / tol))
    assert err[i] <= tol[i], f"|diff| {err[i]:.3g} > {tol[i]:.3g} (want {want[ok][i]:.6g})"


@pytest.mark.parametrize("shape,axis,opset", [
    pytest.param([3, 5, 197], -1, 13, id="rows-of-197"),
    pytest.param([1, 12, 197, 197], -1, 17, id="vit-attention-2-threads"),
    pytest.param([2, 3, 4, 5], 1, 11, id="opset11-flattened"),
    pytest.param([4, 7], -1, 13, id="rows-of-7"),
])
def test_softmax_matches_numpy(tmp_path, shape, axis, opset):
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    path = tmp_path / "m.onnx"
    model(path, shape, axis, opset)
    ax = axis % len(shape)
    check(run(path, x, tmp_path), reference(x, ax))


def test_softmax_masked_and_non_finite(tmp_path):
    """-inf entries give 0; a row of -inf, or with +inf or NaN, gives NaN (IEEE), and the
    other rows stay right."""
    shape = [6, 37]
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 30).astype(np.float32)
    x[0, ::3] = -np.inf
    x[1, :] = -np.inf
    x[2, 5] = np.inf
    x[3, 9] = np.nan
    x[4, :] = 1e30
    path = tmp_path / "m.onnx"
    model(path, shape, -1, 13)
    got, want = run(path, x, tmp_path), reference(x, 1)
    assert np.all(got[0, ::3] == 0)
    assert np.all(np.isnan(got[1])) and np.all(np.isnan(got[2])) and np.all(np.isnan(got[3]))
    check(got, want)
