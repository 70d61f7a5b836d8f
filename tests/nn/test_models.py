"""Parity of xreg's ONNX engine with PyTorch on torchvision models (issue 3, item 4).

For each variant (model x opset x constant folding) tools/export-models.py exports the
random-weight model and PyTorch's outputs on random inputs (into XREG_NN_MODELS, by default the
build directory; reused between runs through content keys). `xregctl nn-run` then runs the model
at batch 1 and at batch 3 (that one again on 2 threads: convolutional models then run two
samples side by side and the third with both threads in each step) and its outputs must match
PyTorch's:
    max|a-b| <= 1e-3 * max|b|,  the same top-1 in every row,  cosine similarity >= 0.99999.

Environment (meson sets the first three, see tests/nn/meson.build):
  XREGCTL            the built xregctl
  XREG_SOURCE_ROOT   the source tree (for tools/export-models.py)
  XREG_NN_MODELS     where exports go (default: a temporary directory)
  XREG_NN_VARIANTS   "all" (default: every model x opset 13,17 x fold,nofold, plus the tiny
                     models), "tiny", or a list model:opset:fold|nofold,...
  XREG_NN_ENGINE     "xregctl" (default) or "ort-node" to check this harness itself against
                     onnxruntime-node (needs NODE_PATH to an install by
                     tests/bench/setup-onnxruntime-node.sh)
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = pathlib.Path(os.environ.get("XREG_SOURCE_ROOT", pathlib.Path(__file__).resolve().parents[2]))
EXPORT = ROOT / "tools" / "export-models.py"
ORT_NODE = ROOT / "tests" / "bench" / "ort-node.js"
ENGINE = os.environ.get("XREG_NN_ENGINE", "xregctl")
FULL = ["resnet50", "resnet101", "efficientnet_b0", "efficientnet_b3", "vit_b_16"]
TINY = ["tiny_resnet", "tiny_efficientnet", "tiny_vit"]
REL_TOL = 1e-3
MIN_COSINE = 0.99999


def _variants() -> list[tuple[str, int, str]]:
    sel = os.environ.get("XREG_NN_VARIANTS", "all")
    names = {"all": TINY + FULL, "full": FULL, "tiny": TINY}.get(sel)
    if names is not None:
        return [(m, op, f) for m in names for op in (13, 17) for f in ("fold", "nofold")]
    out = []
    for v in sel.split(","):
        m, op, f = v.split(":")
        out.append((m, int(op), f))
    return out


VARIANTS = _variants()


@pytest.fixture(scope="session")
def engine() -> list[str]:
    """The command prefix that runs a model (xregctl nn-run, or onnxruntime-node to check the
    harness itself)."""
    if ENGINE == "ort-node":
        return ["node", str(ORT_NODE)]
    xregctl = os.environ.get("XREGCTL")
    if not xregctl:
        pytest.fail("XREGCTL is not set (meson sets it; see tests/nn/meson.build)", pytrace=False)
    r = subprocess.run([xregctl, "nn-run", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "nn-run" in r.stdout + r.stderr, \
        f"xregctl nn-run is not usable (exit {r.returncode}): {(r.stderr or r.stdout)[:300]}"
    return [xregctl, "nn-run"]


@pytest.fixture(scope="session")
def models(engine) -> pathlib.Path:
    """Export every selected variant once per session (cached across sessions by content key)."""
    out = os.environ.get("XREG_NN_MODELS")
    if out:
        path = pathlib.Path(out)
    else:
        path = pathlib.Path(tempfile.mkdtemp(prefix="xreg-nn-models-"))
    path.mkdir(parents=True, exist_ok=True)
    spec = ",".join(f"{m}:{op}:{f}" for m, op, f in VARIANTS)
    # /usr/bin/python3: Debian's torch; the python3 first on PATH may lack it.
    r = subprocess.run(["/usr/bin/python3", str(EXPORT), "--out", str(path), "--variants", spec],
                       capture_output=True, text=True, timeout=3600)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        pytest.fail(f"tools/export-models.py failed (exit {r.returncode}):\n{r.stderr[-4000:]}",
                    pytrace=False)
    return path


def _run(engine: list[str], model: pathlib.Path, chw: list[int], inp: pathlib.Path,
         out: pathlib.Path, threads: int = 1) -> subprocess.CompletedProcess:
    if ENGINE == "ort-node":
        cmd = engine + ["run", str(model), str(inp), str(out), ",".join(map(str, chw))]
    else:
        cmd = engine + [str(model), "--input", str(inp), "--output", str(out),
                        "--threads", str(threads)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def compare(got: np.ndarray, want: np.ndarray) -> dict:
    """The issue's parity figures for one batch (rows = images)."""
    diff = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    cos = [float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
           for a, b in zip(got.astype(np.float64), want.astype(np.float64))]
    return {"max_abs_diff": diff, "rel": diff / scale, "min_cosine": min(cos),
            "top1_got": got.argmax(1).tolist(), "top1_want": want.argmax(1).tolist()}


@pytest.mark.parametrize("model,opset,folding", VARIANTS,
                         ids=[f"{m}-op{op}-{f}" for m, op, f in VARIANTS])
def test_parity(engine, models, tmp_path, model, opset, folding):
    vdir = models / model / f"op{opset}-{folding}"
    man = json.loads((vdir / "manifest.json").read_text())
    chw = man["input"]["shape"][1:]
    classes = man["output"]["shape"][1]
    failures = []
    runs = [(ref, 1) for ref in man["references"]]
    if ENGINE != "ort-node":
        runs += [(ref, 2) for ref in man["references"] if ref["batch"] > 1]
    for ref, threads in runs:
        batch = ref["batch"]
        what = f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}"
        inp, want_path = vdir / ref["input"], vdir / ref["output"]
        out = tmp_path / f"out-b{batch}-t{threads}.f32"
        r = _run(engine, vdir / "model.onnx", chw, inp, out, threads)
        assert r.returncode == 0, (f"{model} op{opset} {folding} {what}: engine exit "
                                   f"{r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
        want = np.fromfile(want_path, dtype="<f4").reshape(batch, classes)
        got = np.fromfile(out, dtype="<f4")
        assert got.size == want.size, (f"{model} op{opset} {folding} {what}: "
                                       f"{got.size} floats out, expected {want.size} ({batch}x{classes})")
        c = compare(got.reshape(batch, classes), want)
        print(f"{model} op{opset} {folding} {what}: max|a-b|={c['max_abs_diff']:.3e} "
              f"rel={c['rel']:.3e} (limit {REL_TOL:g}) min cosine={c['min_cosine']:.8f} "
              f"top1={c['top1_got']} (pytorch {c['top1_want']})")
        if c["rel"] > REL_TOL:
            failures.append(f"{what}: max|a-b|/max|b| = {c['rel']:.3e} > {REL_TOL:g}")
        if c["top1_got"] != c["top1_want"]:
            failures.append(f"{what}: top-1 {c['top1_got']} != PyTorch's {c['top1_want']}")
        if c["min_cosine"] < MIN_COSINE:
            failures.append(f"{what}: cosine {c['min_cosine']:.8f} < {MIN_COSINE}")
    assert not failures, f"{model} op{opset} {folding}: " + "; ".join(failures)


def test_truncated_input_is_an_error(engine, models, tmp_path):
    """An input that is not a whole number of images gives a clear error, no crash, no output."""
    m, op, f = VARIANTS[0]
    vdir = models / m / f"op{op}-{f}"
    man = json.loads((vdir / "manifest.json").read_text())
    data = (vdir / man["references"][0]["input"]).read_bytes()
    bad = tmp_path / "short.f32"
    bad.write_bytes(data[: len(data) - 6])
    out = tmp_path / "out.f32"
    r = _run(engine, vdir / "model.onnx", man["input"]["shape"][1:], bad, out)
    assert r.returncode > 0, f"expected an error exit, got {r.returncode}\n{r.stderr}"
    assert r.stderr.strip(), "the error must say what is wrong"
    print(f"truncated input: exit {r.returncode}: {r.stderr.strip().splitlines()[-1]}")
