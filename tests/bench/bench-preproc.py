"""Benchmark (meson benchmark 'preproc', suite bench): nn/ decoding + preprocessing and
`xregctl mean-std` against the Python reference (PIL + torchvision, tools/xreg_preprocess.py) on
the same inputs, measured in the same run. Prints times, ratios and the largest difference.

    meson test -C build --benchmark --suite bench preproc
    BENCH_N=3000 /usr/bin/python3 tests/bench/bench-preproc.py   # the whole xray folder

Needs ../shared/data/xray for the dataset part (skipped, loudly, without it)."""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(os.environ.get("XREG_SOURCE_ROOT", Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "nn"))
import pngwrite  # noqa: E402
import xreg_preprocess as xp  # noqa: E402

XREGCTL = os.environ.get("XREGCTL", str(ROOT / "build/daemon/xregctl"))
DUMP = os.environ.get("NN_PREPROC_DUMP", str(ROOT / "build/tests/unit/nn/nn-preproc-dump"))
DATA = Path(os.environ.get("XREG_SHARED_DATA", ROOT.parent / "shared" / "data")) / "xray"
META = {"xreg.input_size": "224,224", "xreg.channels": "3", "xreg.mean": "0.485,0.456,0.406",
        "xreg.std": "0.229,0.224,0.225", "xreg.resize": "letterbox"}
torch.set_num_threads(1)


def best_of(fn, n=5):
    best = 1e30
    for _ in range(n):
        t0 = time.perf_counter()
        r = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, r


def large_image(tmp):
    """A 3000 x 2500 16-bit gray PNG and an 8-bit JPEG of the same size, like a large CR."""
    yy, xx = np.mgrid[0:3000, 0:2500]
    v = (np.sin(xx / 40.0) + np.cos(yy / 55.0)) * 0.2 + 0.5 + np.random.default_rng(0).normal(
        0, 0.02, (3000, 2500))
    g16 = np.clip(v * 65535, 0, 65535).astype(np.uint16)
    p16 = tmp / "cr16.png"
    p16.write_bytes(pngwrite.encode(g16, 16, 0))
    pj = tmp / "cr8.jpg"
    Image.fromarray((g16 >> 8).astype(np.uint8), "L").save(pj, quality=95)
    return [p16, pj]


def bench_single(tmp):
    spec = xp.PreprocSpec.from_metadata(META)
    args = []
    for k, v in META.items():
        args += ["-m", f"{k}={v}"]
    print("decode + preprocess of one large image to 224x224 letterbox, 3 channels (best of 5):")
    for p in large_image(tmp):
        r = subprocess.run([DUMP, *args, "--repeat", "5", "--image", str(p), str(tmp / "o.raw")],
                           capture_output=True, text=True, check=True)
        f = dict(zip(r.stderr.split()[::2], map(float, r.stderr.split()[1::2])))
        c = np.fromfile(tmp / "o.raw", dtype=np.float32)
        t_load, t = best_of(lambda: xp.load_image(str(p), 3))
        t_pp, ref = best_of(lambda: xp.preprocess_tensor(t, spec))
        d = float(np.abs(c - ref.numpy().reshape(-1)).max())
        c_ms = f["decode_ms"] + f["preprocess_ms"]
        print(f"  {p.name:10s} nn/: decode {f['decode_ms']:7.1f} ms + preprocess "
              f"{f['preprocess_ms']:6.1f} ms = {c_ms:7.1f} ms | PIL+torchvision: decode "
              f"{t_load:7.1f} ms + preprocess {t_pp:6.1f} ms = {t_load + t_pp:7.1f} ms | "
              f"ratio {(t_load + t_pp) / c_ms:.2f}x | max |diff| {d:.2g}")


def bench_dataset(tmp):
    if not DATA.is_dir():
        print(f"SKIPPED dataset part: {DATA} not found (../shared/data/xray)")
        return
    n = int(os.environ.get("BENCH_N", "300"))
    files = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    files = files[::max(1, len(files) // n)][:n]
    d = tmp / "set"
    d.mkdir()
    for i, p in enumerate(files):
        (d / f"{i:05d}{p.suffix.lower()}").symlink_to(p)
    print(f"\nmean-std over {len(files)} radiographs from {DATA} (224x224 letterbox, 3 channels):")
    out = {}
    for jobs in (1, 2):
        t0 = time.perf_counter()
        r = subprocess.run([XREGCTL, "mean-std", "--resize", "letterbox", "--jobs", str(jobs),
                            "--json", str(d)], capture_output=True, text=True, check=True)
        out[jobs] = (time.perf_counter() - t0, r.stdout)
        print(f"  xregctl mean-std --jobs {jobs}: {out[jobs][0]:6.2f} s "
              f"({len(files) / out[jobs][0]:.1f} files/s)")
    import json
    got = json.loads(out[1][1])
    spec = xp.PreprocSpec(resize="letterbox")
    t0 = time.perf_counter()
    mean, std = xp.dataset_mean_std([str(p) for p in sorted(d.iterdir())], spec)
    tp = time.perf_counter() - t0
    diff = max(np.abs(np.array(got["mean"]) - mean).max(), np.abs(np.array(got["std"]) - std).max())
    print(f"  Python reference (PIL + torchvision, 1 thread): {tp:6.2f} s "
          f"({len(files) / tp:.1f} files/s); xregctl --jobs 1 is {tp / out[1][0]:.2f}x faster")
    print(f"  mean {np.round(got['mean'], 6).tolist()} std {np.round(got['std'], 6).tolist()}; "
          f"max |diff| vs reference {diff:.2g}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as t:
        bench_single(Path(t))
        bench_dataset(Path(t))
