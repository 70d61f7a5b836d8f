"""Classification in the daemon (issue 6): models from the configuration, predictions, model rows
and study summaries in the registry, the fracture model only on the configured body parts,
objects that cannot be classified registered with their reason and listed for review, SIGHUP
model swaps (a corrupt file keeps the running set, a good one replaces it without losing queued
objects), kill -9 during classification.

The models are tiny (classify_models.py): their decisions follow the image's mean brightness, so
every expected label is known.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import time
import urllib.request

import pytest

import classify_models as cm
import dicomgen
from xregtest import SHARED_DATA, need, pending_objects, storescu, wait_registered, wait_until

ACTOR = "dicom:XTEST@127.0.0.1"


@pytest.fixture
def models(workdir) -> dict[str, pathlib.Path]:
    """The three tiny models, in workdir/models."""
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        need(False, f"torch/onnx missing ({e}): Debian python3-torch, python3-onnx; run /usr/bin/python3")
    return {t: cm.export(t, workdir / "models" / f"{t}.onnx") for t in cm.TASKS}


def model_config(models: dict, **fracture) -> dict:
    cfg = {"models": {"body_part": {"path": str(models["body_part"])},
                      "implant": {"path": str(models["implant"])},
                      "fracture": {"path": str(models["fracture"])}}}
    cfg["models"]["fracture"].update(fracture)
    return cfg


def predictions(db, uid: str) -> dict[str, tuple]:
    """task -> (label, confidence, probabilities, model_name, model_sha256, threshold)."""
    rows = db.query("SELECT p.task, p.label, p.confidence, p.probabilities, m.name, m.sha256, p.threshold "
                    "FROM xreg.prediction p JOIN xreg.model m ON m.id = p.model_ref "
                    "JOIN xreg.instance i ON i.id = p.instance_ref WHERE i.sop_instance_uid = %s", (uid,))
    return {r[0]: r[1:] for r in rows}


def wait_predicted(db, uids, n_tasks: dict[str, int], d, timeout: float = 90.0) -> None:
    """Wait until every uid is registered and has as many predictions as n_tasks[uid]."""
    wait_registered(db, uids, timeout=timeout, d=d)

    def done():
        d.check_alive()
        rows = dict(db.query("SELECT i.sop_instance_uid, count(p.id) FROM xreg.instance i "
                             "LEFT JOIN xreg.prediction p ON p.instance_ref = i.id GROUP BY 1"))
        return all(rows.get(u, 0) >= n_tasks[u] for u in uids)

    wait_until(done, timeout, "predictions")


def status_json(d) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/status?format=json", timeout=5) as r:
        raw = r.read()
    try:
        return json.loads(raw)
    except ValueError as e:
        raise AssertionError(f"/status is not valid JSON ({e}): {raw!r}") from None


def metrics_text(d) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_study_classified_and_summarised(make_xregd, db, workdir, models):
    """Two pelvis (bright) and two chest (dark) images of one study: body part and implant for
    all four, fracture only for the pelvis ones; three model rows with the files' sha256; the
    study summary; predictions audited with the DICOM actor; status and metrics show the models."""
    d = make_xregd(**model_config(models), pipeline={"workers": 2, "batch_max": 4, "batch_wait_ms": 200})
    log = d.log()
    for t in cm.TASKS:
        assert f"{t} model \"tiny-{t}\"" in log, log
    from pydicom.uid import generate_uid

    study = generate_uid()
    files = [cm.image(workdir / "in" / f"{i}.dcm", bright=i < 2, study_instance_uid=study,
                      instance_number=i + 1, seed=i) for i in range(4)]
    run = storescu(d.port, [f.path for f in files], workdir=workdir / "scu")
    assert len(run.succeeded()) == 4, run.describe_failures()
    bright = {f.sop_instance_uid for f in files[:2]}
    uids = [f.sop_instance_uid for f in files]
    wait_predicted(db, uids, {u: 3 if u in bright else 2 for u in uids}, d)
    time.sleep(0.5)  # nothing more may arrive: check there is no third prediction for chest images

    for f in files:
        p = predictions(db, f.sop_instance_uid)
        is_bright = f.sop_instance_uid in bright
        assert p["body_part"][0] == ("pelvis_hip" if is_bright else "chest"), p
        assert p["implant"][0] == ("present" if is_bright else "absent"), p
        if is_bright:
            assert set(p) == {"body_part", "implant", "fracture"}, p
            assert p["fracture"][0] == "absent", p  # bright -> no fracture
        else:
            assert set(p) == {"body_part", "implant"}, f"fracture ran on a chest image: {p}"
        for task, (_label, conf, probs, name, sha, thr) in p.items():
            assert name == f"tiny-{task}"
            assert sha == cm.sha256(models[task])
            assert abs(sum(probs.values()) - 1) < 1e-5
            assert conf == pytest.approx(max(probs.values()), abs=1e-6)
            assert (thr is None) == (task == "body_part")
            if task != "body_part":
                assert thr == pytest.approx(0.5)

    rows = db.query("SELECT name, sha256, task, version FROM xreg.model ORDER BY task")
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == sorted(
        [(f"tiny-{t}", cm.sha256(models[t]), t, "1") for t in cm.TASKS], key=lambda r: r[2])

    s = db.query("SELECT predicted_body_parts, any_instrument, any_fracture, n_instances_predicted "
                 "FROM xreg.studies WHERE study_instance_uid = %s", (files[0].study_instance_uid,))
    assert s == [("CHEST,PELVIS", True, False, 4)], s

    n_audit = db.scalar("SELECT count(*) FROM xreg.audit_log WHERE table_name = 'prediction' "
                        "AND action = 'INSERT' AND actor = %s", (ACTOR,))
    assert n_audit == 10

    st = status_json(d)
    got = {m["task"]: m for m in st["models"]}
    assert set(got) == set(cm.TASKS)
    for t in cm.TASKS:
        assert got[t]["sha256"] == cm.sha256(models[t])
        assert got[t]["placeholder"] is False
    assert st["classified"] == 4 and st["unclassified"] == 0
    text = metrics_text(d)
    assert 'xreg_inferences_total{model="tiny-body_part"} 4' in text, text
    assert 'xreg_inferences_total{model="tiny-fracture"} 2' in text, text


def test_fracture_body_parts_configurable(make_xregd, db, workdir, models):
    """models.fracture.body_parts: CHEST runs the fracture model on chest images only; without a
    body-part model the header's Body Part Examined decides."""
    d = make_xregd(**model_config(models, body_parts="CHEST"))
    files = [cm.image(workdir / "a" / f"{i}.dcm", bright=i == 0, seed=i) for i in range(2)]
    assert len(storescu(d.port, [f.path for f in files], workdir=workdir / "scu").succeeded()) == 2
    uids = [f.sop_instance_uid for f in files]
    wait_predicted(db, uids, {uids[0]: 2, uids[1]: 3}, d)
    assert "fracture" not in predictions(db, uids[0])
    assert predictions(db, uids[1])["fracture"][0] == "present"  # dark -> fracture
    d.stop()

    d2 = make_xregd("nobody",
                    models={"body_part": {"path": ""}, "implant": {"path": ""},
                            "fracture": {"path": str(models["fracture"]), "body_parts": "HIP"}})
    assert "models.body_part.path is empty: body_part classification is off" in d2.log()
    hip = cm.image(workdir / "b" / "hip.dcm", bright=False, body_part="HIP", seed=5)
    knee = cm.image(workdir / "b" / "knee.dcm", bright=False, body_part="KNEE", seed=6)
    assert len(storescu(d2.port, [hip.path, knee.path], workdir=workdir / "scu").succeeded()) == 2
    wait_predicted(db, [hip.sop_instance_uid], {hip.sop_instance_uid: 1}, d2)
    wait_registered(db, [knee.sop_instance_uid], d=d2)
    time.sleep(0.5)
    assert set(predictions(db, hip.sop_instance_uid)) == {"fracture"}
    assert predictions(db, knee.sop_instance_uid) == {}


def _issue(db, uid):
    return db.query("SELECT task, reason_code, reason FROM xreg.classification_issue c "
                    "JOIN xreg.instance i ON i.id = c.instance_ref WHERE i.sop_instance_uid = %s", (uid,))


def _with_study_and_series(data: bytes) -> tuple[str, bytes]:
    """The pydicom HTJ2K test file lacks Study and Series Instance UIDs, and neither pydicom 2.3
    nor DCMTK 3.6.7 can rewrite an HTJ2K file: insert the two elements as raw explicit VR little
    endian bytes before the first element that sorts after them. Returns (SOP Instance UID,
    bytes)."""
    import struct

    import pydicom

    sop_uid = str(pydicom.dcmread(__import__("io").BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    meta_len = struct.unpack_from("<I", data, 128 + 4 + 8)[0]
    pos = 128 + 4 + 12 + meta_len
    long_vr = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR"}
    while pos < len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if (group, elem) > (0x0020, 0x000D):
            break
        vr = data[pos + 4:pos + 6]
        if vr in long_vr:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            need(length != 0xFFFFFFFF, "HTJ2K test file: undefined length before (0020,000D)")
            pos += 12 + length
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]

    def ui(group, elem, value):
        v = value.encode() + (b"\0" if len(value) % 2 else b"")
        return struct.pack("<HH", group, elem) + b"UI" + struct.pack("<H", len(v)) + v

    from pydicom.uid import generate_uid

    extra = ui(0x0020, 0x000D, generate_uid()) + ui(0x0020, 0x000E, generate_uid())
    return sop_uid, data[:pos] + extra + data[pos:]


def test_unclassifiable_objects_registered_with_reason(make_xregd, db, workdir, models):
    """32-bit samples (unsupported), no Pixel Data, rows over pixels.max_rows, and an HTJ2K object
    left in the spool: each registered, its issue recorded, audited and in review_queue; the
    good image sent after them is classified (the queue is not blocked)."""
    d = make_xregd(start=False, **model_config(models), pixels={"max_rows": 100})
    # HTJ2K cannot be negotiated (not in the conformance statement): an object already in the
    # spool, as after an upgrade that dropped a codec, takes the same path.
    htj2k = SHARED_DATA / "dicom" / "pydicom-data" / "data_store" / "data" / "HTJ2KLossless_08_RGB.dcm"
    need(htj2k.is_file(), f"{htj2k} missing (../shared/data/dicom)")
    incoming = d.spool_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    htj2k_uid, data = _with_study_and_series(htj2k.read_bytes())
    (incoming / f"{int(time.time() * 1e6)}-1-1.dcm").write_bytes(data)
    d.start()

    (workdir / "u").mkdir()
    ds32 = dicomgen.make_dataset("CR", seed=11)
    ds32.BitsAllocated, ds32.BitsStored, ds32.HighBit = 32, 32, 31
    ds32.PixelData = bytes(64 * 64 * 4)
    ds32["PixelData"].VR = "OW"
    p32 = dicomgen.write(ds32, workdir / "u" / "bits32.dcm")
    nopix = dicomgen.make_dataset("CR", seed=12)
    del nopix.PixelData
    pnopix = workdir / "u" / "nopix.dcm"
    dicomgen.write(nopix, pnopix)
    big = cm.image(workdir / "u" / "big.dcm", bright=True, rows=128, columns=64, seed=12)
    good = cm.image(workdir / "u" / "good.dcm", bright=False, seed=13)
    paths = [p32, pnopix, big.path, good.path]
    run = storescu(d.port, paths, workdir=workdir / "scu")
    assert len(run.succeeded()) == 4, run.describe_failures()
    uid32 = dicomgen.info(p32).sop_instance_uid
    uidnp = dicomgen.info(pnopix).sop_instance_uid
    wait_predicted(db, [good.sop_instance_uid], {good.sop_instance_uid: 2}, d)
    wait_registered(db, [uid32, uidnp, big.sop_instance_uid, htj2k_uid], d=d)

    want = {uid32: "unsupported", uidnp: "no_pixels", big.sop_instance_uid: "limit",
            htj2k_uid: "unsupported"}
    for uid, code in want.items():
        issue = wait_until(lambda: _issue(db, uid), 30, f"issue of {uid}")
        assert issue[0][0] is None and issue[0][1] == code, (uid, issue)
        assert predictions(db, uid) == {}
    assert "Bits Allocated 32" in _issue(db, uid32)[0][2]
    assert "1.2.840.10008.1.2.4.201" in _issue(db, htj2k_uid)[0][2]
    assert "max" in _issue(db, big.sop_instance_uid)[0][2].lower() or "limit" in _issue(db, big.sop_instance_uid)[0][2]

    queue = {r[0]: r for r in db.query("SELECT sop_instance_uid, task, reason FROM xreg.review_queue "
                                        "WHERE predicted_label IS NULL")}
    for uid, code in want.items():
        assert uid in queue, (uid, queue)
        assert queue[uid][2].startswith(f"not classified ({code}): ")
    n_audit = db.scalar("SELECT count(*) FROM xreg.audit_log WHERE table_name = 'classification_issue' "
                        "AND action = 'INSERT'")
    assert n_audit == 4
    assert db.scalar("SELECT count(*) FROM xreg.audit_log WHERE table_name = 'classification_issue' "
                     "AND actor = %s", (ACTOR,)) == 3
    assert not pending_objects(d)
    assert d.spool_files("rejected") == []  # registered, not set aside
    st = status_json(d)
    assert st["unclassified"] == 4 and st["classified"] == 1
    assert 'xreg_classify_failures_total{reason="unsupported",task="all"} 2' in metrics_text(d)


def test_start_fails_on_bad_model(make_xregd, workdir, models):
    """A model that does not load stops the start, naming the key and the file; a model in the
    wrong slot too."""
    bad = workdir / "models" / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07this is not an onnx file" * 10)
    d = make_xregd(start=False, models={"implant": {"path": str(bad)}})
    with pytest.raises(AssertionError):
        d.start(timeout=60)
    assert f'models.implant.path "{bad}"' in d.log()
    d.exits.clear()
    d2 = make_xregd("wrongslot", start=False, models={"fracture": {"path": str(models["implant"])}})
    with pytest.raises(AssertionError):
        d2.start(timeout=60)
    assert "the model's xreg.task is \"implant\" but this key is for \"fracture\" models" in d2.log()
    d2.exits.clear()


def test_relative_model_paths(make_xregd, db, workdir, models):
    """A path relative to the configuration file's folder (as etc/xregd.yaml's ../models/)."""
    d = make_xregd(start=False, models={"body_part": {"path": "../models/body_part.onnx"}})
    # the config is workdir/xregd/xregd.yaml; the models are in workdir/models
    d.start()
    f = cm.image(workdir / "r" / "x.dcm", bright=True, seed=3)
    assert storescu(d.port, [f.path], workdir=workdir / "scu").succeeded()
    wait_predicted(db, [f.sop_instance_uid], {f.sop_instance_uid: 1}, d)
    assert set(predictions(db, f.sop_instance_uid)) == {"body_part"}


def _sighup_and_wait(d, start_count: int, timeout: float = 60) -> None:
    os.kill(d.pid, signal.SIGHUP)
    wait_until(lambda: d.log().count("configuration reloaded from") > start_count, timeout,
               "the reload to finish")


def test_sighup_swaps_models(make_xregd, db, workdir, models):
    """SIGHUP with a corrupt model file keeps the running set (predictions continue with the old
    sha256); SIGHUP with a new good model swaps it in, and objects queued across the swap are
    all classified, by one set or the other. The worker has 2 threads: models are compiled for
    the running pipeline's count, including those a reload loads (a session of another count is
    refused), and batches of 2 run side by side."""
    d = make_xregd(**model_config(models),
                   pipeline={"workers": 1, "threads_per_worker": 2, "batch_max": 2, "batch_wait_ms": 0})
    old_sha = cm.sha256(models["body_part"])
    good_copy = workdir / "models" / "body_part.v1"
    shutil.copy(models["body_part"], good_copy)

    # corrupt the file in place, reload: refused, old set kept
    models["body_part"].write_bytes(b"garbage" * 100)
    _sighup_and_wait(d, 0)
    assert "keeping the running models" in d.log()
    assert d.notified("RELOADING=1") and d.notified("READY=1")
    f1 = cm.image(workdir / "s" / "1.dcm", bright=True, seed=21)
    assert storescu(d.port, [f1.path], workdir=workdir / "scu").succeeded()
    wait_predicted(db, [f1.sop_instance_uid], {f1.sop_instance_uid: 3}, d)
    assert predictions(db, f1.sop_instance_uid)["body_part"][4] == old_sha

    # a new version: swapped in while a batch of objects is being sent
    cm.export("body_part", models["body_part"], version="2")
    new_sha = cm.sha256(models["body_part"])
    assert new_sha != old_sha
    files = [cm.image(workdir / "s" / f"q{i}.dcm", bright=i % 2 == 0, seed=30 + i) for i in range(12)]
    from xregtest import StorescuBatch

    batch = StorescuBatch(d.port, [f.path for f in files], workdir=workdir / "scu")
    _sighup_and_wait(d, 1)
    run = batch.wait()
    assert len(run.succeeded()) == 12, run.describe_failures()
    uids = [f.sop_instance_uid for f in files]
    wait_predicted(db, uids, {u: 2 + (i % 2 == 0) for i, u in enumerate(uids)}, d)
    shas = {predictions(db, u)["body_part"][4] for u in uids}
    assert shas <= {old_sha, new_sha}
    # after the swap, new objects use the new model
    f2 = cm.image(workdir / "s" / "2.dcm", bright=False, seed=22)
    assert storescu(d.port, [f2.path], workdir=workdir / "scu").succeeded()
    wait_predicted(db, [f2.sop_instance_uid], {f2.sop_instance_uid: 2}, d)
    assert predictions(db, f2.sop_instance_uid)["body_part"][4] == new_sha
    assert db.scalar("SELECT count(*) FROM xreg.model WHERE task = 'body_part'") == 2
    assert status_json(d)["models"][0]["sha256"] == new_sha
    assert not pending_objects(d)


def test_kill9_during_classification_loses_nothing(make_xregd, db, workdir, models):
    """SIGKILL while objects are being classified, then restart: every acknowledged object ends
    registered with its predictions."""
    d = make_xregd(**model_config(models), pipeline={"workers": 1, "batch_max": 2})
    files = [cm.image(workdir / "k" / f"{i}.dcm", bright=i % 2 == 1, rows=512, columns=512, seed=40 + i)
             for i in range(40)]
    from xregtest import StorescuBatch

    batch = StorescuBatch(d.port, [f.path for f in files], workdir=workdir / "scu")
    # kill once classification is under way, whether or not reception has finished
    wait_until(lambda: db.scalar("SELECT count(*) FROM xreg.prediction") > 0, 60, "the first prediction")
    n_before = db.scalar("SELECT count(DISTINCT instance_ref) FROM xreg.prediction")
    d.kill()
    run = batch.wait()
    acked = [f for f in files if run.status(f.path) == 0]
    assert acked, run.describe_failures()
    d.start()
    uids = [f.sop_instance_uid for f in acked]
    n_preds = {f.sop_instance_uid: 2 + (i % 2 == 1) for i, f in enumerate(files)}
    wait_predicted(db, uids, n_preds, d, timeout=180)
    assert db.scalar("SELECT count(*) FROM xreg.classification_issue") == 0
    assert not pending_objects(d)


def test_eval_over_registry_matches_direct(make_xregd, db, workdir, models, xregctl_exe):
    """Issue 6 item 6: `xregctl eval` over the predictions xregd stored equals `xregctl eval`
    running the same model directly on the same files (truth from the folder layout)."""
    from xregtest import run_xregctl

    help_text = run_xregctl("--help", exe=xregctl_exe).stdout
    need(" eval " in help_text or "\n  eval" in help_text, "xregctl eval is not in this build")
    import random

    rng = random.Random(7)
    d = make_xregd(**model_config(models))
    data = workdir / "data"
    files, truth = [], {}
    for i in range(24):
        f = rng.uniform(0.3, 0.7)
        label = "present" if f + rng.gauss(0, 0.08) > 0.5 else "absent"
        g = cm.image(data / label / f"{i}.dcm", bright=False, fraction=f, seed=100 + i)
        files.append(g)
        truth[g.sop_instance_uid] = label
    run = storescu(d.port, [f.path for f in files], workdir=workdir / "scu")
    assert len(run.succeeded()) == 24, run.describe_failures()
    uids = [f.sop_instance_uid for f in files]
    wait_until(lambda: db.scalar("SELECT count(*) FROM xreg.prediction WHERE task = 'implant'") == 24,
               90, "24 implant predictions")
    cfg = str(d.config_path)
    r1 = run_xregctl("eval", "-c", cfg, "--data", str(data), "registry:tiny-implant", "--json",
                     exe=xregctl_exe, timeout=180)
    assert r1.returncode == 0, r1.stderr
    r2 = run_xregctl("eval", "--data", str(data), str(models["implant"]), "--json", exe=xregctl_exe,
                     timeout=180)
    assert r2.returncode == 0, r2.stderr
    j1, j2 = json.loads(r1.stdout), json.loads(r2.stdout)
    assert j1["n"] == j2["n"] == 24
    assert j1["model"]["sha256"] == j2["model"]["sha256"] == cm.sha256(models["implant"])
    # the registry stores float4 probabilities: the same up to float32 rounding
    assert j1["log_loss"] == pytest.approx(j2["log_loss"], abs=1e-6)
    assert j1["accuracy"] == j2["accuracy"]
    assert j1["confusion_matrix"] == j2["confusion_matrix"]
    assert j1["binary"]["auc"] == pytest.approx(j2["binary"]["auc"], abs=1e-9)
    assert j1["binary"]["at_threshold"]["threshold"] == pytest.approx(0.5)
    assert j1["binary"]["auc"] > 0.5  # the model's score carries the label's signal


def test_demo_models(make_xregd, db, workdir):
    """The demo models the shipped configuration names (models/*.onnx) load, are reported as
    placeholders, and classify real radiographs: DICOM objects from ../shared/data/dicom."""
    from xregtest import SOURCE_ROOT

    demo = {t: SOURCE_ROOT / "models" / f for t, f in
            {"body_part": "body-part.onnx", "implant": "implant.onnx", "fracture": "fracture.onnx"}.items()}
    need(all(p.is_file() for p in demo.values()), f"demo models missing in {SOURCE_ROOT / 'models'}")
    index = SHARED_DATA / "dicom" / "index.tsv"
    need(index.is_file(), f"{index} missing (../shared/data/dicom)")
    picks = []
    for line in index.read_text().splitlines()[1:]:
        f = line.split("\t")
        # CR/DX objects with pixels (index.tsv: path, status, modality, sop, ts, ..., haspix)
        if len(f) > 11 and f[1] == "ok" and f[2] in ("CR", "DX") and f[11] == "True" and \
                "fixed" not in f[0] and (SHARED_DATA / "dicom" / f[0]).is_file():
            picks.append(SHARED_DATA / "dicom" / f[0])
    need(picks, "no CR/DX objects in ../shared/data/dicom/index.tsv")
    picks = picks[:4]
    d = make_xregd(models={t: {"path": str(p)} for t, p in demo.items()})
    assert "the body_part model is a placeholder and must not be trusted" in d.log()
    run = storescu(d.port, picks, workdir=workdir / "scu")
    acked = [p for p in picks if run.status(p) == 0]
    assert acked, run.describe_failures()
    import pydicom

    uids = [str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID) for p in acked]
    wait_until(lambda: all(predictions(db, u) or _issue(db, u) for u in uids), 120, "classification")
    got = [predictions(db, u) for u in uids]
    assert any(g for g in got), [(_issue(db, u)) for u in uids]
    for g in got:
        for task, row in g.items():
            assert row[3] == {"body_part": "demo-body-part", "implant": "demo-implant",
                              "fracture": "demo-fracture"}[task]
            assert row[4] == cm.sha256(demo[task])
    st = status_json(d)
    assert {m["name"] for m in st["models"]} == {"demo-body-part", "demo-implant", "demo-fracture"}
    assert all(m["placeholder"] for m in st["models"])
