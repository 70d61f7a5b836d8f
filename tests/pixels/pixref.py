"""Reference decoding and grayscale for the pixel tests: everything here is independent of xreg's
C++ (pydicom + numpy, DCMTK's and GDCM's command-line decoders), so the tests compare two
implementations.

- stored values: native data straight from the Pixel Data bytes with numpy; compressed data
  decompressed to explicit VR little endian by the reference tool of its codec (dcmdjpeg,
  dcmdjpls, dcmdrle, gdcmconv --raw), then the same.
- grayscale: PS3.3 C.11 (modality LUT, VOI LUT / window functions C.11.2.1.2, Presentation LUT
  Shape) written out in numpy, plus xreg's documented choices (BT.601 luma for color, the
  0.5/99.5 percentile default window over non-padding pixels, padding -> 0, inversion for
  MONOCHROME1 or INVERSE).
"""
import json
import os
import subprocess
import tempfile

import numpy as np
import pydicom

NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
          "1.2.840.10008.1.2.1.99"}
JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70"}
JPEGLS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
RLE = {"1.2.840.10008.1.2.5"}
J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
         "1.2.840.10008.1.2.4.91"}

XREGCTL = os.environ.get("XREGCTL", "build/daemon/xregctl")


def ts_of(ds):
    return str(ds.file_meta.TransferSyntaxUID)


def native_stored(ds, n_frames=None):
    """Stored values (frames, rows, cols, samples) of a native data set, masked and
    sign-extended; YBR_FULL_422 upsampled by repeating each chroma pair."""
    ba = int(ds.BitsAllocated)
    bs = int(ds.get("BitsStored", ba))
    hb = int(ds.get("HighBit", bs - 1))
    pr = int(ds.get("PixelRepresentation", 0))
    spp = int(ds.get("SamplesPerPixel", 1))
    rows, cols = int(ds.Rows), int(ds.Columns)
    nf = n_frames or int(ds.get("NumberOfFrames", 1) or 1)
    pi = str(ds.PhotometricInterpretation).strip()
    if ba == 8:
        dt = np.dtype("u1")
    else:
        dt = np.dtype("<u2" if ds.is_little_endian else ">u2")
    is422 = pi == "YBR_FULL_422" and spp == 3
    per_frame = rows * cols * (2 if is422 else spp)
    a = np.frombuffer(ds.PixelData, dtype=dt, count=per_frame * nf).astype(np.int64)
    a = (a >> (hb + 1 - bs)) & ((1 << bs) - 1)
    if pr:
        a = np.where(a >= (1 << (bs - 1)), a - (1 << bs), a)
    if is422:
        out = np.empty((nf, rows, cols, 3), np.int64)
        q = a.reshape(nf, rows, cols // 2, 4)
        out[:, :, 0::2, 0] = q[..., 0]
        out[:, :, 1::2, 0] = q[..., 1]
        for k, ch in ((1, 2), (2, 3)):
            out[:, :, 0::2, k] = q[..., ch]
            out[:, :, 1::2, k] = q[..., ch]
        return out, "YBR_FULL"
    if spp == 3 and int(ds.get("PlanarConfiguration", 0)) == 1:
        return a.reshape(nf, 3, rows, cols).transpose(0, 2, 3, 1), pi
    return a.reshape(nf, rows, cols, spp), pi


def reference_stored(path, n_frames=None):
    """(values, color model, reference name) for any supported file, or raises."""
    ds = pydicom.dcmread(path, force=True)
    ts = ts_of(ds)
    if ts in NATIVE or ts == "1.2.840.10008.1.2.1.99":
        v, cm = native_stored(ds, n_frames)
        return v, cm, "pydicom+numpy"
    if ts in JPEG:
        tool = ["dcmdjpeg"]
    elif ts in JPEGLS:
        tool = ["dcmdjpls"]
    elif ts in RLE:
        tool = ["dcmdrle"]
    elif ts in J2K:
        tool = ["gdcmconv", "--raw"]
    else:
        raise ValueError("no reference for transfer syntax " + ts)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ref.dcm")
        r = subprocess.run(tool + [path, out], capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"{tool[0]} failed: {r.stderr.strip()[:300]}")
        rds = pydicom.dcmread(out, force=True)
        # GDCM may rewrite Bits Stored/Pixel Representation; the original's describe the data.
        for k in ("BitsStored", "HighBit", "PixelRepresentation"):
            if k in ds and tool[0] != "gdcmconv":
                setattr(rds, k, ds.get(k))
        v, cm = native_stored(rds, n_frames)
        return v, cm, " ".join(tool)


def xreg_decode(path, frames="first", config=None):
    """Run xregctl dicom-decode; returns (rc, info dict or None, raw, gray, stderr)."""
    with tempfile.TemporaryDirectory() as d:
        raw, f32 = os.path.join(d, "x.i32"), os.path.join(d, "x.f32")
        cmd = [XREGCTL, "dicom-decode", "--json", "--frames", frames, "--raw", raw, "--out", f32]
        if config:
            cmd += ["-c", config]
        r = subprocess.run(cmd + [path], capture_output=True, text=True, timeout=300)
        if r.returncode != 0 or "Sanitizer" in r.stderr or "runtime error:" in r.stderr:
            return r.returncode or 99, None, None, None, r.stderr
        info = json.loads(r.stdout)
        rows, cols, nf = info["rows"], info["columns"], info["n_frames"]
        spp = info["samples_per_pixel"]
        rawv = np.fromfile(raw, dtype="<i4").reshape(nf, rows, cols, spp)
        gray = np.fromfile(f32, dtype="<f4").reshape(nf, rows, cols)
        return 0, info, rawv, gray, r.stderr


def _first(v):
    if isinstance(v, pydicom.multival.MultiValue):
        return v[0] if len(v) else None
    return v


def _lut(item, pr):
    desc = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if desc is None or data is None or len(desc) < 3 or (not isinstance(data, bytes) and len(data) == 0):
        return None
    n = int(desc[0]) or 65536
    first = int(desc[1])
    if pr and first > 32767:
        first -= 65536
    bits = int(desc[2])
    if isinstance(data, (bytes, bytearray)):
        words = np.frombuffer(data, "<u2")
    else:
        words = np.asarray(list(data) if not isinstance(data, int) else [data], dtype=np.int64)
    words = words.astype(np.int64)
    if len(words) >= n:
        table = words[:n]
    else:  # 8-bit entries packed two per word
        b = np.empty(2 * len(words), np.int64)
        b[0::2], b[1::2] = words & 0xFF, words >> 8
        table = b[:n]
    return first, n, bits, table


def _apply_lut(lut, x):
    first, n, _, table = lut
    i = np.clip(np.floor(x) - first, 0, n - 1).astype(np.int64)
    return table[i].astype(np.float64)


def _has_lut_seq(ds, kw):
    seq = ds.get(kw)
    return seq is not None and len(seq) > 0 and _lut(seq[0], int(ds.get("PixelRepresentation", 0))) is not None


def grayscale(ds, stored, color_model):
    """PS3.3 grayscale pipeline in numpy, to [0,1]; stored is (frames, rows, cols, samples)."""
    bs = int(ds.get("BitsStored", ds.BitsAllocated))
    pr = int(ds.get("PixelRepresentation", 0))
    if stored.shape[3] == 3:
        s = stored.astype(np.float64)
        if color_model.startswith("YBR"):
            y = s[..., 0]
        else:
            y = 0.299 * s[..., 0] + 0.587 * s[..., 1] + 0.114 * s[..., 2]
        return np.clip(y / ((1 << bs) - 1), 0, 1)
    v = stored[..., 0].astype(np.int64)
    pad = np.zeros(v.shape, bool)
    if ds.get("PixelPaddingValue") is not None:
        p = int(ds.PixelPaddingValue)
        if pr and p > 32767:
            p -= 65536
        lo = hi = p
        if ds.get("PixelPaddingRangeLimit") is not None:
            q = int(ds.PixelPaddingRangeLimit)
            if pr and q > 32767:
                q -= 65536
            lo, hi = min(p, q), max(p, q)
        pad = (v >= lo) & (v <= hi)
    # modality
    if _has_lut_seq(ds, "ModalityLUTSequence"):
        m = _apply_lut(_lut(ds.ModalityLUTSequence[0], pr), v)
    else:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        icpt = float(ds.get("RescaleIntercept", 0) or 0)
        m = v * slope + icpt
    out = np.zeros(m.shape, np.float64)
    fn = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip()
    c = _first(ds.get("WindowCenter"))
    w = _first(ds.get("WindowWidth"))
    window_ok = c is not None and w is not None and np.isfinite(float(c)) and np.isfinite(float(w))
    if window_ok:
        c, w = float(c), float(w)
        if fn not in ("LINEAR_EXACT", "SIGMOID"):
            fn = "LINEAR"
        window_ok = w >= 1 if fn == "LINEAR" else w > 0
    for f in range(m.shape[0]):
        x = m[f]
        if _has_lut_seq(ds, "VOILUTSequence"):
            lut = _lut(ds.VOILUTSequence[0], pr)
            y = _apply_lut(lut, x) / ((1 << lut[2]) - 1)
        else:
            if window_ok:
                cc, ww, ff = c, w, fn
            else:
                vals = x[~pad[f]]
                if vals.size == 0:
                    cc, ww = 0.0, 0.0
                else:
                    lo, hi = np.percentile(vals, [0.5, 99.5])
                    cc, ww = (lo + hi) / 2, hi - lo
                ff = "LINEAR_EXACT"
            if ww <= 0:
                y = np.zeros_like(x)
            elif ff == "LINEAR_EXACT":
                y = np.where(x <= cc - ww / 2, 0.0, np.where(x > cc + ww / 2, 1.0, (x - cc) / ww + 0.5))
            elif ff == "SIGMOID":
                y = 1 / (1 + np.exp(-4 * (x - cc) / ww))
            else:
                y = np.where(x <= cc - 0.5 - (ww - 1) / 2, 0.0,
                             np.where(x > cc - 0.5 + (ww - 1) / 2, 1.0,
                                      (x - (cc - 0.5)) / max(ww - 1, 1e-300) + 0.5))
        y = np.clip(y, 0, 1)
        shape = str(ds.get("PresentationLUTShape", "") or "").strip()
        if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1" or shape == "INVERSE":
            y = 1 - y
        y[pad[f]] = 0
        out[f] = y
    return out
