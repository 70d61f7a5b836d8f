"""Never lose an acknowledged object: PostgreSQL down, SIGKILL mid-burst, spool budget, and the
embedded PostgreSQL default."""

from __future__ import annotations

import time

import psycopg2
import pytest

import dicomgen
import rawscu
from dicomgen import SOP, TS
from xregtest import (CALLING_AE, Size, StorescuBatch, echoscu, pending_objects, processes_mentioning,
                      stop_stray_clusters, storescu, wait_registered, wait_until)


def audit_inserts(db) -> int:
    return db.count("xreg.audit_log", "table_name = 'instance' AND action = 'INSERT'")


def hold(d, seconds: float) -> None:
    """Watch xregd for `seconds` (while it retries): it must stay up. Deliberately time-based: the
    point is to let several retry periods pass."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        d.check_alive()
        time.sleep(0.1)


def test_postgresql_down_during_burst(xregd, db, pg, gen, workdir):
    files = gen(100, n_patients=4)
    uids = {f.sop_instance_uid for f in files}
    pg.stop()
    try:
        run = storescu(xregd.port, files, parallel=2, workdir=workdir / "scu")
        assert len(run.succeeded()) == 100, "reception must go on while PostgreSQL is down\n" + run.describe_failures()
        pending = [p for p in pending_objects(xregd) if p.suffix == ".dcm"]
        assert len(pending) == 100, f"{len(pending)} objects in the spool after 100 acknowledgements"
        incoming = xregd.spool_files("incoming")
        assert {p.stem for p in incoming if p.suffix == ".dcm"} == {p.stem for p in incoming if p.suffix == ".meta"}, \
            "every incoming/<id>.dcm needs its <id>.meta"
        # retry_max_ms is 1000: let a few retry periods pass with the database down.
        hold(xregd, 3.0)
        assert echoscu(xregd.port).returncode == 0
        assert len([p for p in pending_objects(xregd) if p.suffix == ".dcm"]) == 100
        assert not xregd.spool_files("rejected"), "objects were rejected because the database was down"
    finally:
        pg.ensure_up()
    wait_registered(db, uids, 90, xregd)
    wait_until(lambda: not pending_objects(xregd), 60, "incoming/ to empty")
    assert db.count("xreg.instances") == 100
    assert audit_inserts(db) == 100, "an instance was inserted more than once"
    assert db.count("xreg.rejection") == 0


@pytest.mark.parametrize("database", ["up", "down"])
def test_sigkill_during_burst_loses_no_acknowledged_object(database, xregd, db, pg, gen, workdir):
    """300 objects over 3 associations, SIGKILL after ~50 acknowledgements, restart, resend nothing:
    every object acknowledged with Success ends up registered exactly once. With the database
    down during the burst every acknowledged object is still only in the spool when the kill
    lands (with it up, fast workers may have registered most of them already)."""
    files = gen(300, rows=128, columns=128, n_patients=6)  # ~33 KiB each
    uid_of = {str(f.path): f.sop_instance_uid for f in files}
    if database == "down":
        pg.stop()
    try:
        batch = StorescuBatch(xregd.port, files, parallel=3, workdir=workdir / "scu")
        try:
            wait_until(lambda: batch.n_acked() >= 50 or all(p.poll() is not None for p in batch.procs), 120,
                       "50 acknowledged objects", interval=0.02)
            xregd.kill()
        finally:
            run = batch.wait(120)
    finally:
        pg.ensure_up()
    acked = run.acked_uids(uid_of)
    assert len(acked) >= 50, run.describe_failures()
    assert len(acked) < 300, "every object was acknowledged before the kill: the test did not kill mid-burst"

    xregd.start()  # READY=1 comes after spool recovery
    wait_registered(db, acked, 120, xregd)
    wait_until(lambda: not pending_objects(xregd), 60, "incoming/ to empty after recovery")
    have = db.instance_uids()
    assert have <= set(uid_of.values()), "registry holds instances that were never sent"
    assert audit_inserts(db) == len(have), "an instance was inserted more than once"
    assert db.count("xreg.rejection") == 0


def test_spool_budget_refuses_with_a700_then_drains(make_xregd, db, pg, gen, workdir):
    budget = 200 * 1024
    d = make_xregd(spool={"max_bytes": Size("200KiB")})
    files = gen(40, n_patients=2)  # ~9.3 KB each, ~370 KB in all
    size = max(f.size for f in files)
    pg.stop()
    try:
        run = storescu(d.port, files, workdir=workdir / "scu")  # one association, in order, no halt
        statuses = [run.status(f.path) for f in files]
        assert set(statuses) <= {0x0000, 0xA700}, run.describe_failures()
        n_ok = statuses.index(0xA700) if 0xA700 in statuses else len(statuses)
        assert 0 < n_ok < len(files), f"statuses: {statuses}"
        assert all(s == 0xA700 for s in statuses[n_ok:]), f"Success after A700 with nothing draining: {statuses}"
        acked_bytes = sum(f.size for f in files[:n_ok])
        assert acked_bytes <= budget + size, f"{acked_bytes} bytes acknowledged with a {budget}-byte budget"
        assert acked_bytes >= 0.6 * budget, f"A700 after only {acked_bytes} bytes of a {budget}-byte budget"
        # the raw client sees the same status
        ds = dicomgen.make_dataset("CR")
        r = rawscu.store("127.0.0.1", d.port, "XREG", SOP["CR"], str(ds.SOPInstanceUID), TS.EXPLICIT_LE,
                         dicomgen.dataset_bytes(ds), calling_ae=CALLING_AE)
        assert r.status == 0xA700, str(r)
        assert len([p for p in pending_objects(d) if p.suffix == ".dcm"]) == n_ok
        d.check_alive()
    finally:
        pg.ensure_up()
    acked = {f.sop_instance_uid for f in files[:n_ok]}
    refused = {f.sop_instance_uid for f in files[n_ok:]} | {str(ds.SOPInstanceUID)}
    wait_registered(db, acked, 90, d)
    wait_until(lambda: not pending_objects(d), 60, "the spool to drain")
    assert not (refused & db.instance_uids()), "an object answered with A700 was registered"
    # room again: a new object is accepted and registered
    new = gen(1)
    run2 = storescu(d.port, new, workdir=workdir / "scu2")
    assert run2.status(new[0].path) == 0x0000, run2.describe_failures()
    wait_registered(db, [new[0].sop_instance_uid], 60, d)


def embedded_connect(state_dir):
    """Connect to the embedded cluster through the socket in state_dir/postgresql/run."""
    run = state_dir / "postgresql" / "run"
    sockets = sorted(run.glob(".s.PGSQL.*")) if run.is_dir() else []
    sockets = [s for s in sockets if not s.name.endswith(".lock")]
    if not sockets:
        return None
    port = sockets[0].name.rsplit(".", 1)[1]
    conn = psycopg2.connect(host=str(run), port=port, dbname="xreg", user="xreg", connect_timeout=5)
    conn.autocommit = True
    return conn


@pytest.fixture
def embedded(make_xregd):
    d = make_xregd("embedded", migrate_first=False, start=False, database={"conninfo": ""})
    yield d
    try:
        if d.running:
            d.stop(timeout=90)
    finally:
        stray = stop_stray_clusters(d.state_dir)  # after a failure: no orphaned postmaster
    assert not stray, f"embedded cluster still running after xregd ended (pids {stray})"


def test_embedded_postgresql_default(embedded, gen, workdir):
    d = embedded
    d.start(timeout=180)  # initdb + start + migrations
    files = gen(3, n_patients=1)
    run = storescu(d.port, files, workdir=workdir / "scu")
    assert len(run.succeeded()) == 3, run.describe_failures()

    def registered():
        conn = embedded_connect(d.state_dir)
        if conn is None:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT sop_instance_uid FROM xreg.instances")
                have = {r[0] for r in cur.fetchall()}
        finally:
            conn.close()
        return have if {f.sop_instance_uid for f in files} <= have else None

    wait_until(registered, 60, "the 3 instances in the embedded cluster", ignore=(psycopg2.Error,))
    # The cluster must not inherit NOTIFY_SOCKET: Debian's postgres would send its own READY=1,
    # which systemd (NotifyAccess=main) logs as foreign, or takes for xregd's with NotifyAccess=all.
    assert not d.foreign_notifications(), \
        f"sd_notify messages from processes other than xregd: {d.foreign_notifications()}"
    rc = d.stop(timeout=90)
    assert rc == 0, f"xregd exited with {rc}\n{d.log_tail()}"
    assert d.notified("STOPPING=1")
    # xregd stops its cluster before it exits (a few seconds' grace for the postmaster to vanish).
    cluster = d.state_dir / "postgresql"
    try:
        wait_until(lambda: not processes_mentioning(str(cluster)), 5, "the embedded cluster to stop")
    except AssertionError:
        pytest.fail(f"embedded cluster still running after xregd exited: {processes_mentioning(str(cluster))}")
    assert not list(cluster.rglob("postmaster.pid")), "postmaster.pid left: the cluster was not shut down cleanly"
    assert not list((cluster / "run").glob(".s.PGSQL.*")), "the embedded cluster's socket is still there"

    # A restart reuses the cluster: the rows are still there.
    d.start(timeout=120)
    wait_until(registered, 30, "the instances after a restart on the same cluster", ignore=(psycopg2.Error,))
    assert d.stop(timeout=90) == 0
