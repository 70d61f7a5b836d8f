"""3x3 stride-1 convolutions run by nn/'s Winograd F(2x2, 3x3) and F(4x4, 3x3) steps
(nn/nn-wino.c) inside whole models: plain graph inputs reordered to nChw8c, a ReLU fused, no
bias, readers that need plain data after it, odd sizes, a dynamic batch on two threads. Results
must match a float64 direct convolution, XREG_NN_PROFILE=steps must show the Winograd engine
and tile (so it cannot silently stop being used: "Winograd4" for F(4x4), used from 8x8 up),
XREG_NN_WINOGRAD=2 must keep F(2x2) and XREG_NN_WINOGRAD=0 must fall back to oneDNN.
Needs Debian's python3-onnx (run with /usr/bin/python3)."""

from __future__ import annotations

import os
import pathlib
import subprocess

import numpy as np
import pytest

from nnlib import avx2_fma, xregctl

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.skipif(not avx2_fma(), reason="nn/'s Winograd convolutions need AVX2 and FMA")



def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, k: int) -> np.ndarray:
    """Direct convolution, stride 1, pads k // 2, float64."""
    n, _, h, wd = x.shape
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((n, w.shape[0], h, wd))
    for dy in range(k):
        for dx in range(k):
            y += np.einsum("nchw,oc->nohw", xp[:, :, dy:dy + h, dx:dx + wd],
                           w[:, :, dy, dx].astype(np.float64))
    return y + (0 if b is None else b.reshape(1, -1, 1, 1))


def relu(y: np.ndarray) -> np.ndarray:
    return np.maximum(y, 0)


def build(path: pathlib.Path, c: tuple[int, int, int, int], hw: tuple[int, int], batch,
          rng: np.random.Generator) -> dict:
    """x -> Conv3x3(bias) -> Relu -> Conv3x3(no bias) -> Conv1x1 -> Relu -> Flatten -> out.
    The first reads the plain graph input, the second feeds a 1x1 convolution, the last
    output is read plain by Flatten."""
    c0, c1, c2, c3 = c
    w1 = (rng.standard_normal((c1, c0, 3, 3)) / np.sqrt(c0 * 9)).astype(np.float32)
    b1 = rng.standard_normal(c1).astype(np.float32)
    w2 = (rng.standard_normal((c2, c1, 3, 3)) / np.sqrt(c1 * 9)).astype(np.float32)
    w3 = (rng.standard_normal((c3, c2, 1, 1)) / np.sqrt(c2)).astype(np.float32)
    b3 = rng.standard_normal(c3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["y1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y2"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Conv", ["y2", "w3", "b3"], ["y3"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["y3"], ["r3"]),
        helper.make_node("Flatten", ["r3"], ["out"]),
    ]
    h, w = hw
    graph = helper.make_graph(
        nodes, "wino",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c0, h, w])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, c3 * h * w])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"), (b3, "b3"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"w1": w1, "b1": b1, "w2": w2, "w3": w3, "b3": b3}


def expected(x: np.ndarray, p: dict) -> np.ndarray:
    r1 = relu(conv(x, p["w1"], p["b1"], 3))
    y2 = conv(r1, p["w2"], None, 3)
    return relu(conv(y2, p["w3"], p["b3"], 1)).reshape(x.shape[0], -1)


def close(got: np.ndarray, want: np.ndarray, tol: float = 3e-6) -> None:
    """float32 through three convolutions: within 3e-6 of the largest output (measured: at
    most 7.2e-7 for F(2x2) and for oneDNN alike), 2e-5 with F(4x4), whose transforms multiply
    by up to 8 (measured: at most 3.9e-6); a bias off by 1e-4 fails either."""
    assert got.shape == want.shape
    err = float(np.max(np.abs(got - want)))
    assert err <= tol * float(np.max(np.abs(want))), (err, float(np.max(np.abs(want))))


def run(model: pathlib.Path, x: np.ndarray, tmp: pathlib.Path, threads: int = 1,
        winograd: str = "1") -> tuple[np.ndarray, str]:
    inp, out = tmp / "in.f32", tmp / "out.f32"
    x.astype("<f4").tofile(inp)
    env = dict(os.environ, XREG_NN_PROFILE="steps", XREG_NN_WINOGRAD=winograd)
    r = subprocess.run([xregctl(), "nn-run", str(model), "--input", str(inp), "--output",
                        str(out), "--threads", str(threads)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, f"nn-run exit {r.returncode}: {r.stderr[-2000:]}"
    return np.fromfile(out, dtype="<f4").reshape(x.shape[0], -1), r.stderr


def engines(log: str) -> list[str]:
    """Engine of every Conv step, in order."""
    return [ln.split()[3] for ln in log.splitlines()
            if ln.strip().startswith("step") and ln.split()[2] == "Conv"]


CASES = [
    # channels (in, mid, mid, out), size, batch in the file, batch run, threads, tile engine
    pytest.param((16, 32, 16, 8), (13, 11), 1, 1, 1, "Winograd4", id="16-32-16-13x11"),
    pytest.param((8, 16, 16, 16), (4, 5), 1, 1, 1, "Winograd", id="8-16-16-4x5"),
    pytest.param((24, 48, 32, 8), (8, 7), 1, 1, 2, "Winograd", id="24-48-32-8x7-t2"),
    pytest.param((24, 48, 32, 8), (8, 9), 1, 1, 2, "Winograd4", id="24-48-32-8x9-t2"),
    pytest.param((16, 16, 16, 8), (9, 10), "N", 3, 2, "Winograd4", id="dynamic-batch3-t2"),
    pytest.param((64, 128, 64, 8), (17, 15), "N", 2, 2, "Winograd4", id="64-128-64-17x15-t2"),
]


@pytest.mark.parametrize("c,hw,file_batch,batch,threads,tile", CASES)
def test_winograd_in_model(tmp_path, c, hw, file_batch, batch, threads, tile):
    rng = np.random.default_rng(sum(c) * 100 + hw[0])
    model = tmp_path / "m.onnx"
    p = build(model, c, hw, file_batch, rng)
    x = (rng.standard_normal((batch, c[0]) + hw) * 3).astype(np.float32)
    want = expected(x, p)
    got, log = run(model, x, tmp_path, threads)
    assert engines(log) == [tile, tile, "oneDNN"], log
    close(got, want, 2e-5 if tile == "Winograd4" else 3e-6)
    # F(2x2) only, then oneDNN's convolutions only
    got2, log2 = run(model, x, tmp_path, threads, winograd="2")
    assert engines(log2) == ["Winograd", "Winograd", "oneDNN"], log2
    close(got2, want)
    ref, log0 = run(model, x, tmp_path, threads, winograd="0")
    assert engines(log0) == ["oneDNN"] * 3, log0
    close(ref, want)


@pytest.mark.parametrize("c,hw,want", [
    # out-channels not a multiple of 16: the first stays on oneDNN
    pytest.param((16, 24, 16, 8), (6, 6), ["oneDNN", "Winograd", "oneDNN"], id="cout-24"),
    # 3x3 and 2x2 outputs: tile padding would make Winograd do more multiply-adds
    pytest.param((16, 32, 16, 8), (3, 3), ["oneDNN"] * 3, id="3x3-outputs"),
    pytest.param((16, 32, 16, 8), (2, 2), ["oneDNN"] * 3, id="2x2-outputs"),
    pytest.param((8, 16, 16, 16), (1, 1), ["oneDNN"] * 3, id="1x1-outputs"),
])
def test_not_eligible_stays_on_onednn(tmp_path, c, hw, want):
    rng = np.random.default_rng(5)
    model = tmp_path / "m.onnx"
    p = build(model, c, hw, 1, rng)
    x = rng.standard_normal((1, c[0]) + hw).astype(np.float32)
    got, log = run(model, x, tmp_path)
    assert engines(log) == want, log
    close(got, expected(x, p))
