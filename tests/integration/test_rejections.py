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
