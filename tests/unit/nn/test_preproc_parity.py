"""nn/'s decoder and preprocessing (through nn-preproc-dump) against the training side:
tools/xreg_preprocess.py and torchvision's own transforms. Bound: 1e-5 absolute on every element
(the measured maximum is printed; it is a few float32 ulps).

Needs /usr/bin/python3 with Debian's python3-torch, python3-torchvision, python3-pil. The real
images come from ../shared/data/xray and are skipped, loudly, where that folder is absent."""
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("XREG_SOURCE_ROOT", HERE.parents[2]))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(HERE))
import pngwrite  # noqa: E402
import xreg_preprocess as xp  # noqa: E402

DUMP = os.environ.get("NN_PREPROC_DUMP", str(ROOT / "build/tests/unit/nn/nn-preproc-dump"))
DATA = Path(os.environ.get("XREG_SHARED_DATA", ROOT.parent / "shared" / "data"))
TOL = 1e-5
IMAGENET = ("0.485,0.456,0.406", "0.229,0.224,0.225")
worst = {}


def note(kind, d):
    worst[kind] = max(worst.get(kind, 0.0), float(d))


@pytest.fixture(scope="session", autouse=True)
def report():
    yield
    print("\nmax |C - reference| by comparison:")
    for k, v in sorted(worst.items()):
        print(f"  {k:40s} {v:.3g}")


def run_dump(tmp, args, inp=None):
    out = tmp / "out.raw"
    r = subprocess.run([DUMP, *args, str(out)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"nn-preproc-dump {args}: rc {r.returncode}: {r.stderr.strip()}")
    c, h, w = map(int, r.stdout.split())
    return np.fromfile(out, dtype=np.float32).reshape(c, h, w)


def meta_args(meta):
    a = []
    for k, v in meta.items():
        a += ["-m", f"{k}={v}"]
    return a


def c_resize(tmp, x, H, W):
    c, h, w = x.shape
    p = tmp / "in.raw"
    x.astype(np.float32).tofile(p)
    return run_dump(tmp, ["-m", f"xreg.input_size={H},{W}", "-m", f"xreg.channels={c}",
                          "--raw", str(w), str(h), str(c), str(p)])


# ---------------------------------------------------------------------------------------------
# The resize alone, on random float planes: up, down, odd, 1-pixel and extreme aspect ratios.
def resize_cases():
    rng = random.Random(4)
    cases = [(1, 1, 1, 1), (1, 1, 224, 224), (224, 224, 1, 1), (2, 3, 5, 7), (224, 224, 224, 224),
             (1, 900, 224, 224), (900, 1, 224, 224), (3, 2000, 17, 31), (2000, 3, 31, 17),
             (3000, 2500, 224, 224), (2500, 3000, 384, 384), (7, 5, 512, 512), (224, 224, 225, 223),
             (449, 448, 224, 224), (100, 100, 33, 66), (64, 64, 299, 299), (1023, 17, 5, 1000)]
    for _ in range(120):
        cases.append((rng.randint(1, 400), rng.randint(1, 400), rng.randint(1, 300),
                      rng.randint(1, 300)))
    return cases


def test_resize_matches_torch_interpolate(tmp_path):
    rng = np.random.default_rng(7)
    fails = []
    for (h, w, H, W) in resize_cases():
        x = rng.random((1, h, w), dtype=np.float32)
        got = c_resize(tmp_path, x, H, W)
        ref = F.interpolate(torch.from_numpy(x)[None], size=(H, W), mode="bilinear",
                            align_corners=False, antialias=True)[0].numpy()
        d = np.abs(got - ref).max()
        note("resize vs F.interpolate(antialias)", d)
        if d > TOL:
            fails.append(((h, w, H, W), d))
    assert not fails, f"resize differs from torch beyond {TOL}: {fails[:5]}"


def test_resize_three_channels_and_range(tmp_path):
    rng = np.random.default_rng(8)
    for (h, w, H, W) in [(301, 199, 224, 224), (50, 80, 160, 90), (480, 640, 37, 43)]:
        # values far outside [0,1] too: the resize is linear and must not clamp
        x = (rng.random((3, h, w), dtype=np.float32) * 4 - 2).astype(np.float32)
        got = c_resize(tmp_path, x, H, W)
        ref = T.functional.resize(torch.from_numpy(x), [H, W], antialias=True).numpy()
        d = np.abs(got - ref).max()
        note("resize 3ch vs TF.resize", d)
        assert d <= TOL


# ---------------------------------------------------------------------------------------------
# Decoding: every PNG colour type and bit depth, interlaced and filtered, against PIL + ToTensor.
def png_cases():
    rng = np.random.default_rng(11)
    h, w = 13, 21
    out = []
    for depth in (1, 2, 4, 8, 16):
        a = rng.integers(0, 2 ** depth, (h, w))
        out.append((f"gray{depth}", pngwrite.encode(a, depth, 0)))
    for depth in (1, 2, 4, 8):
        n = 2 ** depth
        pal = rng.integers(0, 256, (n, 3))
        a = rng.integers(0, n, (h, w))
        out.append((f"palette{depth}", pngwrite.encode(a, depth, 3, palette=pal)))
        trns = bytes(rng.integers(0, 256, n // 2 + 1).astype(np.uint8))
        out.append((f"palette{depth}-trns", pngwrite.encode(a, depth, 3, palette=pal, trns=trns)))
    gpal = np.repeat(np.arange(256)[:, None], 3, 1)
    out.append(("palette8-gray", pngwrite.encode(rng.integers(0, 256, (h, w)), 8, 3, palette=gpal)))
    for depth in (8, 16):
        m = 2 ** depth
        out.append((f"ga{depth}", pngwrite.encode(rng.integers(0, m, (h, w, 2)), depth, 4)))
        out.append((f"rgb{depth}", pngwrite.encode(rng.integers(0, m, (h, w, 3)), depth, 2)))
        out.append((f"rgba{depth}", pngwrite.encode(rng.integers(0, m, (h, w, 4)), depth, 6)))
    out.append(("gray8-trns", pngwrite.encode(rng.integers(0, 256, (h, w)), 8, 0,
                                               trns=b"\x00\x07")))
    out.append(("gray16-interlaced-filtered",
                pngwrite.encode(rng.integers(0, 65536, (h, w)), 16, 0, interlace=True, filters=1)))
    out.append(("rgb8-interlaced-filtered",
                pngwrite.encode(rng.integers(0, 256, (h, w, 3)), 8, 2, interlace=True, filters=1)))
    out.append(("gray2-interlaced", pngwrite.encode(rng.integers(0, 4, (h, w)), 2, 0,
                                                     interlace=True)))
    out.append(("palette4-interlaced-split",
                pngwrite.encode(rng.integers(0, 16, (h, w)), 4, 3, palette=rng.integers(
                    0, 256, (16, 3)), interlace=True, filters=1, idat_split=7)))
    out.append(("rgb8-gamma-text", pngwrite.encode(
        rng.integers(0, 256, (h, w, 3)), 8, 2,
        extra_chunks=[(b"gAMA", (45455).to_bytes(4, "big")), (b"tEXt", b"Comment\x00hello")])))
    out.append(("gray8-1x1", pngwrite.encode(np.array([[200]]), 8, 0)))
    out.append(("gray16-1x600", pngwrite.encode(rng.integers(0, 65536, (1, 600)), 16, 0)))
    return out


@pytest.mark.parametrize("name,data", png_cases(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("gray", [False, True], ids=["native", "gray"])
def test_png_decode_matches_pil(tmp_path, name, data, gray):
    p = tmp_path / f"{name}.png"
    p.write_bytes(data)
    got = run_dump(tmp_path, ["--decode-only", "--image", str(p)] + (["--gray"] if gray else []))
    ref = xp.load_image(str(p), 1 if gray else 3).numpy()
    if got.shape[0] != ref.shape[0]:
        # PIL opens 16-bit gray+alpha as RGBA with R=G=B; nn keeps it as one gray channel.
        assert name == "ga16" and got.shape[0] == 1 and not gray, (name, got.shape, ref.shape)
        assert (ref == ref[:1]).all()
        ref = ref[:1]
    assert got.shape == ref.shape
    d = np.abs(got - ref).max()
    note("PNG decode vs PIL+ToTensor", d)
    assert d == 0, f"{name}: decoded pixels differ from PIL by up to {d}"


def jpeg_cases():
    rng = np.random.default_rng(12)
    base = np.clip(np.add.outer(np.arange(61) * 3, np.arange(47) * 2) % 256 +
                   rng.normal(0, 20, (61, 47)), 0, 255).astype(np.uint8)
    rgb = np.stack([base, base[::-1], 255 - base], -1)
    out = []
    for kw in ({}, {"quality": 95, "subsampling": 0}, {"quality": 50, "subsampling": 2},
               {"progressive": True}, {"optimize": True, "subsampling": 1}):
        for mode, arr in (("L", base), ("RGB", rgb)):
            b = io.BytesIO()
            Image.fromarray(arr, mode).save(b, "JPEG", **kw)
            out.append((f"{mode}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}",
                        b.getvalue()))
    return out


@pytest.mark.parametrize("name,data", jpeg_cases(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("gray", [False, True], ids=["native", "gray"])
def test_jpeg_decode_matches_pil(tmp_path, name, data, gray):
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    got = run_dump(tmp_path, ["--decode-only", "--image", str(p)] + (["--gray"] if gray else []))
    ref = xp.load_image(str(p), 1 if gray else 3).numpy()
    assert got.shape == ref.shape
    d = np.abs(got - ref).max()
    note("JPEG decode vs PIL+ToTensor", d)
    assert d == 0, f"{name}: decoded pixels differ from PIL by up to {d}"


# ---------------------------------------------------------------------------------------------
# The whole pipeline: C against the reference module and against torchvision transforms.
SPECS = [
    {"xreg.input_size": "224,224", "xreg.channels": "3", "xreg.mean": IMAGENET[0],
     "xreg.std": IMAGENET[1], "xreg.resize": "stretch"},
    {"xreg.input_size": "299,299", "xreg.channels": "3", "xreg.mean": "0.5", "xreg.std": "0.25",
     "xreg.resize": "letterbox"},
    {"xreg.input_size": "256,192", "xreg.channels": "1", "xreg.mean": "0.4",
     "xreg.std": "0.3", "xreg.resize": "letterbox"},
    {"xreg.input_size": "97,385", "xreg.channels": "3", "xreg.resize": "letterbox"},
]


def torchvision_direct(path, meta):
    """The pipeline written with torchvision transforms only (no xreg code but geometry)."""
    spec = xp.PreprocSpec.from_metadata(meta)
    with Image.open(path) as im:
        im.load()
        if im.mode not in ("L", "RGB", "P", "RGBA", "LA", "1"):
            return None  # 16-bit: plain ToTensor does not scale it; only the reference does
        gray = im.mode in ("L", "LA", "1")
        im = im.convert("L" if gray or spec.channels == 1 else "RGB")
        w, h = im.size
    rh, rw, top, left = xp.geometry(spec, w, h)
    steps = [T.ToTensor(), T.Resize((rh, rw), antialias=True),
             T.Pad([left, top, spec.width - rw - left, spec.height - rh - top], fill=0)]
    if gray and spec.channels == 3:
        steps.append(T.Lambda(lambda t: t.repeat(3, 1, 1)))
    steps.append(T.Normalize(spec.mean, spec.std))
    return T.Compose(steps)(im).numpy()


def check_pipeline(tmp_path, path, meta, label):
    got = run_dump(tmp_path, meta_args(meta) + ["--image", str(path)])
    spec = xp.PreprocSpec.from_metadata(meta)
    ref = xp.preprocess_file(str(path), spec).numpy()
    assert got.shape == ref.shape == (spec.channels, spec.height, spec.width)
    d = np.abs(got - ref).max()
    note(f"{label} vs xreg_preprocess", d)
    assert d <= TOL, f"{path} {meta}: differs from the reference by {d}"
    tv = torchvision_direct(path, meta)
    if tv is not None:
        d2 = np.abs(got - tv).max()
        note(f"{label} vs torchvision transforms", d2)
        assert d2 <= TOL, f"{path} {meta}: differs from torchvision transforms by {d2}"


def synthetic_images(tmp):
    rng = np.random.default_rng(13)
    files = []
    for (h, w) in [(1, 1), (5, 900), (900, 5), (333, 257), (224, 224), (64, 64), (1200, 1000)]:
        yy, xx = np.mgrid[0:h, 0:w]
        img = ((np.sin(xx / 7.0) + np.cos(yy / 11.0)) * 60 + 128 + rng.normal(0, 10, (h, w)))
        g8 = np.clip(img, 0, 255).astype(np.uint8)
        p = tmp / f"g{h}x{w}.png"
        Image.fromarray(g8, "L").save(p)
        files.append(p)
        p = tmp / f"c{h}x{w}.jpg"
        Image.fromarray(np.stack([g8, g8[::-1], 255 - g8], -1), "RGB").save(p, quality=90)
        files.append(p)
        p = tmp / f"g16_{h}x{w}.png"
        p.write_bytes(pngwrite.encode(np.clip(img * 256, 0, 65535).astype(np.uint16), 16, 0))
        files.append(p)
    return files


def test_pipeline_synthetic(tmp_path):
    for path in synthetic_images(tmp_path):
        for meta in SPECS:
            check_pipeline(tmp_path, path, meta, "pipeline synthetic")


def real_images(n_per_kind=12):
    xray = DATA / "xray"
    if not xray.is_dir():
        msg = f"SKIPPED: real X-ray images not found at {xray} (../shared/data/xray)"
        print(msg, file=sys.stderr)
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " under CI")
        pytest.skip(msg)
    by_ext = {}
    for p in sorted(xray.rglob("*")):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            by_ext.setdefault(p.suffix.lower(), []).append(p)
    rng = random.Random(5)
    picked = []
    for ext, ps in sorted(by_ext.items()):
        picked += rng.sample(ps, min(n_per_kind, len(ps)))
    return picked


def test_pipeline_real_xrays(tmp_path):
    files = real_images()
    assert files
    print(f"\nreal images: {len(files)} from {DATA / 'xray'}")
    for path in files:
        got = run_dump(tmp_path, ["--decode-only", "--image", str(path)])
        ref = xp.load_image(str(path), 3).numpy()
        if got.shape[0] == 1 and ref.shape[0] == 3:
            ref = ref[:1]  # see test_png_decode_matches_pil (16-bit gray+alpha)
        assert got.shape == ref.shape, path
        d = np.abs(got - ref).max()
        note("real decode vs PIL+ToTensor", d)
        assert d == 0, f"{path}: decoded pixels differ from PIL by {d}"
        for meta in SPECS:
            check_pipeline(tmp_path, path, meta, "pipeline real")


def test_other_formats_refused_by_both(tmp_path):
    p = tmp_path / "x.tiff"
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(p)
    r = subprocess.run([DUMP, "--decode-only", "--image", str(p), str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not a PNG or JPEG file" in r.stderr
    with pytest.raises(ValueError, match="PNG and JPEG files only"):
        xp.load_image(str(p))


# ---------------------------------------------------------------------------------------------
# Metadata errors and limits through the same driver.
@pytest.mark.parametrize("meta,needle", [
    ({"xreg.input_size": "224"}, 'invalid "xreg.input_size": "224"'),
    ({"xreg.input_size": "224,0"}, 'invalid "xreg.input_size"'),
    ({"xreg.input_size": "224,99999"}, "each in [1, 8192]"),
    ({"xreg.input_size": "224,224", "xreg.channels": "2"}, 'invalid "xreg.channels": "2"'),
    ({"xreg.input_size": "224,224", "xreg.mean": "0.1,0.2"}, 'invalid "xreg.mean": "0.1,0.2"'),
    ({"xreg.input_size": "224,224", "xreg.std": "0.2,0,0.2"}, "greater than 0"),
    ({"xreg.input_size": "224,224", "xreg.std": "nan"}, 'invalid "xreg.std"'),
    ({"xreg.input_size": "224,224", "xreg.resize": "crop"}, 'invalid "xreg.resize": "crop"'),
    ({"xreg.channels": "3"}, 'no "xreg.input_size"'),
])
def test_bad_metadata(tmp_path, meta, needle):
    p = tmp_path / "x.png"
    p.write_bytes(pngwrite.encode(np.zeros((4, 4), np.uint8), 8, 0))
    r = subprocess.run([DUMP, *meta_args(meta), "--image", str(p), str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert needle in r.stderr, r.stderr
    with pytest.raises(ValueError):
        xp.PreprocSpec.from_metadata(meta)
