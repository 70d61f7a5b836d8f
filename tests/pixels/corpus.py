#!/usr/bin/python3
"""Decode every file of the real corpora with xreg and print a table: what decodes (and whether
it equals the reference decoder, stored values and grayscale), what is refused and why.

    /usr/bin/python3 tests/pixels/corpus.py [--xregctl PATH] [--markdown] [DIR...]

Default DIRs: ../shared/data/dicom (from the source root) and pydicom's test_files. Exit
status 1 if any file crashed xreg (a signal or an exit code other than 0/1), gave an empty or
unclear message, or decoded differently from its reference; refusals are not failures.
"""
import argparse
import os
import subprocess
import sys

import numpy as np
import pydicom

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pixref  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# Error classes xreg may give for a file it does not decode (xr_code names, dicom.h).
CLEAR = ("input: ", "unsupported: ", "limit: ")


def default_dirs():
    dirs = [os.environ.get("XREG_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
            + "/dicom"]
    try:
        import pydicom.data
        dirs.append(os.path.join(os.path.dirname(pydicom.data.__file__), "test_files"))
    except ImportError:
        pass
    return dirs


def files_in(d):
    out = []
    for base, _, names in os.walk(d):
        for n in sorted(names):
            if n.endswith((".py", ".pyc", ".tsv", ".md", ".txt", ".json")) or n == "README":
                continue
            out.append(os.path.join(base, n))
    return sorted(out)


def check(path):
    """(status, detail): status in decoded, decoded-noref, refused, MISMATCH, CRASH, UNCLEAR."""
    cmd = [pixref.XREGCTL, "dicom-decode", "--json", "--frames", "all"]
    try:
        rc, info, raw, gray, err = pixref.xreg_decode(path, frames="all")
    except subprocess.TimeoutExpired:
        return "CRASH", "timeout"
    if err and ("Sanitizer" in err or "runtime error:" in err):
        return "CRASH", "sanitizer: " + next(l for l in err.splitlines() if "Sanitizer" in l or "runtime error:" in l)[:200]
    if rc != 0:
        msg = err.strip().splitlines()[0] if err.strip() else ""
        if rc < 0 or rc > 1:
            return "CRASH", f"exit {rc}: {msg}"
        if not msg.startswith(CLEAR) or len(msg) < 20:
            return "UNCLEAR", msg
        return "refused", msg.replace(path, "FILE")
    desc = (f"{info['rows']}x{info['columns']}x{info['n_frames']} "
            f"{info['photometric_interpretation']} {info['bits_stored']}/{info['bits_allocated']}"
            f"{'s' if info['is_signed'] else ''} voi={info['voi_source']}")
    try:
        ref, cm, how = pixref.reference_stored(path)
    except Exception as e:  # the reference cannot decode it: report, do not fail
        return "decoded-noref", f"{desc}; reference failed: {str(e)[:120]}"
    if ref.shape != raw.shape:
        return "MISMATCH", f"{desc}; shape {raw.shape} vs {how} {ref.shape}"
    d = np.abs(raw.astype(np.int64) - ref)
    tol = 1 if info["lossy"] else 0
    if d.max() > tol:
        return "MISMATCH", f"{desc}; stored values differ from {how} by up to {d.max()}"
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        want = pixref.grayscale(ds, raw.astype(np.int64), cm)
    except Exception as e:
        return "MISMATCH", f"{desc}; the numpy reference failed: {e!r}"[:300]
    g = np.abs(gray.astype(np.float64) - want).max()
    if g > 1e-5:
        return "MISMATCH", f"{desc}; grayscale differs from numpy PS3.3 by {g:.3g}"
    return "decoded", f"{desc}; = {how}{' (lossy, max diff %d)' % d.max() if info['lossy'] else ''}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xregctl")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("dirs", nargs="*")
    a = ap.parse_args()
    if a.xregctl:
        pixref.XREGCTL = a.xregctl
    dirs = a.dirs or default_dirs()
    rows = []
    for d in dirs:
        if not os.path.isdir(d):
            # Tests need the shared data: say so loudly, and fail under CI where it must exist.
            print(f"corpus: SKIPPED: {d} is missing", file=sys.stderr)
            return 1 if os.environ.get("CI") == "true" else 77
        for p in files_in(d):
            st, detail = check(p)
            rows.append((os.path.relpath(p, d if len(dirs) == 1 else os.path.dirname(d)), st,
                         detail))
    bad = [r for r in rows if r[1] in ("MISMATCH", "CRASH", "UNCLEAR")]
    if a.markdown:
        print("| file | result | detail |\n| --- | --- | --- |")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2].replace('|', '/')} |")
    else:
        for r in rows:
            print(f"{r[1]:13} {r[0]}: {r[2]}")
    counts = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    print("corpus: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), file=sys.stderr)
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
