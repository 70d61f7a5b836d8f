"""`xregctl mean-std` against numpy on a generated dataset: PNG (8/16-bit, gray, RGB), JPEG
(gray, RGB) and DICOM (12-bit with a window, MONOCHROME1 without one, multi-frame) of mixed
sizes, plus files it must skip (CSV) and report as unreadable (damaged PNG and DICOM).

The expected values are computed without xreg's C code: images through tools/xreg_preprocess.py
(PIL + torchvision), DICOM frames as `xregctl dicom-decode` decodes them (the pixel decoder is
tested on its own in tests/pixels) then through the same torchvision pipeline; numpy float64 mean
and population std over all pixels."""
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("XREG_SOURCE_ROOT", HERE.parents[2]))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(HERE))
import pngwrite  # noqa: E402
import xreg_preprocess as xp  # noqa: E402

XREGCTL = os.environ.get("XREGCTL", str(ROOT / "build/daemon/xregctl"))
TOL = 1e-5


def write_dicom(path, frames, bits_stored=12, photometric="MONOCHROME2", window=None):
    n, rows, cols = frames.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3" if n > 1 else \
        "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR" if n == 1 else "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if n > 1:
        ds.NumberOfFrames = n
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = frames.astype(np.uint16 if bits_stored > 8 else np.uint8).tobytes()
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.save_as(str(path), write_like_original=False)


def smooth(h, w, seed, scale=255):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    v = (np.sin(xx / (5.0 + seed)) + np.cos(yy / 9.0)) * 0.25 + 0.5 + rng.normal(0, 0.05, (h, w))
    return np.clip(v * scale, 0, scale)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("meanstd")
    (d / "a" / "b").mkdir(parents=True)
    (d / "c").mkdir()
    Image.fromarray(smooth(300, 200, 1).astype(np.uint8), "L").save(d / "a" / "g1.png")
    Image.fromarray(smooth(41, 67, 2).astype(np.uint8), "L").save(d / "a" / "b" / "g2.jpg",
                                                                    quality=85)
    rgb = np.stack([smooth(120, 90, 3), smooth(120, 90, 4), smooth(120, 90, 5)], -1)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(d / "c" / "rgb.jpg", quality=92)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(d / "c" / "rgb.png")
    (d / "g16.png").write_bytes(pngwrite.encode(smooth(77, 500, 6, 65535).astype(np.uint16), 16, 0))
    write_dicom(d / "a" / "cr12.dcm", smooth(256, 200, 7, 4095)[None].astype(np.uint16),
                window=(2000, 3000))
    write_dicom(d / "c" / "mono1_8bit", smooth(64, 300, 8)[None].astype(np.uint8), bits_stored=8,
                photometric="MONOCHROME1")
    write_dicom(d / "multi.dcm", np.stack([smooth(50, 40, s, 4095) for s in (9, 10, 11)])
                .astype(np.uint16))
    # not images: skipped
    (d / "labels.csv").write_text("file,label\na/g1.png,knee\n")
    (d / "a" / "README").write_text("not an image\n")
    # damaged images: unreadable
    good = (d / "a" / "g1.png").read_bytes()
    (d / "c" / "broken.png").write_bytes(good[:len(good) // 2])
    (d / "c" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    return d


def expected(d, spec, frames="first"):
    """numpy mean/std over the reference tensors of every readable image under d."""
    tensors = []
    for p in sorted(d.rglob("*")):
        if not p.is_file() or p.name in ("labels.csv", "README") or p.name.startswith("broken"):
            continue
        s = xp.PreprocSpec(**{**spec.__dict__, "normalize": False})
        head = p.read_bytes()[:8]
        if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff"):
            tensors.append(xp.preprocess_file(str(p), s).numpy())
            continue
        out = p.parent / (p.name + ".f32")
        r = subprocess.run([XREGCTL, "dicom-decode", "--json", "--frames", frames, "--out",
                            str(out), str(p)], capture_output=True, text=True, check=True)
        info = json.loads(r.stdout)
        px = np.fromfile(out, dtype="<f4").reshape(info["n_frames"], info["rows"],
                                                   info["columns"])
        out.unlink()
        for f in px:
            tensors.append(xp.preprocess_tensor(torch.from_numpy(f.copy())[None], s).numpy())
    x = np.stack(tensors).astype(np.float64)  # N x C x H x W
    x = x.transpose(1, 0, 2, 3).reshape(spec.channels, -1)
    return x.mean(1), x.std(1), len(tensors)


def run(args, **kw):
    return subprocess.run([XREGCTL, "mean-std", *args], capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.mark.parametrize("size,channels,resize,frames", [
    ((224, 224), 3, "stretch", "first"),
    ((64, 96), 1, "letterbox", "all"),
    ((97, 31), 3, "letterbox", "all"),
])
def test_mean_std_matches_numpy(dataset, size, channels, resize, frames):
    spec = xp.PreprocSpec(height=size[0], width=size[1], channels=channels,
                          mean=(0.0,) * channels, std=(1.0,) * channels, resize=resize)
    r = run(["--size", f"{size[0]},{size[1]}", "--channels", str(channels), "--resize", resize,
             "--frames", frames, "--json", str(dataset)])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    mean, std, n_inputs = expected(dataset, spec, frames)
    print(f"\n{size} {channels}ch {resize} {frames}: xregctl mean {got['mean']} std {got['std']}"
          f"\n  numpy mean {mean.tolist()} std {std.tolist()}")
    dm = np.abs(np.array(got["mean"]) - mean).max()
    ds = np.abs(np.array(got["std"]) - std).max()
    print(f"  max |diff| mean {dm:.3g} std {ds:.3g}")
    assert dm < TOL and ds < TOL
    f = got["files"]
    assert f["found"] == 12
    assert f["used"] == 8 and f["dicom"] == 3 and f["images"] == 5
    assert f["inputs"] == n_inputs == (10 if frames == "all" else 8)
    assert f["skipped"] == 2 and f["unreadable"] == 2
    assert sorted(Path(p).name for p in got["skipped"]) == ["README", "labels.csv"]
    bad = {Path(u["path"]).name: u["error"] for u in got["unreadable"]}
    assert set(bad) == {"broken.png", "broken.dcm"}
    assert "truncated" in bad["broken.png"]
    assert got["pixels_per_channel"] == n_inputs * size[0] * size[1]
    # unreadable files are also listed on stderr
    assert "unreadable: " in r.stderr and "broken.png" in r.stderr


def test_text_output_jobs_and_order(dataset):
    outs = []
    for jobs in ("1", "3"):
        r = run(["--jobs", jobs, str(dataset)])
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    lines = [dict(l.split("=", 1) for l in o.splitlines() if l.startswith("xreg.")) for o in outs]
    assert lines[0] == lines[1]  # bit-identical whatever the thread count
    assert len(lines[0]["xreg.mean"].split(",")) == 3
    assert "12 found, 8 used" in outs[0]
    # the printed values are what --json gives, rounded
    j = json.loads(run(["--json", str(dataset)]).stdout)
    assert np.allclose([float(v) for v in lines[0]["xreg.std"].split(",")], j["std"], atol=1e-6)


def test_metadata_options(dataset):
    a = run(["--size", "97,31", "--channels", "1", "--resize", "letterbox", "--json", str(dataset)])
    b = run(["-m", "xreg.input_size=97,31", "-m", "xreg.channels=1", "-m", "xreg.resize=letterbox",
             "-m", "xreg.mean=0.5", "-m", "xreg.labels=a,b", "--json", str(dataset)])
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["mean"] == jb["mean"] and ja["std"] == jb["std"] and jb["channels"] == 1
    r = run(["-m", "xreg.channels=3", str(dataset)])
    assert r.returncode == 2 and 'no "xreg.input_size"' in r.stderr
    r = run(["-m", "xreg.input_size", str(dataset)])
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr


def test_strict_stops_at_unreadable(dataset):
    r = run(["--strict", str(dataset)])
    assert r.returncode == 1
    assert "broken" in r.stderr and "--strict" in r.stderr
    assert r.stdout == ""


def test_no_images_and_usage_errors(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    r = run([str(tmp_path)])
    assert r.returncode == 1 and "no readable PNG, JPEG or DICOM image" in r.stderr
    for args, needle in [(["--size", "224", str(tmp_path)], "--size \"224\" must be H,W"),
                         (["--size", "0,224", str(tmp_path)], "each side must be in [1, 8192]"),
                         (["--channels", "2", str(tmp_path)], "must be 1 or 3"),
                         (["--resize", "crop", str(tmp_path)], "must be stretch or letterbox"),
                         (["--frames", "some", str(tmp_path)], "must be first or all"),
                         (["--jobs", "0", str(tmp_path)], "--jobs"),
                         ([str(tmp_path / "missing")], "is not a directory"),
                         ([], "Usage:")]:
        r = run(args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr, (args, r.stderr)


def test_symlinks_followed_and_loops_end(tmp_path):
    d = tmp_path / "set"
    (d / "train").mkdir(parents=True)
    Image.fromarray(smooth(30, 40, 1).astype(np.uint8), "L").save(tmp_path / "orig.png")
    (d / "train" / "x.png").symlink_to(tmp_path / "orig.png")
    (d / "train" / "loop").symlink_to(d)        # back to the root
    (d / "train" / "self").symlink_to(".")      # to itself
    (d / "dangling.png").symlink_to(tmp_path / "missing.png")
    r = run(["--json", str(d)])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["files"]["found"] == 1 and got["files"]["used"] == 1
    assert "dangling.png" in r.stderr  # reported, not fatal


def test_progress_only_on_a_terminal(dataset):
    r = run([str(dataset)])
    assert "files/s" not in r.stderr  # stderr is a pipe: silent
    master, slave = pty.openpty()
    p = subprocess.Popen([XREGCTL, "mean-std", "--jobs", "1", str(dataset)],
                         stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    out, _ = p.communicate(timeout=60)
    os.close(master)
    assert p.returncode == 0
    assert b"12/12 files" in seen and b"files/s" in seen, seen
    assert "xreg.mean=" in out


def test_real_xray_folder_smoke(tmp_path):
    """A slice of ../shared/data/xray through mean-std and the reference (skipped loudly where
    the data is absent)."""
    data = Path(os.environ.get("XREG_SHARED_DATA", ROOT.parent / "shared" / "data")) / "xray"
    if not data.is_dir():
        msg = f"SKIPPED: {data} not found (../shared/data/xray)"
        print(msg, file=sys.stderr)
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " under CI")
        pytest.skip(msg)
    picked = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    picked = picked[::max(1, len(picked) // 40)][:40]
    for i, p in enumerate(picked):
        (tmp_path / f"{i:03d}{p.suffix.lower()}").symlink_to(p)  # links are followed
    spec = xp.PreprocSpec(height=224, width=224, channels=3, resize="letterbox")
    r = run(["--resize", "letterbox", "--json", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    mean, std, n = expected(tmp_path, spec)
    assert got["files"]["used"] == n == len(picked)
    d = max(np.abs(np.array(got["mean"]) - mean).max(), np.abs(np.array(got["std"]) - std).max())
    print(f"\nreal x-rays ({n}): max |diff| vs numpy {d:.3g}")
    assert d < TOL
