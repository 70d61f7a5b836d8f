"""Generate small, valid DICOM objects for the integration tests and the benchmark.

Everything is made with pydicom (Debian python3-pydicom, no numpy needed) and DCMTK/GDCM
command-line tools; nothing is downloaded.

    from dicomgen import generate, compress, TS
    files = generate(outdir, 200, sop_classes=("CR", "DX_PRES", "DX_PROC"), n_patients=5)
    for f in files: f.path, f.sop_instance_uid, f.study_instance_uid, ...
    jls = compress(files[0], outdir / "jls", TS.JPEG_LS_LOSSLESS)

Pixel data is MONOCHROME2 noise, 64x64 by default, 16 bits allocated / 12 stored (8/8 for the
byte classes and for JPEG baseline, which can only code 8-bit samples). Every object gets fresh
UIDs, so two runs never collide in one registry.

Run as a script to write a sample set for manual tests:
    /usr/bin/python3 tests/integration/dicomgen.py OUTDIR [N]
"""

from __future__ import annotations

import dataclasses
import hashlib
import datetime
import os
import pathlib
import random
import shutil
import subprocess
import sys
from typing import Iterable, Sequence

import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import generate_uid

# Our own root so that the objects are recognisable in a registry; generate_uid appends a
# random suffix (pydicom's default prefix would do just as well).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
IMPLEMENTATION_CLASS_UID = UID_PREFIX + "7783"  # fixed, names this generator

SOP = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX_PRES": "1.2.840.10008.5.1.4.1.1.1.1",
    "DX_PROC": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "SC": "1.2.840.10008.5.1.4.1.1.7",
    "MF_BYTE_SC": "1.2.840.10008.5.1.4.1.1.7.2",
    "MF_WORD_SC": "1.2.840.10008.5.1.4.1.1.7.3",
}
# Classes xregd must accept (the contract); anything else is out of scope.
ACCEPTED_SOP_CLASSES = frozenset(SOP.values())
MODALITY = {"CR": "CR", "DX_PRES": "DX", "DX_PROC": "DX", "SC": "OT", "MF_BYTE_SC": "OT",
            "MF_WORD_SC": "OT"}


class TS:
    IMPLICIT_LE = "1.2.840.10008.1.2"
    EXPLICIT_LE = "1.2.840.10008.1.2.1"
    DEFLATED_LE = "1.2.840.10008.1.2.1.99"
    EXPLICIT_BE = "1.2.840.10008.1.2.2"
    JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
    JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
    JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
    JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
    JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
    JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
    J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
    J2K = "1.2.840.10008.1.2.4.91"
    RLE = "1.2.840.10008.1.2.5"


# Short names (used as pytest ids) of every transfer syntax xregd must accept.
TS_NAMES = {
    "implicit-le": TS.IMPLICIT_LE,
    "explicit-le": TS.EXPLICIT_LE,
    "explicit-be": TS.EXPLICIT_BE,
    "deflated": TS.DEFLATED_LE,
    "jpeg-baseline": TS.JPEG_BASELINE,
    "jpeg-extended": TS.JPEG_EXTENDED,
    "jpeg-lossless": TS.JPEG_LOSSLESS,
    "jpeg-lossless-sv1": TS.JPEG_LOSSLESS_SV1,
    "jpeg-ls-lossless": TS.JPEG_LS_LOSSLESS,
    "jpeg-ls-near-lossless": TS.JPEG_LS_NEAR,
    "j2k-lossless": TS.J2K_LOSSLESS,
    "j2k": TS.J2K,
    "rle": TS.RLE,
}
ACCEPTED_TRANSFER_SYNTAXES = frozenset(TS_NAMES.values())
UNCOMPRESSED = frozenset({TS.IMPLICIT_LE, TS.EXPLICIT_LE, TS.EXPLICIT_BE})

# The tool each compressed syntax needs (for the CI dependency check).
TOOL_FOR_TS = {
    TS.EXPLICIT_BE: "dcmconv",
    TS.DEFLATED_LE: "dcmconv",
    TS.JPEG_BASELINE: "dcmcjpeg",
    TS.JPEG_EXTENDED: "dcmcjpeg",
    TS.JPEG_LOSSLESS: "dcmcjpeg",
    TS.JPEG_LOSSLESS_SV1: "dcmcjpeg",
    TS.JPEG_LS_LOSSLESS: "dcmcjpls",
    TS.JPEG_LS_NEAR: "dcmcjpls",
    TS.J2K_LOSSLESS: "gdcmconv",
    TS.J2K: "gdcmconv",
    TS.RLE: "dcmcrle",
}

# Sample bit depth each syntax needs from the source image: JPEG baseline codes 8-bit samples
# only, JPEG extended at most 12. The others take our default 16/12.
BITS_FOR_TS = {TS.JPEG_BASELINE: 8, TS.JPEG_EXTENDED: 12}


@dataclasses.dataclass
class GeneratedFile:
    path: pathlib.Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    transfer_syntax_uid: str
    modality: str
    rows: int
    columns: int

    @property
    def size(self) -> int:
        return self.path.stat().st_size


class ToolError(RuntimeError):
    pass


def _pixels(rows: int, columns: int, frames: int, bits_stored: int, rng: random.Random) -> bytes:
    """Noise over a gradient, little endian, in [0, 2**bits_stored)."""
    n = rows * columns * frames
    if bits_stored <= 8:
        noise = rng.randbytes(n)
        if bits_stored < 8:
            noise = noise.translate(bytes(b & ((1 << bits_stored) - 1) for b in range(256)))
        return noise
    raw = bytearray(rng.randbytes(2 * n))
    high_mask = (1 << (bits_stored - 8)) - 1
    raw[1::2] = bytes(raw[1::2]).translate(bytes(b & high_mask for b in range(256)))
    return bytes(raw)


def make_dataset(kind: str = "CR", *, patient_id: str = "XRT-P0", patient_name: str = "Test^Patient",
                 study_instance_uid: str | None = None, series_instance_uid: str | None = None,
                 sop_instance_uid: str | None = None, rows: int = 64, columns: int = 64,
                 frames: int | None = None, bits_stored: int | None = None,
                 series_number: int = 1, instance_number: int = 1, body_part: str = "CHEST",
                 seed: int | None = None) -> FileDataset:
    """An in-memory object of the given kind (a key of SOP), ready for write()."""
    if kind not in SOP:
        raise ValueError(f"unknown kind {kind!r}; one of {sorted(SOP)}")
    rng = random.Random(seed)
    byte_class = kind == "MF_BYTE_SC"
    multi = kind in ("MF_BYTE_SC", "MF_WORD_SC")
    if bits_stored is None:
        bits_stored = 8 if byte_class else 12
    if byte_class and bits_stored != 8:
        raise ValueError("MF_BYTE_SC needs 8 bits stored")
    bits_allocated = 8 if bits_stored <= 8 else 16
    if frames is None:
        frames = 3 if multi else 1

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP[kind]
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid(UID_PREFIX)
    meta.TransferSyntaxUID = TS.EXPLICIT_LE
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "XREG_DICOMGEN"

    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP[kind]
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    # Study-level values must agree across a study's instances (as a modality's do), or the
    # registry would see each instance as a header change of its study: derive them from the UID.
    study_instance_uid = study_instance_uid or generate_uid(UID_PREFIX)
    study_key = int(hashlib.sha256(study_instance_uid.encode()).hexdigest(), 16)
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = f"{study_key % 24:02d}{study_key // 24 % 60:02d}{study_key // 1440 % 60:02d}"
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = f"A{study_key // 86400 % 10**9:09d}"
    ds.Modality = MODALITY[kind]
    if kind in ("SC", "MF_BYTE_SC", "MF_WORD_SC"):
        ds.ConversionType = "WSD"
    ds.Manufacturer = "xreg tests"
    ds.InstitutionName = "xreg test hospital"
    ds.StudyDescription = "xreg integration test"
    ds.SeriesDescription = f"{kind} series {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = body_part
    if kind in ("DX_PRES", "DX_PROC"):
        ds.PresentationIntentType = "FOR PRESENTATION" if kind == "DX_PRES" else "FOR PROCESSING"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ImageLaterality = "U"
        ds.ViewPosition = "AP"
    elif kind == "CR":
        ds.ViewPosition = "PA"
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid or generate_uid(UID_PREFIX)
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if multi:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = pydicom.tag.Tag(0x0018, 0x2002)  # Frame Label Vector
        ds.FrameLabelVector = [f"F{i + 1}" for i in range(frames)]
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if kind != "MF_BYTE_SC":
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
    if kind in ("DX_PRES", "DX_PROC"):
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
    ds.PixelData = _pixels(rows, columns, frames, bits_stored, rng)
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    return ds


def write(ds: FileDataset, path: os.PathLike | str, transfer_syntax: str = TS.EXPLICIT_LE) -> pathlib.Path:
    """Write ds as a Part-10 file in an uncompressed syntax (big endian goes through dcmconv)."""
    path = pathlib.Path(path)
    if transfer_syntax == TS.EXPLICIT_BE:
        tmp = path.with_name(path.name + ".le")
        write(ds, tmp, TS.EXPLICIT_LE)
        try:
            _run(["dcmconv", "+tb", str(tmp), str(path)])
        finally:
            tmp.unlink(missing_ok=True)
        return path
    if transfer_syntax not in (TS.IMPLICIT_LE, TS.EXPLICIT_LE):
        raise ValueError(f"write() makes uncompressed files only; use compress() for {transfer_syntax}")
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.is_little_endian = True
    ds.is_implicit_VR = transfer_syntax == TS.IMPLICIT_LE
    ds.save_as(str(path), write_like_original=False)
    return path


def dataset_bytes(ds: pydicom.Dataset, transfer_syntax: str = TS.EXPLICIT_LE) -> bytes:
    """The data set alone (no preamble, no meta header) as it travels in P-DATA: for rawscu."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    if transfer_syntax not in (TS.IMPLICIT_LE, TS.EXPLICIT_LE):
        raise ValueError("dataset_bytes supports implicit/explicit little endian")
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = transfer_syntax == TS.IMPLICIT_LE
    plain = pydicom.Dataset()
    plain.update(ds)  # without file_meta
    write_dataset(buf, plain)
    return buf.getvalue()


def info(path: os.PathLike | str) -> GeneratedFile:
    """Describe an existing file (its UIDs as the file says)."""
    path = pathlib.Path(path)
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    return GeneratedFile(
        path=path, sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
        patient_id=str(ds.get("PatientID", "")), transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        modality=str(ds.get("Modality", "")), rows=int(ds.Rows), columns=int(ds.Columns))


def generate(outdir: os.PathLike | str, n: int, *, sop_classes: Sequence[str] = ("CR", "DX_PRES", "DX_PROC"),
             n_patients: int = 5, studies_per_patient: int = 2, series_per_study: int = 2,
             transfer_syntax: str = TS.EXPLICIT_LE, rows: int = 64, columns: int = 64,
             bits_stored: int | None = None, seed: int | None = None,
             prefix: str = "img") -> list[GeneratedFile]:
    """n objects spread round-robin over n_patients x studies x series.

    Each series has one SOP class (cycling through sop_classes), so a study may mix classes but a
    series never does. Files are named outdir/<prefix>-<i>.dcm. The number of distinct patients,
    studies and series actually used is min(n, ...); count them from the result.
    """
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    patients = [f"XRT-{generate_uid(UID_PREFIX)[-12:]}-{p}" for p in range(n_patients)]
    layout = []  # (patient, study uid, series uid, kind, series number)
    k = 0
    for p in patients:
        for _s in range(studies_per_patient):
            study = generate_uid(UID_PREFIX)
            for r in range(series_per_study):
                layout.append((p, study, generate_uid(UID_PREFIX), sop_classes[k % len(sop_classes)], r + 1))
                k += 1
    out = []
    counters: dict[str, int] = {}
    for i in range(n):
        patient, study, series, kind, series_number = layout[i % len(layout)]
        counters[series] = counters.get(series, 0) + 1
        ds = make_dataset(kind, patient_id=patient, patient_name=f"Test^{patient}",
                          study_instance_uid=study, series_instance_uid=series,
                          rows=rows, columns=columns, bits_stored=bits_stored,
                          series_number=series_number, instance_number=counters[series],
                          seed=rng.randrange(2**32))
        path = outdir / f"{prefix}-{i:05d}.dcm"
        uncompressed = transfer_syntax if transfer_syntax in (TS.IMPLICIT_LE, TS.EXPLICIT_LE) else TS.EXPLICIT_LE
        write(ds, path, uncompressed)
        if transfer_syntax != uncompressed:
            converted = outdir / f"{prefix}-{i:05d}.conv.dcm"
            compress(path, converted, transfer_syntax)
            os.replace(converted, path)
        uid = str(ds.SOPInstanceUID) if transfer_syntax == uncompressed else info(path).sop_instance_uid
        out.append(GeneratedFile(path=path, sop_class_uid=SOP[kind], sop_instance_uid=uid,
                                 study_instance_uid=study, series_instance_uid=series, patient_id=patient,
                                 transfer_syntax_uid=transfer_syntax, modality=MODALITY[kind],
                                 rows=rows, columns=columns))
    return out


def generate_for_ts(outdir: os.PathLike | str, transfer_syntax: str, kind: str = "CR", **kw) -> GeneratedFile:
    """One object in transfer_syntax, with a sample depth that syntax can code."""
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(kind, bits_stored=BITS_FOR_TS.get(transfer_syntax), **kw)
    src = write(ds, outdir / "source.dcm", TS.EXPLICIT_LE)
    dst = outdir / f"ts-{transfer_syntax}.dcm"
    if transfer_syntax in (TS.IMPLICIT_LE, TS.EXPLICIT_LE, TS.EXPLICIT_BE):
        write(ds, dst, transfer_syntax)
    else:
        compress(src, dst, transfer_syntax)
    src.unlink()
    got = info(dst)
    if got.transfer_syntax_uid != transfer_syntax:
        raise ToolError(f"{dst}: wanted transfer syntax {transfer_syntax}, the tool wrote {got.transfer_syntax_uid}")
    # gdcmconv --lossy gives the object a new SOP Instance UID (as it should); trust the file.
    return got


def _run(argv: list[str]) -> None:
    exe = shutil.which(argv[0])
    if exe is None:
        raise ToolError(f"{argv[0]} not found on PATH (Debian package: {DEBIAN_PACKAGE.get(argv[0], '?')})")
    r = subprocess.run([exe] + argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    if r.returncode != 0:
        raise ToolError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}")


DEBIAN_PACKAGE = {"dcmconv": "dcmtk", "dcmcjpeg": "dcmtk", "dcmcjpls": "dcmtk", "dcmcrle": "dcmtk",
                  "dcmdump": "dcmtk", "storescu": "dcmtk", "storescp": "dcmtk", "echoscu": "dcmtk",
                  "gdcmconv": "libgdcm-tools"}


def compress(src: os.PathLike | str | GeneratedFile, dst: os.PathLike | str, transfer_syntax: str) -> pathlib.Path:
    """Convert an uncompressed little-endian file to transfer_syntax with DCMTK or GDCM.

    Keeps the SOP Instance UID (DCMTK would otherwise invent one for lossy output). The source
    must suit the codec: 8-bit samples for JPEG baseline, at most 12 for JPEG extended.
    """
    if isinstance(src, GeneratedFile):
        src = src.path
    src, dst = str(src), str(dst)
    t = transfer_syntax
    if t == TS.EXPLICIT_LE:
        _run(["dcmconv", "+te", src, dst])
    elif t == TS.IMPLICIT_LE:
        _run(["dcmconv", "+ti", src, dst])
    elif t == TS.EXPLICIT_BE:
        _run(["dcmconv", "+tb", src, dst])
    elif t == TS.DEFLATED_LE:
        _run(["dcmconv", "+td", src, dst])
    elif t == TS.JPEG_BASELINE:
        _run(["dcmcjpeg", "+eb", "+un", src, dst])
    elif t == TS.JPEG_EXTENDED:
        _run(["dcmcjpeg", "+ee", "+un", src, dst])
    elif t == TS.JPEG_LOSSLESS:
        _run(["dcmcjpeg", "+el", "+un", src, dst])
    elif t == TS.JPEG_LOSSLESS_SV1:
        _run(["dcmcjpeg", "+e1", "+un", src, dst])
    elif t == TS.JPEG_LS_LOSSLESS:
        _run(["dcmcjpls", "+el", "+un", src, dst])
    elif t == TS.JPEG_LS_NEAR:
        _run(["dcmcjpls", "+en", "+un", src, dst])
    elif t == TS.RLE:
        _run(["dcmcrle", src, dst])
    elif t == TS.J2K_LOSSLESS:
        _run(["gdcmconv", "--j2k", src, dst])
    elif t == TS.J2K:
        # --lossy with a quality picks the irreversible 9/7 wavelet and GDCM then writes .91.
        _run(["gdcmconv", "--j2k", "--lossy", "-q", "40", src, dst])
    else:
        raise ValueError(f"no converter for transfer syntax {t}")
    return pathlib.Path(dst)


def non_dicom_payload(size: int = 4096, seed: int = 1) -> bytes:
    """Bytes no DICOM parser can read as a data set in any little-endian syntax.

    It starts like text (tag (6854,7369) "This is..." read as explicit VR gives VR " n" which is no
    VR, and as implicit VR an element of length 0x20746f6e > the payload), then noise.
    """
    head = b"This is not DICOM: a text file sent as a C-STORE data set.\n"
    return head + random.Random(seed).randbytes(max(0, size - len(head)))


def dataset_without(tag_keyword: str, kind: str = "CR", transfer_syntax: str = TS.EXPLICIT_LE,
                    **kw) -> tuple[str, str, bytes]:
    """(sop_class_uid, the UID to put in the command, data set bytes lacking tag_keyword).

    tag_keyword is e.g. "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID".
    """
    ds = make_dataset(kind, **kw)
    uid = str(ds.SOPInstanceUID)
    delattr(ds, tag_keyword)
    return SOP[kind], uid, dataset_bytes(ds, transfer_syntax)


def write_without_sop_instance_uid(path: os.PathLike | str, kind: str = "CR") -> pathlib.Path:
    """A Part-10 file whose data set lacks (0008,0018) (the meta header still names one)."""
    ds = make_dataset(kind)
    del ds.SOPInstanceUID
    return write(ds, path, TS.EXPLICIT_LE)


def write_non_dicom(path: os.PathLike | str, size: int = 4096) -> pathlib.Path:
    path = pathlib.Path(path)
    path.write_bytes(non_dicom_payload(size))
    return path


def counts(files: Iterable[GeneratedFile]) -> dict[str, int]:
    files = list(files)
    return {"instances": len({f.sop_instance_uid for f in files}),
            "patients": len({f.patient_id for f in files}),
            "studies": len({f.study_instance_uid for f in files}),
            "series": len({f.series_instance_uid for f in files})}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    outdir = pathlib.Path(argv[1])
    n = int(argv[2]) if len(argv) > 2 else 10
    files = generate(outdir / "mixed", n, sop_classes=tuple(SOP))
    for name, uid in TS_NAMES.items():
        generate_for_ts(outdir / "ts" / name, uid)
    write_without_sop_instance_uid(outdir / "no-sop-instance-uid.dcm")
    write_non_dicom(outdir / "not-dicom.dcm")
    print(f"{len(files)} mixed objects, {len(TS_NAMES)} transfer syntaxes, 2 bad files in {outdir}; {counts(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
