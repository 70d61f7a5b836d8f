"""Pseudonymization end to end: xregd replaces Patient ID / name / accession number before the
registry sees them (rows and audit log), with stable HMAC pseudonyms across restarts, and refuses
to start with an unsafe key file."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess

import pydicom
from pydicom.uid import generate_uid

from xregtest import _clean_env, run_xregctl, storescu, wait_registered

KEY = b"correct horse battery staple, 32+ bytes of secret"


def pseudonym(field: str, value: str, issuer: str = "", n: int = 32) -> str:
    msg = b"xreg-pseudonym-v1\0" + field.encode() + b"\0" + issuer.encode() + b"\0" + value.encode()
    return hmac.new(KEY, msg, hashlib.sha256).hexdigest()[:n]


def _key(workdir, mode=0o600):
    path = workdir / "pseudonym.key"
    path.write_bytes(KEY + b"\n")
    os.chmod(path, mode)
    return path


def _copies(files, outdir):
    """New instances (new SOP Instance UIDs) of the same patients, studies and series."""
    outdir.mkdir()
    out = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f.path)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        p = outdir / f"copy-{i}.dcm"
        ds.save_as(p, write_like_original=False)
        out.append((p, ds.SOPInstanceUID))
    return out


def test_identifiers_replaced_and_stable(make_xregd, db, gen, workdir):
    key = _key(workdir)
    d = make_xregd(pseudonymize={"patient_id": "hmac", "patient_name": "drop",
                                 "accession_number": "hmac", "key_file": str(key)})
    assert "pseudonymizing before registration: patient_id hmac, patient_name drop" in d.log()
    files = gen(4, n_patients=2, studies_per_patient=1)
    run = storescu(d.port, files, workdir=workdir / "scu")
    assert len(run.succeeded()) == 4, run.describe_failures()
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, d)

    originals = {f.patient_id for f in files}
    want = {pseudonym("patient_id", p) for p in originals}
    rows = db.query("SELECT patient_id, patient_name FROM xreg.patient")
    assert {r[0] for r in rows} == want
    assert all(r[1] is None for r in rows), "dropped names must be stored as absent"
    accessions = {pydicom.dcmread(f.path).get("AccessionNumber", "") for f in files} - {""}
    stored = {r[0] for r in db.query("SELECT accession_number FROM xreg.study")} - {None}
    assert stored == {pseudonym("accession_number", a, n=16) for a in accessions}
    # Nowhere in the registry, the audit log included.
    everything = db.scalar("SELECT string_agg(t::text, ' ') FROM (SELECT a FROM xreg.audit_log a) t")
    for p in originals:
        assert p not in everything, f"original Patient ID {p} reached the audit log"
    for f in files:
        name = str(pydicom.dcmread(f.path).PatientName)
        assert name not in everything

    # After a restart, new instances of the same patients join the same pseudonymous patients.
    d.restart()
    copies = _copies(files, workdir / "copies")
    run = storescu(d.port, [p for p, _ in copies], workdir=workdir / "scu2")
    assert len(run.succeeded()) == 4, run.describe_failures()
    wait_registered(db, {uid for _, uid in copies}, 60, d)
    assert db.scalar("SELECT count(*) FROM xreg.patient") == 2
    assert {r[0] for r in db.query("SELECT patient_id FROM xreg.patient")} == want
    assert db.scalar("SELECT count(*) FROM xreg.instance") == 8


def test_unsafe_key_refused(make_xregd, xregd_exe, workdir):
    key = _key(workdir, 0o644)
    d = make_xregd(start=False, pseudonymize={"patient_id": "hmac", "key_file": str(key)})
    d.write_config()
    r = run_xregctl("check-config", "-c", str(d.config_path))
    assert r.returncode == 1
    assert f'pseudonymize.key_file "{key}": is accessible to group or others (mode 0644)' in r.stderr
    assert "chmod 600" in r.stderr
    r = subprocess.run([xregd_exe, "-c", str(d.config_path)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30, env=_clean_env())
    assert r.returncode != 0 and "is accessible to group or others" in r.stderr, r.stderr
    os.chmod(key, 0o600)
    r = run_xregctl("check-config", "-c", str(d.config_path))
    assert r.returncode == 0 and "pseudonymize: patient_id hmac" in r.stdout, r.stderr
