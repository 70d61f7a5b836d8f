"""C-STORE to registry: bulk and idempotent ingest, every SOP class and transfer syntax, real files."""

from __future__ import annotations

import csv

import pydicom
import pytest

import dicomgen
from dicomgen import SOP, TS_NAMES
from xregtest import (CALLING_AE, SHARED_DATA, need, pending_objects, storescu, tool, wait_registered,
                      wait_until)

INSTANCE_COLUMNS = ("sop_instance_uid, series_instance_uid, study_instance_uid, patient_id, modality, "
                    "sop_class_uid, transfer_syntax_uid, \"rows\", \"columns\", body_part_examined, received_at, "
                    "calling_ae")


def instance_rows(db) -> dict[str, dict]:
    cols = [c.strip().strip('"') for c in INSTANCE_COLUMNS.split(",")]
    return {r[0]: dict(zip(cols, r)) for r in db.query(f"SELECT {INSTANCE_COLUMNS} FROM xreg.instances")}


def audit_count(db, table: str | None = None, action: str | None = None) -> int:
    where, params = ["TRUE"], []
    if table:
        where.append("table_name = %s")
        params.append(table)
    if action:
        where.append("action = %s")
        params.append(action)
    return db.count("xreg.audit_log", " AND ".join(where), params)


def wait_spool_drained(d, timeout: float = 60.0) -> None:
    wait_until(lambda: not pending_objects(d), timeout, f"the spool of {d.base.name} to drain (incoming/ empty)")


def test_200_objects_over_4_associations_registered_once_even_when_resent(xregd, db, gen, workdir):
    files = gen(200, sop_classes=("CR", "DX_PRES", "DX_PROC"), n_patients=7, studies_per_patient=3,
                series_per_study=2)
    expect = dicomgen.counts(files)
    uid_of = {str(f.path): f.sop_instance_uid for f in files}
    by_uid = {f.sop_instance_uid: f for f in files}

    run = storescu(xregd.port, files, parallel=4, workdir=workdir / "scu1")
    assert len(run.succeeded()) == 200, run.describe_failures()
    acked = run.acked_uids(uid_of)
    assert len(acked) == 200
    wait_registered(db, acked, 90, xregd)
    wait_spool_drained(xregd)
    assert not xregd.spool_files("tmp"), "partial receptions left in tmp/ after every object was acknowledged"

    rows = instance_rows(db)
    assert set(rows) == acked, "xreg.instances holds other instances than the ones sent"
    for uid, row in rows.items():
        f = by_uid[uid]
        want = {"series_instance_uid": f.series_instance_uid, "study_instance_uid": f.study_instance_uid,
                "patient_id": f.patient_id, "modality": f.modality, "sop_class_uid": f.sop_class_uid,
                "transfer_syntax_uid": f.transfer_syntax_uid, "rows": f.rows, "columns": f.columns,
                "body_part_examined": "CHEST", "calling_ae": CALLING_AE}
        got = {k: row[k] for k in want}
        assert got == want, f"row of {uid}"
        assert row["received_at"] is not None
    assert db.count("xreg.instance") == 200
    assert db.count("xreg.series") == expect["series"]
    assert db.count("xreg.study") == expect["studies"]
    assert db.count("xreg.patient") == expect["patients"]
    assert db.scalar("SELECT count(DISTINCT patient_id) FROM xreg.instances") == expect["patients"]
    assert db.scalar("SELECT count(*) FROM xreg.studies") == expect["studies"]
    assert db.scalar("SELECT sum(n_instances) FROM xreg.studies") == 200
    for study, n in db.query("SELECT study_instance_uid, n_instances FROM xreg.studies"):
        assert n == sum(1 for f in files if f.study_instance_uid == study), study
    assert audit_count(db, "instance", "INSERT") == 200
    assert audit_count(db, "patient", "INSERT") == expect["patients"]
    assert audit_count(db, "study", "INSERT") == expect["studies"]
    assert audit_count(db, "series", "INSERT") == expect["series"]
    audit_total = audit_count(db)

    # The same 200 again: acknowledged, processed (spool drained), and nothing changes.
    run2 = storescu(xregd.port, files, parallel=4, workdir=workdir / "scu2")
    assert len(run2.succeeded()) == 200, run2.describe_failures()
    wait_spool_drained(xregd)
    assert db.count("xreg.instances") == 200
    assert instance_rows(db) == rows, "re-sending identical objects changed registry rows"
    assert audit_count(db, "instance", "INSERT") == 200
    assert audit_count(db) == audit_total, "re-sending identical objects wrote audit rows"
    assert db.scalar("SELECT sum(n_instances) FROM xreg.studies") == 200
    assert db.count("xreg.rejection") == 0


def test_every_accepted_sop_class(xregd, db, gen, workdir):
    files = gen(len(SOP), sop_classes=tuple(SOP), n_patients=1, studies_per_patient=1, series_per_study=len(SOP))
    assert {f.sop_class_uid for f in files} == set(SOP.values())
    run = storescu(xregd.port, files, workdir=workdir / "scu")
    assert len(run.succeeded()) == len(files), run.describe_failures()
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, xregd)
    rows = instance_rows(db)
    for f in files:
        assert rows[f.sop_instance_uid]["sop_class_uid"] == f.sop_class_uid
        assert rows[f.sop_instance_uid]["modality"] == f.modality


@pytest.mark.parametrize("ts_name", list(TS_NAMES))
def test_transfer_syntax_is_accepted_and_stored_as_sent(ts_name, xregd, db, workdir):
    ts = TS_NAMES[ts_name]
    if ts in dicomgen.TOOL_FOR_TS:
        tool(dicomgen.TOOL_FOR_TS[ts])
    f = dicomgen.generate_for_ts(workdir / "ts", ts, kind="DX_PRES")
    # storescu proposes exactly (DX for presentation, ts): it cannot fall back to another syntax.
    run = storescu(xregd.port, [f], workdir=workdir / "scu")
    r = run.results.get(str(f.path))
    assert r is not None and r.ok, run.describe_failures() + "\n" + run.output()[-3000:]
    assert not r.converted, f"storescu converted {r.source_ts} -> {r.network_ts}"
    wait_registered(db, [f.sop_instance_uid], 60, xregd)
    row = instance_rows(db)[f.sop_instance_uid]
    assert row["transfer_syntax_uid"] == ts, "the registry records another transfer syntax than the one sent"
    assert (row["rows"], row["columns"]) == (f.rows, f.columns)


# ------------------------------------------------------------------------------------------------
# Real files from ../shared/data/dicom (pydicom and pylibjpeg test data)


def real_files():
    """(sendable, refused): files of an accepted SOP class and transfer syntax with a meta header
    (what storescu can send); refused are those among them lacking Study/Series Instance UID."""
    index = SHARED_DATA / "dicom" / "index.tsv"
    if not index.is_file():
        return None, None
    sendable, refused = [], []
    with open(index, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row.get("status") != "ok":
                continue
            path = SHARED_DATA / "dicom" / row["path"]
            if not path.is_file():
                continue
            try:
                ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            except Exception:
                continue
            meta_ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
            sop = str(ds.get("SOPClassUID", ""))
            if sop not in dicomgen.ACCEPTED_SOP_CLASSES or meta_ts not in dicomgen.ACCEPTED_TRANSFER_SYNTAXES:
                continue
            if not ds.get("SOPInstanceUID"):
                continue  # storescu itself refuses those
            f = dicomgen.GeneratedFile(
                path=path, sop_class_uid=sop, sop_instance_uid=str(ds.SOPInstanceUID),
                study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")), patient_id=str(ds.get("PatientID", "")),
                transfer_syntax_uid=meta_ts, modality=str(ds.get("Modality", "")),
                rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0))
            (sendable if f.study_instance_uid and f.series_instance_uid else refused).append(f)
    return sendable, refused


def test_real_cr_dx_sc_files_are_accepted_and_registered(xregd, db, workdir):
    sendable, refused = real_files()
    need(sendable is not None, f"real DICOM files not found: {SHARED_DATA / 'dicom' / 'index.tsv'} "
                               "(set XREG_SHARED_DATA; the folder exists on developer machines and in CI)")
    assert len(sendable) >= 20, f"only {len(sendable)} usable real files: index.tsv or the filter changed"
    run = storescu(xregd.port, sendable + refused, parallel=2, workdir=workdir / "scu", timeout=300)
    failed = [f for f in sendable if not run.results.get(str(f.path)) or not run.results[str(f.path)].ok]
    assert not failed, run.describe_failures(30)
    for f in refused:
        assert run.status(f.path) == 0xA900, f"{f.path}: lacks Study/Series Instance UID, got {run.status(f.path)}"
    converted = [r.path for r in run.results.values() if r.converted]
    assert not converted, f"storescu converted: {converted}"

    uids = {f.sop_instance_uid for f in sendable}
    wait_registered(db, uids, 120, xregd)
    rows = instance_rows(db)
    assert set(rows) == uids
    by_uid: dict[str, list] = {}
    for f in sendable:
        by_uid.setdefault(f.sop_instance_uid, []).append(f)
    for uid, fs in by_uid.items():
        # Some test files share a SOP Instance UID (e.g. 966.dcm and 966_fixed.dcm): last one wins.
        assert rows[uid]["transfer_syntax_uid"] in {f.transfer_syntax_uid for f in fs}, uid
        assert rows[uid]["sop_class_uid"] in {f.sop_class_uid for f in fs}, uid
        if len(fs) == 1:
            assert (rows[uid]["rows"], rows[uid]["columns"]) == (fs[0].rows, fs[0].columns), fs[0].path
    wait_spool_drained(xregd, 120)
