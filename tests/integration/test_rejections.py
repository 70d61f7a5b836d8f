"""Bad input: the right DIMSE status, nothing registered, the object kept in rejected/ with its
reason, a row in xreg.rejection and its audit row. Uses rawscu, since storescu will not send these."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

import dicomgen
import rawscu
from dicomgen import SOP, TS
from xregtest import (CALLING_AE, Size, dimse_status, echoscu, pending_objects, storescu, wait_registered,
                      wait_until)


def send_raw(d, sop_class: str, sop_instance: str, data: bytes, ts: str = TS.EXPLICIT_LE) -> rawscu.DimseResponse:
    return rawscu.store("127.0.0.1", d.port, "XREG", sop_class, sop_instance, ts, data, calling_ae=CALLING_AE)


def check_rejection(d, db, *, status: int, sop_class: str, sop_instance: str | None, payload: bytes) -> None:
    """Exactly one rejection, recorded in the table (with audit row) and kept in rejected/."""

    def rows():
        if not db.relation_exists("xreg.rejection"):
            return None
        return db.query("SELECT spool_id, calling_ae, peer_host, sop_class_uid, sop_instance_uid, dimse_status, "
                        "reason, path FROM xreg.rejection")

    got = wait_until(rows, 30, "a row in xreg.rejection")
    assert len(got) == 1, f"expected one rejection row, got {got}"
    spool_id, calling_ae, peer_host, sop_class_uid, sop_instance_uid, st, reason, path = got[0]
    assert dimse_status(st) == status, f"dimse_status {st!r}, sent 0x{status:04X}"
    assert calling_ae == CALLING_AE
    assert "127.0.0.1" in str(peer_host)
    assert sop_class_uid == sop_class
    if sop_instance is not None:
        assert sop_instance_uid == sop_instance
    assert reason and reason.strip(), "empty rejection reason"
    assert "\n" not in reason.strip(), "reason must be one line"

    dcm = d.spool_dir / "rejected" / f"{spool_id}.dcm"
    why = d.spool_dir / "rejected" / f"{spool_id}.reason"
    assert dcm.is_file(), f"{dcm} missing; rejected/ holds {[p.name for p in d.spool_files('rejected')]}"
    assert why.is_file() and why.read_text().strip(), f"{why} missing or empty"
    assert str(path).endswith(f"{spool_id}.dcm"), f"rejection.path {path!r}"
    assert payload in dcm.read_bytes(), "the rejected file does not hold the bytes received"
    assert {p.name.split(".", 1)[0] for p in d.spool_files("rejected")} == {spool_id}, \
        f"rejected/ should hold this one object: {[p.name for p in d.spool_files('rejected')]}"
    assert not pending_objects(d), "a rejected object is also waiting in the spool"
    assert db.count("xreg.audit_log", "table_name = 'rejection' AND action = 'INSERT'") == 1
    assert db.count("xreg.instances") == 0, "a rejected object reached xreg.instances"
    assert db.count("xreg.instance") == 0


def test_non_dicom_payload_gets_c000(xregd, db):
    payload = dicomgen.non_dicom_payload()
    uid = generate_uid(dicomgen.UID_PREFIX)
    r = send_raw(xregd, SOP["CR"], uid, payload)
    assert r.status == 0xC000, f"non-DICOM payload: {r}"
    check_rejection(xregd, db, status=0xC000, sop_class=SOP["CR"], sop_instance=uid, payload=payload)
    assert echoscu(xregd.port).returncode == 0


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_data_set_without_required_uid_gets_a900(missing, xregd, db):
    sop_class, uid, data = dicomgen.dataset_without(missing, "CR")
    r = send_raw(xregd, sop_class, uid, data)
    assert r.status == 0xA900, f"data set without {missing}: {r}"
    check_rejection(xregd, db, status=0xA900, sop_class=sop_class, sop_instance=uid, payload=data)


def test_sop_instance_uid_differing_from_the_command_gets_a900(xregd, db):
    ds = dicomgen.make_dataset("DX_PRES")
    data = dicomgen.dataset_bytes(ds, TS.EXPLICIT_LE)
    other = generate_uid(dicomgen.UID_PREFIX)
    r = send_raw(xregd, SOP["DX_PRES"], other, data)
    assert r.status == 0xA900, f"command UID {other} vs data set UID {ds.SOPInstanceUID}: {r}"
    check_rejection(xregd, db, status=0xA900, sop_class=SOP["DX_PRES"], sop_instance=None, payload=data)


def test_implicit_vr_data_set_without_sop_instance_uid_gets_a900(xregd, db):
    sop_class, uid, data = dicomgen.dataset_without("SOPInstanceUID", "SC", TS.IMPLICIT_LE)
    r = send_raw(xregd, sop_class, uid, data, TS.IMPLICIT_LE)
    assert r.status == 0xA900, str(r)
    check_rejection(xregd, db, status=0xA900, sop_class=sop_class, sop_instance=uid, payload=data)


def test_object_over_max_object_bytes_gets_a700(make_xregd, db, workdir):
    d = make_xregd(dicom={"max_object_bytes": Size("16KiB")})
    small = dicomgen.generate(workdir / "small", 1, rows=32, columns=32)[0]   # ~2.5 KiB
    big = dicomgen.generate(workdir / "big", 1, rows=128, columns=128)[0]     # ~33 KiB
    run = storescu(d.port, [small, big], workdir=workdir / "scu")
    assert run.status(small.path) == 0x0000, run.describe_failures()
    assert run.status(big.path) == 0xA700, run.describe_failures()
    wait_registered(db, [small.sop_instance_uid], 60, d)
    assert big.sop_instance_uid not in db.instance_uids()
    assert echoscu(d.port).returncode == 0


def _deflate(data: bytes) -> bytes:
    """Raw deflate (no zlib header), padded to even length, as PS3.5 A.5 requires for
    1.2.840.10008.1.2.1.99 (P-DATA fragments must be even)."""
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush()
    return out + b"\0" * (len(out) & 1)


def _cap_address_space(pid: int, headroom: int) -> tuple[int, int]:
    """Cap pid's address space at its current size + headroom; returns the old limit."""
    import resource

    with open(f"/proc/{pid}/status") as f:
        vm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    old = resource.prlimit(pid, resource.RLIMIT_AS)
    soft = vm_kb * 1024 + headroom
    if old[1] != resource.RLIM_INFINITY:
        soft = min(soft, old[1])
    resource.prlimit(pid, resource.RLIMIT_AS, (soft, old[1]))
    return old


def test_deflated_data_set_claiming_4_gb_gets_c000(xregd, db):
    """~400 bytes of deflated data set whose Pixel Data claims 0xFFFFFFF0 bytes: DCMTK's deflate
    stream would allocate all of it. xregd runs with its address space capped 512 MiB above its
    size, so such an allocation would fail (a different reason, or a crash) instead of passing."""
    import resource

    ds = dicomgen.make_dataset("CR")
    plain = dicomgen.dataset_bytes(ds, TS.EXPLICIT_LE)
    # drop the real Pixel Data and claim 4 GB with 16 bytes present
    pos = plain.find(b"\xe0\x7f\x10\x00")
    assert pos > 0, "make_dataset gave no Pixel Data"
    plain = plain[:pos] + b"\xe0\x7f\x10\x00OW\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little") + bytes(16)
    payload = _deflate(plain)
    assert len(payload) < 2048

    old = _cap_address_space(xregd.proc.pid, 512 << 20)
    try:
        r = send_raw(xregd, SOP["CR"], ds.SOPInstanceUID, payload, TS.DEFLATED_LE)
        assert r.status == 0xC000, f"deflated 4 GB claim: {r}"
        check_rejection(xregd, db, status=0xC000, sop_class=SOP["CR"], sop_instance=ds.SOPInstanceUID,
                        payload=payload)
        reason = db.query("SELECT reason FROM xreg.rejection")[0][0]
        assert "ends inside an element" in reason, f"reason {reason!r}"
        assert echoscu(xregd.port).returncode == 0
    finally:
        resource.prlimit(xregd.proc.pid, resource.RLIMIT_AS, old)


def test_normal_deflated_data_set_is_registered(xregd, db):
    """The same path with an honest deflated data set (sent as bytes, so xregd inflates it)."""
    ds = dicomgen.make_dataset("CR")
    payload = _deflate(dicomgen.dataset_bytes(ds, TS.EXPLICIT_LE))
    r = send_raw(xregd, SOP["CR"], ds.SOPInstanceUID, payload, TS.DEFLATED_LE)
    assert r.status == 0x0000, f"deflated data set: {r}"
    wait_registered(db, [ds.SOPInstanceUID], 60, xregd)
    assert db.count("xreg.rejection") == 0
