"""xregctl eval / compare with predictions from the registry: instances received by the real
xregd (storescu -> xregd), predictions recorded through xreg.record_prediction (what the daemon's
classifier calls); eval over the registry must give exactly the metrics of the same
probabilities evaluated from a CSV, matching rows by SOP Instance UID (a truth CSV of UIDs) or
by the UIDs read from the files (a truth folder)."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest

from xregtest import run_xregctl, storescu, wait_registered


@pytest.fixture
def registry(xregd, db, gen, workdir):
    files = gen(16, n_patients=4, studies_per_patient=1, series_per_study=1)
    run = storescu(xregd.port, files, workdir=workdir / "scu")
    assert len(run.succeeded()) == len(files), run.describe_failures()
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, xregd)
    db.execute("INSERT INTO xreg.model (name, sha256, task, labels, positive_label, metadata)"
               " VALUES ('impl', %s, 'implant', '{absent,present}', 'present',"
               " '{\"xreg.threshold\": \"0.4\"}')", ("c" * 64,))
    mid = db.scalar("SELECT id FROM xreg.model WHERE name = 'impl'")
    rng = random.Random(5)
    truth, probs = {}, {}
    for i, f in enumerate(sorted(files, key=lambda f: f.sop_instance_uid)):
        y = "present" if i % 3 == 0 else "absent"
        p = round(min(0.99, max(0.01, rng.gauss(0.65 if y == "present" else 0.35, 0.2))), 2)
        truth[f.sop_instance_uid] = y
        probs[f.sop_instance_uid] = [1 - p, p]
        if i == 15:
            continue  # one instance without prediction
        db.execute("SELECT xreg.record_prediction(%s, %s, %s::real[], 'fp')",
                   (f.sop_instance_uid, mid, [1 - p, p]))
    return files, truth, probs


def _write_truth(path, truth):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sop_instance_uid", "label"])
        for uid, y in truth.items():
            w.writerow([uid, y])


def test_eval_registry_matches_csv(registry, xregd, workdir):
    files, truth, probs = registry
    cfg = str(xregd.config_path)
    _write_truth(workdir / "truth.csv", truth)
    with open(workdir / "preds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "absent", "present"])
        for uid, p in list(probs.items())[:15]:
            # what the registry holds: float4
            w.writerow([uid] + [repr(float(__import__("numpy").float32(v))) for v in p])
    r = run_xregctl("eval", "-c", cfg, "--truth", str(workdir / "truth.csv"), "registry:impl",
                    "--json", "-v", timeout=120)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["n"] == 15 and j["n_without_prediction"] == 1
    assert j["model"]["sha256"] == "c" * 64
    assert j["binary"]["at_threshold"]["threshold"] == pytest.approx(0.4)  # the model's
    r2 = run_xregctl("eval", "--truth", str(workdir / "truth.csv"), f"csv:{workdir / 'preds.csv'}",
                     "--labels", "absent,present", "--positive", "present", "--threshold", "0.4",
                     "--json")
    assert r2.returncode == 0, r2.stderr
    j2 = json.loads(r2.stdout)
    for k in ("accuracy", "log_loss", "cohen_kappa", "confusion_matrix", "per_class"):
        assert j[k] == pytest.approx(j2[k]) if isinstance(j[k], float) else j[k] == j2[k], k
    assert j["binary"]["auc"] == pytest.approx(j2["binary"]["auc"], abs=1e-12)
    assert j["binary"]["auc_ci95"] == pytest.approx(j2["binary"]["auc_ci95"], abs=1e-12)

    # a folder of the DICOM files: UIDs read from the headers
    data = workdir / "data"
    for uid, y in truth.items():
        (data / y).mkdir(parents=True, exist_ok=True)
        src = next(f.path for f in files if f.sop_instance_uid == uid)
        shutil.copy(src, data / y / (uid + ".dcm"))
    r3 = run_xregctl("eval", "-c", cfg, "--data", str(data), "registry:impl", "--json",
                     timeout=120)
    assert r3.returncode == 0, r3.stderr
    j3 = json.loads(r3.stdout)
    assert j3["n"] == 15 and j3["log_loss"] == pytest.approx(j["log_loss"], abs=1e-12)
    assert j3["binary"]["auc"] == j["binary"]["auc"]
    out = workdir / "out"
    r4 = run_xregctl("compare", "-c", cfg, "--truth", str(workdir / "truth.csv"),
                     "registry:impl", f"csv:{workdir / 'preds.csv'}", "--labels",
                     "absent,present", "--positive", "present", "--out", str(out), timeout=120)
    assert r4.returncode == 0, r4.stderr
    assert (out / "compare.json").exists() and (out / "roc.png").exists()


def test_eval_registry_errors(registry, xregd, db, workdir):
    files, truth, _ = registry
    cfg = str(xregd.config_path)
    _write_truth(workdir / "truth.csv", truth)
    r = run_xregctl("eval", "-c", cfg, "--truth", str(workdir / "truth.csv"), "registry:nope")
    assert r.returncode == 1 and 'no model "nope" in the registry' in r.stderr
    db.execute("INSERT INTO xreg.model (name, sha256, task, labels, positive_label)"
               " VALUES ('impl', %s, 'implant', '{absent,present}', 'present')", ("d" * 64,))
    r = run_xregctl("eval", "-c", cfg, "--truth", str(workdir / "truth.csv"), "registry:impl")
    assert r.returncode == 1 and "has 2 versions" in r.stderr and "c" * 64 in r.stderr
    r = run_xregctl("eval", "-c", cfg, "--truth", str(workdir / "truth.csv"),
                    "registry:impl@" + "c" * 64, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    r = run_xregctl("eval", "-c", cfg, "--truth", str(workdir / "truth.csv"),
                    "registry:impl@" + "d" * 64)
    assert r.returncode == 1 and "none of the 16 ground-truth rows has a prediction" in r.stderr


def test_eval_registry_threshold_recorded(registry, xregd, db, workdir):
    """When the registry records the threshold each prediction was labelled at (migration 0005
    on the classify branch adds xreg.prediction.threshold), eval uses it by default."""
    files, truth, _ = registry
    cfg = str(xregd.config_path)
    _write_truth(workdir / "truth.csv", truth)
    db.execute("ALTER TABLE xreg.prediction ADD COLUMN IF NOT EXISTS threshold real")
    db.execute("UPDATE xreg.prediction SET threshold = 0.25")
    r = run_xregctl("eval", "-c", cfg, "--truth", str(workdir / "truth.csv"), "registry:impl",
                    "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["binary"]["at_threshold"]["threshold"] == pytest.approx(0.25)
    r = run_xregctl("eval", "-c", cfg, "--truth", str(workdir / "truth.csv"), "registry:impl",
                    "--threshold", "0.6", "--json", timeout=120)
    assert json.loads(r.stdout)["binary"]["at_threshold"]["threshold"] == pytest.approx(0.6)
    uid = sorted(truth)[0]
    db.execute("UPDATE xreg.prediction SET threshold = 0.35 WHERE instance_ref = "
               "(SELECT id FROM xreg.instance WHERE sop_instance_uid = %s)", (uid,))
    r = run_xregctl("eval", "-c", cfg, "--truth", str(workdir / "truth.csv"), "registry:impl",
                    "--json", timeout=120)
    assert r.returncode == 0 and "2 different thresholds" in r.stderr
    assert json.loads(r.stdout)["binary"]["at_threshold"]["threshold"] == pytest.approx(0.4)
