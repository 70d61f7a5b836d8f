#!/usr/bin/python3
"""Make the pixel-decoding fixtures into OUTDIR and write OUTDIR/manifest.json.

    /usr/bin/python3 tests/pixels/make-fixtures.py OUTDIR [ROWS COLUMNS]

Sources are synthetic radiograph-like images written with pydicom (every native layout: bit
depths, signedness, garbage above High Bit, MONOCHROME1/2, RGB by pixel and by plane,
YBR_FULL, YBR_FULL_422, big endian, multi-frame, padding, LUTs, window functions); compressed
fixtures are made from them with DCMTK (dcmcjpeg, dcmcjpls, dcmcrle, dcmconv for deflate and
implicit VR), GDCM (gdcmconv for JPEG 2000) and OpenJPEG (opj_compress: YBR_RCT, YBR_ICT).
Nothing here is committed data: all of it is regenerated at each run.

Manifest rows: {"name", "path", "ts", "lossy", "frames"}.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ExplicitVRBigEndian, generate_uid

CR = "1.2.840.10008.5.1.4.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"


def xray(rows, cols, lo, hi, seed=1):
    """A radiograph-like image: soft gradient, a bright 'bone' band and disc, noise."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    img = 0.25 + 0.2 * x / cols
    img += 0.35 * (np.abs(x - cols * 0.5) < cols * 0.12)
    img += 0.3 * (((x - cols * 0.3) ** 2 + (y - rows * 0.4) ** 2) < (min(rows, cols) * 0.15) ** 2)
    img += rng.normal(0, 0.03, img.shape)
    img = np.clip(img, 0, 1)
    return np.round(lo + img * (hi - lo)).astype(np.int64)


def base(sop=CR, ts=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR" if sop == CR else "OT"
    ds.PatientID = "PIX"
    ds.is_little_endian = ts != ExplicitVRBigEndian
    ds.is_implicit_VR = False
    return ds


def mono(ds, arr, bits_alloc, bits_stored, signed, pi="MONOCHROME2", high_bit=None,
         garbage=False, frames=1):
    """arr: (frames, rows, cols) stored values."""
    hb = bits_stored - 1 if high_bit is None else high_bit
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = pi
    ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_alloc, bits_stored, hb
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    raw = (arr.astype(np.int64) & ((1 << bits_stored) - 1)) << (hb + 1 - bits_stored)
    if signed and not garbage:
        # sign-extend into the unused high bits, as most writers do
        raw = np.where(arr < 0, raw | (((1 << bits_alloc) - 1) ^ ((1 << (hb + 1)) - 1)), raw)
    if garbage:
        rng = np.random.RandomState(7)
        junk = rng.randint(0, 1 << bits_alloc, size=raw.shape) & ~(((1 << (hb + 1)) - 1) ^ ((1 << (hb + 1 - bits_stored)) - 1))
        raw = raw | junk
    set_pixels(ds, raw, bits_alloc)


def set_pixels(ds, raw, bits_alloc):
    if bits_alloc == 8:
        b = raw.astype(np.uint8).tobytes()
        if len(b) % 2:
            b += b"\0"
        ds.PixelData = b
        ds["PixelData"].VR = "OB"
    else:
        dt = "<u2" if ds.is_little_endian else ">u2"
        ds.PixelData = raw.astype(np.uint16).astype(dt).tobytes()
        ds["PixelData"].VR = "OW"


def color(ds, rgb, pi="RGB", planar=0, bits=8):
    """rgb: (rows, cols, 3) values in the photometric interpretation pi."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = pi
    ds.Rows, ds.Columns = rgb.shape[0], rgb.shape[1]
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = planar
    if pi == "YBR_FULL_422":
        q = np.empty((rgb.shape[0], rgb.shape[1] // 2, 4), np.int64)
        q[..., 0], q[..., 1] = rgb[:, 0::2, 0], rgb[:, 1::2, 0]
        q[..., 2], q[..., 3] = rgb[:, 0::2, 1], rgb[:, 0::2, 2]
        set_pixels(ds, q, bits)
    elif planar:
        set_pixels(ds, rgb.transpose(2, 0, 1), bits)
    else:
        set_pixels(ds, rgb, bits)


def rgb_image(rows, cols):
    g = xray(rows, cols, 0, 255, seed=3)
    r = np.clip(g + 40, 0, 255)
    b = np.clip(255 - g, 0, 255)
    return np.stack([r, g, b], axis=-1)


def to_ybr(rgb):
    r, g, b = [rgb[..., i].astype(np.float64) for i in range(3)]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.round(np.stack([y, cb, cr], -1)), 0, 255).astype(np.int64)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"make-fixtures: {' '.join(cmd)} failed: {r.stderr.strip()}")


def main(out, R=240, C=200):
    os.makedirs(out, exist_ok=True)
    rows = []

    def save(name, ds, frames=1):
        p = os.path.join(out, name + ".dcm")
        ds.save_as(p, write_like_original=False)
        rows.append({"name": name, "path": p, "ts": str(ds.file_meta.TransferSyntaxUID),
                     "lossy": False, "frames": frames})
        return p

    def derive(name, src, cmd, ts, lossy, frames=1):
        p = os.path.join(out, name + ".dcm")
        run(cmd + [src, p])
        rows.append({"name": name, "path": p, "ts": ts, "lossy": lossy, "frames": frames})
        return p

    # R x C: even columns for 4:2:2 (the fuzz seeds use 16 x 12)
    # --- native sources --------------------------------------------------------------------
    ds = base(); mono(ds, xray(R, C, 0, 4095)[None], 16, 12, False)
    ds.WindowCenter, ds.WindowWidth = 2048, 3000
    m16_12 = save("mono16_12u", ds)
    ds = base(); mono(ds, xray(R, C, 0, 4095)[None], 16, 12, False, garbage=True)
    save("mono16_12u_garbage_high_bits", ds)
    ds = base(); mono(ds, xray(R, C, 0, 1023)[None], 16, 10, False, high_bit=11)
    save("mono16_10u_highbit11", ds)
    ds = base(); mono(ds, xray(R, C, -2000, 2000)[None], 16, 12, True)
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"
    m16_12s = save("mono16_12s_rescale", ds)
    ds = base(); mono(ds, xray(R, C, -30000, 30000)[None], 16, 16, True)
    m16_16s = save("mono16_16s", ds)
    ds = base(); mono(ds, xray(R, C, 0, 65535)[None], 16, 16, False)
    m16_16u = save("mono16_16u", ds)
    ds = base(); mono(ds, xray(R, C, 0, 255)[None], 8, 8, False)
    m8 = save("mono8", ds)
    ds = base(); mono(ds, xray(R, C, 0, 63)[None], 8, 6, False, garbage=True)
    save("mono8_6u_garbage", ds)
    ds = base(); mono(ds, xray(R, C, -100, 100)[None], 8, 8, True)
    save("mono8_8s", ds)
    ds = base(); mono(ds, 4095 - xray(R, C, 0, 4095)[None], 16, 12, False, pi="MONOCHROME1")
    m1 = save("mono1_16_12", ds)
    ds = base(); mono(ds, 4095 - xray(R, C, 0, 4095)[None], 16, 12, False, pi="MONOCHROME1")
    ds.PresentationLUTShape = "INVERSE"  # DX-style: both say the same inversion
    save("mono1_inverse_shape", ds)
    ds = base(); mono(ds, xray(R, C, 0, 4095)[None], 16, 12, False)
    ds.PresentationLUTShape = "INVERSE"
    save("mono2_inverse_shape", ds)
    # windows and their functions
    for fn, (c, w) in (("LINEAR", (1000.5, 1)), ("LINEAR_EXACT", (2000, 1500.5)),
                       ("SIGMOID", (1800, 900))):
        ds = base(); mono(ds, xray(R, C, 0, 4095)[None], 16, 12, False)
        ds.WindowCenter, ds.WindowWidth = [c, c + 10], [w, w + 10]  # first window is used
        ds.VOILUTFunction = fn
        save("window_" + fn.lower(), ds)
    # LUT sequences
    ds = base(); mono(ds, xray(R, C, 0, 4095)[None], 16, 12, False)
    it = Dataset(); it.LUTDescriptor = [4096, 0, 16]
    it.LUTData = [int(v) for v in np.round(np.sqrt(np.arange(4096) / 4095) * 65535)]
    it["LUTData"].VR = "US"; it.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([it])
    ds.WindowCenter, ds.WindowWidth = 40000, 30000
    save("modality_lut_sequence", ds)
    ds = base(); mono(ds, xray(R, C, 0, 4095)[None], 16, 12, False)
    it = Dataset(); it.LUTDescriptor = [3000, 500, 12]
    it.LUTData = [int(v) for v in np.round((np.arange(3000) / 2999) ** 2 * 4095)]
    it["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([it])
    save("voi_lut_sequence", ds)
    # padding: a border of padding value, excluded from the default window
    a = xray(R, C, 100, 3000)
    a[:20, :] = 4095; a[:, :15] = 4095
    ds = base(); mono(ds, a[None], 16, 12, False); ds.PixelPaddingValue = 4095
    save("padding_value", ds)
    a = xray(R, C, 100, 3000); a[-30:, :] = 0; a[-30:, ::2] = 5
    ds = base(); mono(ds, a[None], 16, 12, False)
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 0, 5
    save("padding_range", ds)
    # multi-frame
    frames = np.stack([xray(R, C, 0, 4095, seed=s) for s in (1, 2, 3)])
    ds = base(); mono(ds, frames, 16, 12, False, frames=3)
    mf = save("multiframe3", ds, frames=3)
    # color
    ds = base(SC); color(ds, rgb_image(R, C)); rgb8 = save("rgb8", ds)
    ds = base(SC); color(ds, rgb_image(R, C), planar=1); save("rgb8_planar", ds)
    ds = base(SC); color(ds, to_ybr(rgb_image(R, C)), pi="YBR_FULL"); save("ybr_full", ds)
    ds = base(SC); color(ds, to_ybr(rgb_image(R, C)), pi="YBR_FULL_422"); save("ybr_full_422", ds)
    # big endian
    ds = base(ts=ExplicitVRBigEndian); mono(ds, xray(R, C, 0, 4095)[None], 16, 12, False)
    save("big_endian_16_12", ds)
    ds = base(ts=ExplicitVRBigEndian); color(ds, rgb_image(R, C)); save("big_endian_rgb8", ds)
    ds = base(ts=ExplicitVRBigEndian); mono(ds, xray(R, C, -2000, 2000)[None], 16, 12, True)
    save("big_endian_16_12s", ds)

    # --- re-encoded with DCMTK / GDCM -------------------------------------------------------
    J = "1.2.840.10008.1.2.4."
    derive("implicit_16_12", m16_12, ["dcmconv", "+ti"], "1.2.840.10008.1.2", False)
    derive("deflate_16_12", m16_12, ["dcmconv", "+td"], "1.2.840.10008.1.2.1.99", False)
    derive("deflate_rgb8", rgb8, ["dcmconv", "+td"], "1.2.840.10008.1.2.1.99", False)
    derive("jpeg_baseline_mono8", m8, ["dcmcjpeg", "+eb"], J + "50", True)
    derive("jpeg_baseline_rgb8_ybr422", rgb8, ["dcmcjpeg", "+eb"], J + "50", True)
    derive("jpeg_baseline_rgb8_ybrfull", rgb8, ["dcmcjpeg", "+eb", "+cy", "+s4"], J + "50", True)
    derive("jpeg_extended_16_12", m16_12, ["dcmcjpeg", "+ee"], J + "51", True)
    derive("jpeg_lossless_16_12", m16_12, ["dcmcjpeg", "+el"], J + "57", False)
    derive("jpeg_lossless_sv1_16_16u", m16_16u, ["dcmcjpeg", "+e1"], J + "70", False)
    derive("jpeg_lossless_sv1_16_12s", m16_12s, ["dcmcjpeg", "+e1"], J + "70", False)
    derive("jpeg_lossless_sv1_mono1", m1, ["dcmcjpeg", "+e1"], J + "70", False)
    derive("jpeg_lossless_sv1_rgb8", rgb8, ["dcmcjpeg", "+e1"], J + "70", False)
    derive("jpeg_lossless_sv1_multiframe", mf, ["dcmcjpeg", "+e1"], J + "70", False, frames=3)
    derive("jpegls_lossless_16_12", m16_12, ["dcmcjpls", "+el"], J + "80", False)
    derive("jpegls_lossless_16_16s", m16_16s, ["dcmcjpls", "+el"], J + "80", False)
    derive("jpegls_lossless_mono8", m8, ["dcmcjpls", "+el"], J + "80", False)
    derive("jpegls_lossless_rgb8", rgb8, ["dcmcjpls", "+el"], J + "80", False)
    derive("jpegls_near_16_12", m16_12, ["dcmcjpls", "+en", "+md", "3"], J + "81", True)
    derive("rle_16_12", m16_12, ["dcmcrle"], "1.2.840.10008.1.2.5", False)
    derive("rle_16_16s", m16_16s, ["dcmcrle"], "1.2.840.10008.1.2.5", False)
    derive("rle_mono8", m8, ["dcmcrle"], "1.2.840.10008.1.2.5", False)
    derive("rle_rgb8", rgb8, ["dcmcrle"], "1.2.840.10008.1.2.5", False)
    derive("rle_multiframe", mf, ["dcmcrle"], "1.2.840.10008.1.2.5", False, frames=3)
    derive("j2k_lossless_16_12", m16_12, ["gdcmconv", "--j2k"], J + "90", False)
    derive("j2k_lossless_16_16s", m16_16s, ["gdcmconv", "--j2k"], J + "90", False)
    derive("j2k_lossless_mono1", m1, ["gdcmconv", "--j2k"], J + "90", False)
    derive("j2k_lossless_rgb8", rgb8, ["gdcmconv", "--j2k"], J + "90", False)
    derive("j2k_lossless_multiframe", mf, ["gdcmconv", "--j2k"], J + "90", False, frames=3)
    derive("j2k_lossy_16_12", m16_12, ["gdcmconv", "--j2k", "--lossy", "-q", "45"], J + "91", True)
    derive("j2k_lossy_rgb8", rgb8, ["gdcmconv", "--j2k", "--lossy", "-q", "45"], J + "91", True)
    # YBR_RCT / YBR_ICT: OpenJPEG's encoder applies the component transform that GDCM's skips
    for name, ts, pi, extra in (("j2k_ybr_rct", J + "90", "YBR_RCT", []),
                                ("j2k_ybr_ict", J + "91", "YBR_ICT", ["-I", "-r", "8"])):
        rgb = rgb_image(R, C)
        ppm = os.path.join(out, name + ".ppm")
        with open(ppm, "wb") as f:
            f.write(b"P6\n%d %d\n255\n" % (C, R) + rgb.astype(np.uint8).tobytes())
        j2k = os.path.join(out, name + ".j2k")
        run(["opj_compress", "-i", ppm, "-o", j2k, "-mct", "1", "-n", "3"] + extra)
        ds = base(SC, ts=ts)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, pi, 0
        ds.Rows, ds.Columns = R, C
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = encapsulate([open(j2k, "rb").read()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        save(name, ds)
        rows[-1]["lossy"] = ts == J + "91"
        os.unlink(ppm)
        os.unlink(j2k)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"make-fixtures: {len(rows)} fixtures in {out}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4):
        raise SystemExit(__doc__)
    main(sys.argv[1], *[int(v) for v in sys.argv[2:]])
