"""xregctl's registry commands against a registry filled by the real xregd (storescu -> xregd),
with predictions added through the registry's own SQL function (xregd does not classify yet):
studies (filters, table/CSV/JSON), label (as a reviewer login role), audit verify (valid, anchor,
tampered), export-dataset (deterministic, patient-disjoint splits, manifest, missing files)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pathlib

import pytest

from xregtest import run_xregctl, storescu, wait_registered

LABELS = ["chest", "knee", "hand", "skull"]


def _role(db, name: str, group: str) -> None:
    db.execute(f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
            CREATE ROLE {name} LOGIN;
        END IF; END $$""")
    db.execute(f"GRANT {group} TO {name}")


@pytest.fixture
def registry(xregd, db, gen, workdir):
    """12 instances of 6 patients received by xregd, each with a body part and a fracture
    prediction; returns (files, source dir, {sop: predicted label})."""
    files = gen(12, n_patients=6, studies_per_patient=1, series_per_study=1)
    run = storescu(xregd.port, files, workdir=workdir / "scu")
    assert len(run.succeeded()) == len(files), run.describe_failures()
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, xregd)
    db.execute("INSERT INTO xreg.model (name, sha256, task, labels) VALUES ('bp', %s, 'body_part', %s)",
               ("a" * 64, LABELS))
    db.execute("INSERT INTO xreg.model (name, sha256, task, labels, positive_label)"
               " VALUES ('fx', %s, 'fracture', '{no,yes}', 'yes')", ("b" * 64,))
    bp = db.scalar("SELECT id FROM xreg.model WHERE name = 'bp'")
    fx = db.scalar("SELECT id FROM xreg.model WHERE name = 'fx'")
    predicted = {}
    for i, f in enumerate(sorted(files, key=lambda f: f.sop_instance_uid)):
        k = i % len(LABELS)
        probs = [0.02] * len(LABELS)
        probs[k] = 0.94 if i % 3 else 0.6  # every third one below the 0.8 review threshold
        predicted[f.sop_instance_uid] = (LABELS[k], probs[k])
        db.execute("SELECT xreg.study_summary_refresh(xreg.record_prediction(%s, %s, %s::real[], 'fp'))",
                   (f.sop_instance_uid, bp, probs))
        db.execute("SELECT xreg.study_summary_refresh(xreg.record_prediction(%s, %s, %s::real[], 'fp'))",
                   (f.sop_instance_uid, fx, [0.1, 0.9] if i == 0 else [0.9, 0.1]))
    return files, files[0].path.parent, predicted


def test_studies_formats_and_filters(registry, xregd):
    files, _, predicted = registry
    cfg = str(xregd.config_path)
    r = run_xregctl("studies", "-c", cfg, "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == len({f.study_instance_uid for f in files})
    row = rows[0]
    assert set(row) >= {"study_instance_uid", "patient_id", "predicted_body_parts", "any_fracture",
                        "n_instances", "header_body_parts"}
    assert isinstance(row["n_instances"], int) and isinstance(row["any_fracture"], bool)

    r = run_xregctl("studies", "-c", cfg, "--format", "csv")
    assert r.returncode == 0, r.stderr
    parsed = list(csv.DictReader(io.StringIO(r.stdout)))
    assert sorted(p["study_instance_uid"] for p in parsed) == sorted(x["study_instance_uid"] for x in rows)

    r = run_xregctl("studies", "-c", cfg)
    assert r.returncode == 0 and "study_instance_uid" in r.stdout and f"({len(rows)} rows)" in r.stdout

    # Filters: the one fracture; body part by label or DICOM term; the review queue.
    r = run_xregctl("studies", "-c", cfg, "--flag", "fracture", "--format", "json")
    fx = json.loads(r.stdout)
    first = sorted(files, key=lambda f: f.sop_instance_uid)[0]
    assert [x["study_instance_uid"] for x in fx] == [first.study_instance_uid]
    want = {f.study_instance_uid for f in files if predicted[f.sop_instance_uid][0] == "knee"}
    for value in ("knee", "KNEE"):
        r = run_xregctl("studies", "-c", cfg, "--body-part", value, "--format", "json")
        assert {x["study_instance_uid"] for x in json.loads(r.stdout)} == want
    r = run_xregctl("studies", "-c", cfg, "--flag", "review", "--format", "json")
    assert json.loads(r.stdout), "low-confidence predictions should put studies in the review queue"
    r = run_xregctl("studies", "-c", cfg, "--from", "2999-01-01", "--format", "json")
    assert json.loads(r.stdout) == []

    # Bad options: a clear message and exit status 2.
    for args, text in ((["--format", "xml"], 'unrecognized --format "xml"'),
                       (["--flag", "broken"], 'unrecognized --flag "broken"'),
                       (["--from", "yesterday"], "is not a date")):
        r = run_xregctl("studies", "-c", cfg, *args)
        assert r.returncode == 2 and text in r.stderr, (args, r.stderr)


def test_label_as_reviewer(registry, xregd, db):
    files, _, predicted = registry
    _role(db, "xrt_alice", "xreg_reviewer")
    _role(db, "xrt_bob", "xreg_reader")
    sop = sorted(files, key=lambda f: f.sop_instance_uid)[1]
    old = predicted[sop.sop_instance_uid][0]
    dsn = db.conninfo + " user=xrt_alice"
    r = run_xregctl("label", "--db", dsn, "--instance", sop.sop_instance_uid, "--task", "body_part",
                    "--value", "SKULL", "--reason", "cephalogram, checked by hand")
    assert r.returncode == 0, r.stderr
    assert f"body_part = skull (was {old}, from the prediction)" in r.stdout
    row = db.query("SELECT reviewer, actor, reason, replaced_value FROM xreg.labels WHERE sop_instance_uid = %s",
                   (sop.sop_instance_uid,))
    assert len(row) == 1 and row[0][0] == "xrt_alice" and row[0][1].startswith("cli:")
    assert row[0][2:] == ("cephalogram, checked by hand", old)
    # A reader may not label; an unknown body part is refused with the reason.
    r = run_xregctl("label", "--db", db.conninfo + " user=xrt_bob", "--instance", sop.sop_instance_uid,
                    "--task", "body_part", "--value", "knee", "--reason", "x")
    assert r.returncode == 1 and "permission denied" in r.stderr and "xreg_reviewer" in r.stderr, r.stderr
    r = run_xregctl("label", "--db", dsn, "--instance", sop.sop_instance_uid, "--task", "body_part",
                    "--value", "tail", "--reason", "x")
    assert r.returncode == 1 and 'unrecognized body part "tail"' in r.stderr, r.stderr
    r = run_xregctl("label", "--db", dsn, "--task", "body_part", "--value", "knee", "--reason", "x")
    assert r.returncode == 2 and "either --instance or --study" in r.stderr


def test_audit_verify_and_tampering(registry, xregd, db, workdir):
    cfg = str(xregd.config_path)
    anchor = workdir / "audit.anchor"
    r = run_xregctl("audit", "verify", "-c", cfg, "--anchor", str(anchor))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "audit chain valid:" in r.stdout
    assert "seq " in anchor.read_text()
    r = run_xregctl("audit", "verify", "-c", cfg, "--anchor", str(anchor))
    assert r.returncode == 0 and "anchor matches" in r.stdout, r.stdout + r.stderr

    # The superuser edits one row behind the triggers' back.
    seq = db.scalar("SELECT seq FROM xreg.audit_log WHERE table_name = 'instance' ORDER BY seq LIMIT 1")
    db.execute("ALTER TABLE xreg.audit_log DISABLE TRIGGER USER")
    db.execute("UPDATE xreg.audit_log SET actor = 'dicom:SOMEONE@1.2.3.4' WHERE seq = %s", (seq,))
    db.execute("ALTER TABLE xreg.audit_log ENABLE TRIGGER USER")
    r = run_xregctl("audit", "verify", "-c", cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"audit chain BROKEN at seq {seq} (id " in r.stdout and "changed after it was written" in r.stdout

    r = run_xregctl("audit", "check", "-c", cfg)
    assert r.returncode == 2


def _manifest(out: pathlib.Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _tree(out: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_export_dataset(registry, xregd, db, workdir):
    files, source, predicted = registry
    cfg = str(xregd.config_path)
    by_sop = {f.sop_instance_uid: f for f in files}

    # Nothing verified yet: a clear message.
    r = run_xregctl("export-dataset", "-c", cfg, "--out", str(workdir / "none"), "--source", str(source))
    assert r.returncode == 1 and "no body_part instances have a verified label" in r.stderr, r.stderr

    args = ["export-dataset", "-c", cfg, "--source", str(source), "--labels", "predicted",
            "--min-confidence", "0.9", "--ratios", "0.5,0.25,0.25", "--seed", "7"]
    r1 = run_xregctl(*args, "--out", str(workdir / "e1"))
    assert r1.returncode == 0, r1.stderr
    r2 = run_xregctl(*args, "--out", str(workdir / "e2"))
    assert r2.returncode == 0, r2.stderr
    assert _tree(workdir / "e1") == _tree(workdir / "e2"), "same seed and data must give the same export"

    rows = _manifest(workdir / "e1")
    confident = {s for s, (_, p) in predicted.items() if p >= 0.9}
    assert {r["sop_instance_uid"] for r in rows} == confident
    splits: dict[str, set[str]] = {}
    for r in rows:
        assert r["split"] in ("train", "validation", "test")
        assert r["label"] == predicted[r["sop_instance_uid"]][0]
        assert r["file"] == f"{r['split']}/{r['label']}/{r['sop_instance_uid']}.dcm"
        # the copied file is the received object
        assert (workdir / "e1" / r["file"]).read_bytes() == by_sop[r["sop_instance_uid"]].path.read_bytes()
        splits.setdefault(r["split"], set()).add(by_sop[r["sop_instance_uid"]].patient_id)
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not (splits[a] & splits[b]), f"patients in both {a} and {b}: {splits[a] & splits[b]}"
    assert "train" in splits
    # No raw Patient ID in the manifest (a per-seed pseudonymous group instead).
    text = (workdir / "e1" / "manifest.csv").read_text()
    assert not any(f.patient_id in text for f in files)

    # Another seed, another split of the same data (with 6 patients, seeds 7 and 8 differ).
    r = run_xregctl(*args[:-1], "8", "--out", str(workdir / "e3"))
    assert r.returncode == 0, r.stderr
    assert sorted(x["sop_instance_uid"] for x in _manifest(workdir / "e3")) == sorted(confident)
    assert _tree(workdir / "e3") != _tree(workdir / "e1")

    # Verified labels win over predictions, and are exported on their own by default.
    sop = sorted(confident)[0]
    db.execute("SELECT * FROM xreg.record_label(%s, NULL, 'body_part', 'hand', 'checked')", (sop,))
    r = run_xregctl("export-dataset", "-c", cfg, "--source", str(source), "--out", str(workdir / "v"))
    assert r.returncode == 0, r.stderr
    assert [(x["sop_instance_uid"], x["label"], x["label_source"]) for x in _manifest(workdir / "v")] == \
        [(sop, "hand", "verified")]

    # Refusals: a non-empty output folder, a missing file.
    r = run_xregctl(*args, "--out", str(workdir / "e1"))
    assert r.returncode == 1 and "exists and is not empty" in r.stderr
    missing = by_sop[sorted(confident)[-1]].path
    hidden = workdir / "moved-away.dcm"
    missing.rename(hidden)
    r = run_xregctl(*args, "--out", str(workdir / "m1"))
    assert r.returncode == 1 and "have no file under" in r.stderr, r.stderr
    assert not (workdir / "m1").exists()
    r = run_xregctl(*args, "--allow-missing", "--out", str(workdir / "m2"))
    assert r.returncode == 0 and "left out" in r.stdout, r.stderr
    assert len(_manifest(workdir / "m2")) == len(confident) - 1
    hidden.rename(missing)
