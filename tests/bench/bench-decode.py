#!/usr/bin/python3
"""Decode + grayscale time of a large CR: xreg against pydicom + numpy and DCMTK's dcm2pnm, all
in the same run on the same files.

    # what `meson test -C build --benchmark decode` runs:
    XREGCTL=build/daemon/xregctl /usr/bin/python3 tests/bench/bench-decode.py
    # other sizes / more runs:
    XREGCTL=build/daemon/xregctl /usr/bin/python3 tests/bench/bench-decode.py --rows 3000 \\
        --columns 2500 --runs 9

The image: ROWS x COLUMNS (default 3000 x 2500), 16 bits allocated, 12 stored, MONOCHROME1,
no window in the header (so every contender computes a window from the data), written
uncompressed (explicit VR little endian) and as JPEG lossless SV1 (dcmcjpeg +e1).

Contenders, each the median of --runs:
  xreg in-process    xregctl dicom-decode --repeat N: the fastest of N dicom_image_read calls
                     (parse, decode, grayscale to float [0,1], 0.5/99.5 percentile window)
  xreg process       one `xregctl dicom-decode FILE` (adds process start and dictionary load)
  pydicom+numpy      dcmread + pixel_array + the same grayscale in numpy (pixref.grayscale),
                     in this Python process (JPEG lossless through pydicom's GDCM handler,
                     Debian python3-gdcm; "n/a" without it)
  dcm2pnm            `dcm2pnm +Wm --write-16-bit-pnm FILE out.pgm` (min-max window, 16-bit PGM),
                     one process per run like "xreg process"; for JPEG its JPEG-enabled twin
                     dcmj2pnm (Debian's dcm2pnm has no JPEG decoder registered)
Every row gives wall time and, in brackets, CPU time (user + sys: of the child for process
rows, of the process for in-process rows), which is steadier on a shared machine. Ratios are contender / xreg (higher = xreg faster).
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pydicom

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "pixels"))
import pixref  # noqa: E402


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", os.path.join(HERE, "..", "pixels", "make-fixtures.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def timed_proc(cmd, runs):
    """Median wall and CPU ms of running cmd."""
    wall, cpu = [], []
    for _ in range(runs):
        u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall.append((time.perf_counter() - t0) * 1e3)
        u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def timed(fn, runs):
    """Median wall and CPU ms of fn() in this process."""
    t, c = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
        c.append((time.process_time() - c0) * 1e3)
    return statistics.median(t), statistics.median(c)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--columns", type=int, default=2500)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    xregctl = pixref.XREGCTL
    if not os.path.exists(xregctl):
        print(f"bench-decode: {xregctl} is missing (set XREGCTL)", file=sys.stderr)
        return 77 if os.environ.get("CI") != "true" else 1
    g = load_generator()
    with tempfile.TemporaryDirectory() as d:
        ds = g.base()
        g.mono(ds, (4095 - g.xray(a.rows, a.columns, 0, 4095))[None], 16, 12, False,
               pi="MONOCHROME1")
        raw = os.path.join(d, "cr-uncompressed.dcm")
        ds.save_as(raw, write_like_original=False)
        jll = os.path.join(d, "cr-jpeg-lossless.dcm")
        subprocess.run(["dcmcjpeg", "+e1", raw, jll], check=True)
        files = [("uncompressed", raw), ("JPEG lossless SV1", jll)]
        print(f"bench-decode: {a.rows} x {a.columns} CR, 16/12 bits, MONOCHROME1; "
              f"{os.path.getsize(raw) >> 10} KiB uncompressed, {os.path.getsize(jll) >> 10} KiB "
              f"JPEG lossless; median of {a.runs} runs, ms")
        results = []
        for label, f in files:
            r = subprocess.run([xregctl, "dicom-decode", "--json", "--repeat", str(a.runs), f],
                               capture_output=True, text=True, check=True)
            inproc = json.loads(r.stdout)["decode_ms"]
            inproc_cpu = json.loads(r.stdout)["decode_cpu_ms"]
            proc, proc_cpu = timed_proc([xregctl, "dicom-decode", f], a.runs)

            def pyd():
                x = pydicom.dcmread(f)
                arr = x.pixel_array.astype(np.int64)
                pixref.grayscale(x, arr[None, ..., None], x.PhotometricInterpretation)
            try:
                pyd()
                py, py_cpu = timed(pyd, a.runs)
            except Exception as e:  # no handler for this transfer syntax
                py = py_cpu = None
                why = f"{type(e).__name__}: no pydicom handler for it (python3-gdcm missing?)"
            out = os.path.join(d, "o.pgm")
            tool = "dcm2pnm" if f == raw else "dcmj2pnm"
            dcm, dcm_cpu = timed_proc([tool, "+Wm", "--write-16-bit-pnm", f, out], a.runs)
            results.append((label, inproc, inproc_cpu, proc, proc_cpu, py, py_cpu, dcm, dcm_cpu))
            print(f"  {label}:")
            print(f"    xreg in-process   {inproc:8.1f}  [{inproc_cpu:.0f} CPU]")
            print(f"    xreg process      {proc:8.1f}  [{proc_cpu:.0f} CPU]")
            if py is None:
                print(f"    pydicom+numpy          n/a  ({why})")
            else:
                print(f"    pydicom+numpy     {py:8.1f}  [{py_cpu:.0f} CPU]  x{py / inproc:.1f} of xreg "
                      f"in-process wall, x{py_cpu / max(inproc_cpu, 1e-3):.1f} CPU")
            print(f"    {tool + ' process':17} {dcm:8.1f}  [{dcm_cpu:.0f} CPU]  x{dcm / proc:.2f} "
                  f"of xreg process wall, x{dcm_cpu / max(proc_cpu, 1e-3):.2f} CPU")
        print("json: " + json.dumps([dict(zip(("file", "xreg_inprocess_ms", "xreg_inprocess_cpu_ms",
                                               "xreg_process_ms", "xreg_process_cpu_ms",
                                               "pydicom_numpy_ms", "pydicom_numpy_cpu_ms",
                                               "dcm2pnm_process_ms", "dcm2pnm_process_cpu_ms"), r))
                                     for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
