"""Reading a folder dataset exactly as xregd reads its inputs (used by tools/train.py).

PNG and JPEG go through tools/xreg_preprocess.py (the Python twin of nn/nn-image.h); DICOM goes
through `xregctl dicom-decode --out X.f32` (dicom_image_read: modality LUT, VOI, inversion, first
frame, pixels in [0,1]), the daemon's own decoder, then the same preprocessing. A file is DICOM by
content (the "DICM" preamble at offset 128), as in `xregctl mean-std`; PNG and JPEG by their
signatures; anything else is skipped and reported.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import List, Optional, Tuple

SPLITS = ("train", "validation", "test")


def sniff(path: str) -> Optional[str]:
    """"dicom", "png", "jpeg" or None, from the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return None


class DicomDecodeError(RuntimeError):
    pass


def decode_dicom(path: str, xregctl: str):
    """First frame of a DICOM file as a 1 x H x W float32 tensor in [0,1], via xregctl."""
    import numpy as np
    import torch
    with tempfile.TemporaryDirectory(prefix="xreg-dcm-") as d:
        out = os.path.join(d, "img.f32")
        p = subprocess.run([xregctl, "dicom-decode", "--frames", "first", "--json", "--out", out,
                            path], capture_output=True, text=True)
        if p.returncode != 0:
            raise DicomDecodeError(f"{path}: xregctl dicom-decode: {p.stderr.strip()}")
        info = json.loads(p.stdout)
        rows, cols = int(info["rows"]), int(info["columns"])
        a = np.fromfile(out, dtype="<f4")
        if a.size < rows * cols:
            raise DicomDecodeError(f"{path}: dicom-decode wrote {a.size} values, "
                                   f"expected {rows}x{cols}")
        return torch.from_numpy(a[: rows * cols].reshape(1, rows, cols).copy())


def decode_file(path: str, channels: int, xregctl: Optional[str]):
    """Decoded pixels in [0,1] (C x H x W) as xregd gets them, before resizing."""
    import xreg_preprocess as xp
    kind = sniff(path)
    if kind == "dicom":
        if not xregctl:
            raise DicomDecodeError(f"{path}: DICOM input needs --xregctl (xregctl dicom-decode)")
        return decode_dicom(path, xregctl)
    if kind in ("png", "jpeg"):
        return xp.load_image(path, channels)
    raise ValueError(f"{path}: not a PNG, JPEG or DICOM file")


def list_split(root: str, split: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """([(path, label, kind)], skipped paths) for DIR/<split>/<label>/**, sorted by path."""
    base = os.path.join(root, split)
    items, skipped = [], []
    if not os.path.isdir(base):
        return items, skipped
    for label in sorted(os.listdir(base)):
        ld = os.path.join(base, label)
        if not os.path.isdir(ld):
            continue
        for dp, dns, fns in os.walk(ld, followlinks=True):
            dns.sort()
            for fn in sorted(fns):
                p = os.path.join(dp, fn)
                kind = sniff(p)
                if kind:
                    items.append((p, label, kind))
                else:
                    skipped.append(p)
    return items, skipped


def find_xregctl(root: str) -> Optional[str]:
    for cand in (os.environ.get("XREGCTL"), os.path.join(root, "build", "daemon", "xregctl")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None
