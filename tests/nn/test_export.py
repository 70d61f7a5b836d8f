"""tools/export-models.py itself: what the parity tests and the benchmark rely on (tiny models,
seconds). Needs Debian's python3-torch, -torchvision and -onnx (run with /usr/bin/python3)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(os.environ.get("XREG_SOURCE_ROOT", pathlib.Path(__file__).resolve().parents[2]))
EXPORT = ROOT / "tools" / "export-models.py"
onnx = pytest.importorskip("onnx")


def export(out: pathlib.Path, *args: str) -> list[dict]:
    r = subprocess.run(["/usr/bin/python3", str(EXPORT), "--out", str(out), *args],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("models")
    summary = export(out, "--models", "tiny")
    assert len(summary) == 12 and all(s["made"] for s in summary)
    return out


@pytest.mark.parametrize("model", ["tiny_resnet", "tiny_efficientnet", "tiny_vit"])
@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("folding", ["fold", "nofold"])
def test_variant(tiny, model, opset, folding):
    vdir = tiny / model / f"op{opset}-{folding}"
    man = json.loads((vdir / "manifest.json").read_text())
    m = onnx.load(str(vdir / "model.onnx"))
    onnx.checker.check_model(m)
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    props = {p.key: p.value for p in m.metadata_props}
    size = man["input"]["shape"][2]
    assert props["xreg.task"] == "test"
    assert props["xreg.labels"].split(",") == [f"class{i}" for i in range(10)]
    assert props["xreg.input_size"] == f"{size},{size}"
    assert props["xreg.channels"] == "3" and props["xreg.resize"] == "stretch"
    assert len(props["xreg.mean"].split(",")) == 3 and len(props["xreg.std"].split(",")) == 3
    # dynamic batch on input and output
    (inp,) = m.graph.input
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, size, size]
    assert m.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = {n.op_type for n in m.graph.node}
    if model != "tiny_vit":
        # nofold leaves BatchNormalization for xreg to fold; the exporter fuses it otherwise
        assert ("BatchNormalization" in ops) == (folding == "nofold"), sorted(ops)
    else:
        assert ("LayerNormalization" in ops) == (opset >= 17), sorted(ops)
        assert "Erf" in ops and "Softmax" in ops
    if model == "tiny_efficientnet":
        assert "Sigmoid" in ops and any(n.op_type == "Conv" and any(
            a.name == "group" and a.i > 1 for a in n.attribute) for n in m.graph.node)
    # references: batch 1 and 3, sizes consistent, outputs not degenerate, top-1 margins
    ref = json.loads((tiny / model / "ref" / "ref.json").read_text())
    assert [c["batch"] for c in ref["cases"]] == [1, 3]
    for c, r in zip(ref["cases"], man["references"]):
        x = np.fromfile(vdir / r["input"], dtype="<f4")
        y = np.fromfile(vdir / r["output"], dtype="<f4").reshape(c["batch"], 10)
        assert x.size == c["batch"] * 3 * size * size
        assert np.isfinite(y).all() and y.std() > 0.05
        top2 = np.sort(y, axis=1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() >= 2.5e-3 * np.abs(y).max()
        assert y.argmax(1).tolist() == c["top1"]
    if c["batch"] > 1:  # outputs depend on the input
        assert np.abs(y - y.mean(0)).max() > 0.01 * np.abs(y).max()


def test_cached_and_deterministic(tiny, tmp_path):
    """A second run rebuilds nothing; a fresh run gives bit-identical references."""
    assert not any(s["made"] for s in export(tiny, "--models", "tiny"))
    export(tmp_path, "--variants", "tiny_vit:17:nofold")
    for f in ("input-b3.f32", "output-b3.f32"):
        assert (tmp_path / "tiny_vit" / "ref" / f).read_bytes() == (tiny / "tiny_vit" / "ref" / f).read_bytes()


def test_bad_arguments(tmp_path):
    for args, what in ((["--models", "resnet9"], "unknown model 'resnet9'"),
                       (["--opsets", "9"], "opset 9 outside 11..17"),
                       (["--folding", "maybe"], "folding 'maybe'")):
        r = subprocess.run(["/usr/bin/python3", str(EXPORT), "--out", str(tmp_path), *args],
                           capture_output=True, text=True)
        assert r.returncode == 2 and what in r.stderr, r.stderr
