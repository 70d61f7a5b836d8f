"""Refusals through xregctl dicom-decode: unsupported transfer syntaxes named with their UID,
configured limits (pixels.* keys), the frame policy from the configuration, bad config values."""
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

sys.path.insert(0, os.path.dirname(__file__))
import pixref  # noqa: E402


def make(path, ts, rows=32, cols=32, frames=1, encapsulated=True):
    # pydicom 2.3 cannot write transfer syntaxes it does not know: write a known one of the same
    # length, then patch the meta header's UID.
    known = {22: "1.2.840.10008.1.2.4.91", 23: "1.2.840.10008.1.2.4.100"}
    if encapsulated and ts not in known.values():
        make(path, known[len(ts)], rows, cols, frames, encapsulated)
        data = open(path, "rb").read().replace(known[len(ts)].encode(), ts.encode(), 1)
        open(path, "wb").write(data)
        return path
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    px = (np.arange(rows * cols * frames) % 4096).astype("<u2").tobytes()
    if encapsulated:
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64] * frames)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = px
        ds["PixelData"].VR = "OW"
    ds.save_as(path, write_like_original=False)
    return path


def decode(path, *args):
    return subprocess.run([pixref.XREGCTL, "dicom-decode", *args, path], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("uid,name", [
    ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Image Compression (Lossless Only)"),
    ("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000 Image Compression"),
    ("1.2.840.10008.1.2.4.112", "JPEG XL"),
    ("1.2.840.10008.1.2.4.100", "MPEG2MainProfile@MainLevel"),
    ("1.2.840.10008.1.2.4.99", "unknown"),
])
def test_unsupported_transfer_syntax(tmp_path, uid, name):
    p = make(str(tmp_path / "x.dcm"), uid)
    r = decode(p)
    assert r.returncode == 1
    assert f"unsupported: \"{p}\": unsupported transfer syntax {uid} ({name})" in r.stderr


def test_config_limits_and_frames(tmp_path):
    p = make(str(tmp_path / "mf.dcm"), "1.2.840.10008.1.2.1", rows=40, cols=30, frames=3,
             encapsulated=False)
    cfg = tmp_path / "x.yaml"
    cfg.write_text("pixels:\n  max_rows: 39\n")
    r = decode(p, "-c", str(cfg))
    assert r.returncode == 1 and "limit: " in r.stderr and "40 x 30 pixels" in r.stderr
    cfg.write_text("pixels:\n  max_rows: 40\n  max_columns: 30\n  frames: all\n")
    r = decode(p, "-c", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    assert '"n_frames": 3' in r.stdout
    cfg.write_text("pixels:\n  frames: all\n  max_frames: 2\n")
    r = decode(p, "-c", str(cfg))
    assert r.returncode == 1 and "3 frames to decode are more than the limit of 2" in r.stderr
    cfg.write_text("pixels:\n  max_decoded_bytes: 1MiB\n")
    assert decode(p, "-c", str(cfg)).returncode == 0


def test_bad_config_values(tmp_path):
    cfg = tmp_path / "x.yaml"
    for text, want in (("pixels:\n  frames: some\n", "pixels.frames"),
                       ("pixels:\n  max_rows: 70000\n", "pixels.max_rows: 70000 is out of range"),
                       ("pixels:\n  max_decoded_bytes: 1KiB\n", "pixels.max_decoded_bytes")):
        cfg.write_text(text)
        r = subprocess.run([pixref.XREGCTL, "check-config", "-c", str(cfg)], capture_output=True,
                           text=True)
        assert r.returncode != 0 and want in r.stderr, r.stderr


def test_not_dicom(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    r = decode(str(p))
    assert r.returncode == 1 and "input: " in r.stderr and "not a DICOM file" in r.stderr


def test_deflate_bomb_is_refused_before_inflating(tmp_path):
    """DCMTK inflates a deflated data set whole; xreg counts what it inflates to first."""
    import struct
    import zlib
    src = make(str(tmp_path / "src.dcm"), "1.2.840.10008.1.2.1", encapsulated=False)
    subprocess.run(["dcmconv", "+td", src, str(tmp_path / "d.dcm")], check=True)
    data = open(tmp_path / "d.dcm", "rb").read()
    gl = struct.unpack("<I", data[140:144])[0]
    meta = data[:144 + gl]
    body = zlib.decompress(data[144 + gl:], -15)
    zeros = 100 * 1024 * 1024  # a private OB of 100 MiB of zeros before the pixels
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = co.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, zeros))
    chunk = b"\0" * (1 << 20)
    for _ in range(zeros >> 20):
        bomb += co.compress(chunk)
    bomb += co.compress(body) + co.flush()
    # (0009,1010) sorts after the group 0008 elements in body; DCMTK does not mind the order
    p = tmp_path / "bomb.dcm"
    p.write_bytes(meta + bomb)
    assert len(meta + bomb) < 1024 * 1024
    cfg = tmp_path / "x.yaml"
    cfg.write_text("pixels:\n  max_decoded_bytes: 1MiB\n")
    r = decode(str(p), "-c", str(cfg))
    assert r.returncode == 1
    assert "limit: " in r.stderr and "inflates to more than 68157440 bytes" in r.stderr, r.stderr
    # the original deflated file decodes under the same limits
    assert decode(str(tmp_path / "d.dcm"), "-c", str(cfg)).returncode == 0


def deflated_with_huge_claim(tmp_path):
    """A deflated object whose Pixel Data claims 0xFE8F0000 bytes and has 64 (the shape of an
    input libFuzzer found: DCMTK allocated the claimed length from the deflate stream)."""
    import struct
    import zlib
    src = make(str(tmp_path / "src.dcm"), "1.2.840.10008.1.2.1", encapsulated=False)
    subprocess.run(["dcmconv", "+td", src, str(tmp_path / "d.dcm")], check=True)
    data = open(tmp_path / "d.dcm", "rb").read()
    gl = struct.unpack("<I", data[140:144])[0]
    body = zlib.decompress(data[144 + gl:], -15)
    i = body.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
    body = body[:i + 8] + struct.pack("<I", 0xFE8F0000) + b"\x01" * 64
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    p = tmp_path / "claim.dcm"
    p.write_bytes(data[:144 + gl] + co.compress(body) + co.flush())
    return str(p)


def test_deflated_length_claim_is_not_allocated(tmp_path):
    import resource
    p = deflated_with_huge_claim(tmp_path)

    def limit_memory():  # 1 GiB of address space: a 4 GB allocation would fail
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    # (ASan reserves terabytes of shadow address space: no rlimit there, ASan watches instead)
    asan = "ASAN_OPTIONS" in os.environ
    r = subprocess.run([pixref.XREGCTL, "dicom-decode", p], capture_output=True, text=True,
                       timeout=60, preexec_fn=None if asan else limit_memory)
    assert r.returncode == 1
    assert "input: " in r.stderr and "the data ends inside an element" in r.stderr, r.stderr


def test_jpeg_tem_marker_before_frame_header_is_refused_not_hung(tmp_path):
    """DCMTK 3.6.7's JPEG bit-depth scan loops forever on a TEM marker (0xFF01) before the frame
    header (found by the 60 s fuzz run); xreg refuses such a fragment before DCMTK sees it."""
    p = make(str(tmp_path / "tem.dcm"), "1.2.840.10008.1.2.4.50")
    data = open(p, "rb").read()
    frag = b"\xff\x4f\xff\x51" + b"\0" * 64
    assert data.count(frag) == 1
    open(p, "wb").write(data.replace(frag, b"\xff\xd8\xff\x01" + b"\0" * 64))
    r = decode(p)  # would time out (60 s) if DCMTK got the fragment
    assert r.returncode == 1, r.stderr
    assert "JPEG fragment 1 has a TEM marker (0xFF01) at byte 2 before its frame header" in r.stderr
