"""A Gather of one sequence position (ViT's class token) moves up through the steps that keep
positions apart (restrict_rows in nn/nn-opt.c), so they compute that one row. Small ViT-like
tails built with onnx.helper (attention with Slice/Reshape/Transpose/Softmax, the GELU MLP,
residual Adds, LayerNormalization, the head) must match numpy in float64 with the rewrite,
and XREG_NN_PROFILE=steps must show the MLP's products on one row; where the rewrite would be
wrong (a constant that varies along the axis, a step that mixes positions, a second reader
of the tensor) the products stay full-size and the results still match. A dynamic batch of 3
on 2 threads checks the batch plans. Needs Debian's python3-onnx (run with /usr/bin/python3)."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess

import numpy as np
import pytest

from nnlib import xregctl

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

T, C, H, HID, K = 9, 32, 4, 64, 10   # positions, channels, heads, MLP width, classes
D = C // H


def ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


erf = np.vectorize(math.erf)


class Tail:
    """x [N, T, C] -> block (attention, MLP) -> LayerNorm -> the variant's reading of it."""

    def __init__(self, variant: str, rng: np.random.Generator):
        self.variant = variant
        self.w: dict[str, np.ndarray] = {}
        self.nodes: list = []

        def p(name: str, *shape: int, scale: float = 1.0) -> str:
            fan = shape[0] if len(shape) > 1 else 1
            self.w[name] = (rng.standard_normal(shape) * scale / math.sqrt(fan)).astype(np.float32)
            return name

        for i in (1, 2, 3):
            self.w[f"g{i}"] = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
            self.w[f"b{i}"] = (0.1 * rng.standard_normal(C)).astype(np.float32)
        p("wqkv", C, 3 * C), p("bqkv", 3 * C, scale=0.1), p("wo", C, C), p("bo", C, scale=0.1)
        p("w1", C, HID), p("bh1", HID, scale=0.1), p("w2", HID, C), p("bh2", C, scale=0.1)
        p("pe", 1, T, C)
        self.w["whead"] = (rng.standard_normal((K, C)) / math.sqrt(C)).astype(np.float32)
        self.w["bhead"] = (0.1 * rng.standard_normal(K)).astype(np.float32)
        ints = {"sh4": [0, T, H, D], "sh3": [0, T, C], "q0": [0], "q1": [C], "k1": [2 * C],
                "v1": [3 * C], "ax2": [2]}
        self.ints = {k: np.array(v, np.int64) for k, v in ints.items()}
        self.scalars = {"sqrtd": math.sqrt(D), "sqrt2": math.sqrt(2), "one": 1.0, "half": 0.5}

    def node(self, op: str, ins: list[str], out: str, **kw) -> str:
        self.nodes.append(helper.make_node(op, ins, [out], **kw))
        return out

    def graph(self, path: pathlib.Path) -> None:
        n = self.node
        n("LayerNormalization", ["x", "g1", "b1"], "h1", axis=-1, epsilon=1e-5)
        n("MatMul", ["h1", "wqkv"], "qkv0")
        n("Add", ["qkv0", "bqkv"], "qkv")
        for name, lo, hi in (("q", "q0", "q1"), ("k", "q1", "k1"), ("v", "k1", "v1")):
            n("Slice", ["qkv", lo, hi, "ax2"], name)
            n("Reshape", [name, "sh4"], name + "4")
        n("Transpose", ["q4"], "qt", perm=[0, 2, 1, 3])
        n("Transpose", ["k4"], "kt", perm=[0, 2, 3, 1])
        n("Transpose", ["v4"], "vt", perm=[0, 2, 1, 3])
        n("MatMul", ["qt", "kt"], "s0")
        n("Div", ["s0", "sqrtd"], "s")
        n("Softmax", ["s"], "pr", axis=-1)
        n("MatMul", ["pr", "vt"], "o4")
        n("Transpose", ["o4"], "ot", perm=[0, 2, 1, 3])
        n("Reshape", ["ot", "sh3"], "o3")
        n("MatMul", ["o3", "wo"], "o0")
        n("Add", ["o0", "bo"], "o")
        n("Add", ["x", "o"], "x2")
        n("LayerNormalization", ["x2", "g2", "b2"], "h2", axis=-1, epsilon=1e-5)
        n("MatMul", ["h2", "w1"], "m0")
        n("Add", ["bh1", "m0"], "m1")          # the exporters' order: bias first
        n("Div", ["m1", "sqrt2"], "e0")
        n("Erf", ["e0"], "e1")
        n("Add", ["e1", "one"], "e2")
        n("Mul", ["m1", "e2"], "e3")
        n("Mul", ["e3", "half"], "gelu")
        n("MatMul", ["gelu", "w2"], "m2")
        n("Add", ["bh2", "m2"], "m3")
        n("Add", ["x2", "m3"], "x3")
        last = "x3"
        if self.variant == "position-embedding":
            last = n("Add", ["x3", "pe"], "x3pe")  # varies along the axis: the Gather stops
        n("LayerNormalization", [last, "g3", "b3"], "h3", axis=-1, epsilon=1e-5)
        v = self.variant
        yshape = {"keep-axis": ["N", 1, K], "channel": ["N", T],
                  "softmax-over-positions": ["N", C]}.get(v, ["N", K])
        outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, yshape)]
        if v in ("class-token", "position-embedding", "second-reader", "batch"):
            n("Gather", ["h3", "idx0"], "tok", axis=1)
            self.idx = ("idx0", np.array(0, np.int64))
            n("Gemm", ["tok", "whead", "bhead"], "y", transB=1)
            if v == "second-reader":
                outs.append(helper.make_tensor_value_info("x3", TensorProto.FLOAT, ["N", T, C]))
        elif v == "last-int32":
            self.idx = ("idx0", np.array(-1, np.int32))
            n("Gather", ["h3", "idx0"], "tok", axis=1)
            n("Gemm", ["tok", "whead", "bhead"], "y", transB=1)
        elif v == "keep-axis":
            self.idx = ("idx0", np.array([3], np.int64))
            n("Gather", ["h3", "idx0"], "tok", axis=1)      # [N, 1, C]
            n("MatMul", ["tok", "wheadt"], "y")
            self.w["wheadt"] = np.ascontiguousarray(self.w["whead"].T)
        elif v == "channel":
            # one channel of every position: LayerNorm mixes channels, so it stays whole
            self.idx = ("idx0", np.array(5, np.int64))
            n("Gather", ["h3", "idx0"], "y", axis=2)
        elif v == "softmax-over-positions":
            n("Softmax", ["h3"], "sp", axis=1)
            self.idx = ("idx0", np.array(2, np.int64))
            n("Gather", ["sp", "idx0"], "y", axis=1)
        inits = [numpy_helper.from_array(a, k) for k, a in self.w.items()]
        inits += [numpy_helper.from_array(a, k) for k, a in self.ints.items()]
        inits += [numpy_helper.from_array(np.array(s, np.float32), k)
                  for k, s in self.scalars.items()]
        inits.append(numpy_helper.from_array(self.idx[1], self.idx[0]))
        graph = helper.make_graph(
            self.nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                               ["N", T, C])], outs, inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        onnx.save(m, str(path))

    def reference(self, x: np.ndarray) -> list[np.ndarray]:
        w = {k: a.astype(np.float64) for k, a in self.w.items()}
        x = x.astype(np.float64)
        n = x.shape[0]
        h1 = ln(x, w["g1"], w["b1"])
        qkv = h1 @ w["wqkv"] + w["bqkv"]
        q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(n, T, H, D).transpose(0, 2, 1, 3)
                   for i in range(3))
        pr = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(D), -1)
        o = (pr @ v).transpose(0, 2, 1, 3).reshape(n, T, C) @ w["wo"] + w["bo"]
        x2 = x + o
        m1 = ln(x2, w["g2"], w["b2"]) @ w["w1"] + w["bh1"]
        gelu = m1 * 0.5 * (1 + erf(m1 / math.sqrt(2)))
        x3 = x2 + gelu @ w["w2"] + w["bh2"]
        if self.variant == "position-embedding":
            h3 = ln(x3 + w["pe"], w["g3"], w["b3"])
        else:
            h3 = ln(x3, w["g3"], w["b3"])
        idx = int(self.idx[1].reshape(-1)[0])
        v = self.variant
        if v == "channel":
            return [h3[:, :, idx]]
        if v == "softmax-over-positions":
            return [softmax(h3, 1)[:, idx, :]]
        if v == "keep-axis":
            return [h3[:, idx:idx + 1, :] @ w["wheadt"]]
        y = h3[:, idx, :] @ w["whead"].T + w["bhead"]
        return [y, x3] if v == "second-reader" else [y]


def run(path: pathlib.Path, x: np.ndarray, tmp: pathlib.Path, threads: int,
        rows: bool = True) -> tuple[np.ndarray, list[str]]:
    inp, out = tmp / "in.f32", tmp / "out.f32"
    x.astype("<f4").tofile(inp)
    env = dict(os.environ, XREG_NN_PROFILE="steps")
    if not rows:
        env["XREG_NN_ROWS"] = "0"
    r = subprocess.run([xregctl(), "nn-run", str(path), "--input", str(inp), "--output",
                        str(out), "--threads", str(threads)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, f"nn-run exit {r.returncode}: {r.stderr[-2000:]}"
    steps = [ln.split() for ln in r.stderr.splitlines() if ln.strip().startswith("step")]
    return np.fromfile(out, dtype="<f4"), steps


def mlp_shapes(steps: list[list[str]]) -> list[str]:
    """Output shapes of the MLP's two products (the last two MatMuls whose output ends in HID
    or C after one of HID: the step list keeps graph order)."""
    mm = [s[4] for s in steps if s[2] == "MatMul"]
    i = max(j for j, sh in enumerate(mm) if sh.endswith(f"x{HID}"))
    return mm[i:i + 2]


def check(got: np.ndarray, want: list[np.ndarray]) -> None:
    flat = np.concatenate([w.reshape(-1) for w in want])
    assert got.size == flat.size, f"{got.size} outputs, want {flat.size}"
    err = np.abs(got.astype(np.float64) - flat).max()
    assert err <= 2e-5 * np.abs(flat).max(), f"max |diff| {err:.3g} of {np.abs(flat).max():.3g}"


# variant, batch, threads, whether the MLP runs on one row
CASES = [
    ("class-token", 1, 1, True),
    ("last-int32", 1, 1, True),
    ("keep-axis", 1, 2, True),
    ("batch", 3, 2, True),
    ("position-embedding", 1, 1, False),
    ("second-reader", 1, 1, False),
    ("channel", 1, 1, False),
    ("softmax-over-positions", 2, 1, False),
]


@pytest.mark.parametrize("variant,batch,threads,one_row", CASES, ids=[c[0] for c in CASES])
def test_one_row(tmp_path, variant, batch, threads, one_row):
    rng = np.random.default_rng(sum(map(ord, variant)))
    tail = Tail(variant, rng)
    path = tmp_path / "m.onnx"
    tail.graph(path)
    x = rng.standard_normal((batch, T, C)).astype(np.float32)
    want = tail.reference(x)
    got, steps = run(path, x, tmp_path, threads)
    check(got, want)
    rows = [sh.split("x")[-2] for sh in mlp_shapes(steps)]
    assert rows == (["1", "1"] if one_row else [str(T), str(T)]), mlp_shapes(steps)
    if one_row:
        # the attention's output projection and the attention rows shrink too
        assert any(s[2] == "MatMul" and s[4].endswith(f"x{H}x1x{T}") for s in steps), steps
        got0, steps0 = run(path, x, tmp_path, threads, rows=False)
        check(got0, want)
        assert [sh.split("x")[-2] for sh in mlp_shapes(steps0)] == [str(T), str(T)]
