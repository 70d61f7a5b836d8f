"""Acknowledged objects damaged on disk before the workers get to them (bit rot, an operator's
mistake): one spooled file overwritten with garbage, one truncated. They must be moved to
rejected/ with a reason saying the stored object no longer parses, recorded in xreg.rejection,
and the queue must go on: every other object is registered."""

from __future__ import annotations

import os

from faultkit import Ledger, LogWatch, area, check_registry, incoming_by_uid, read_record
from xregtest import dimse_status, pending_objects, storescu, wait_registered, wait_until

N = 30


def test_corrupt_spool_file(make_xregd, db, pg, gen, workdir, summary):
    d = make_xregd()
    files = gen(N, n_patients=2)
    ledger = Ledger()
    pg.stop()
    try:
        run = storescu(d.port, files, parallel=2, workdir=workdir / "scu")
        ledger.record(files, run)
        assert len(run.succeeded()) == N, run.describe_failures()
        spooled = incoming_by_uid(d)
        assert set(spooled) == ledger.acked, "every acknowledged object waits in incoming/"
        order = sorted(spooled, key=lambda uid: spooled[uid].name)  # spool ids sort in arrival order
        garbage_uid, truncated_uid = order[N // 3], order[2 * N // 3]
        garbage, truncated = spooled[garbage_uid], spooled[truncated_uid]
        size = garbage.stat().st_size
        garbage.write_bytes(os.urandom(size))                 # same size, no DICOM left in it
        with open(truncated, "r+b") as f:                     # cut in the middle of the pixel data
            f.truncate(truncated.stat().st_size // 2)
        d.check_alive()
    finally:
        pg.ensure_up()

    damaged = {garbage_uid, truncated_uid}
    good = ledger.acked - damaged
    wait_registered(db, good, 90, d)
    wait_until(lambda: not pending_objects(d), 60, "incoming/ to empty")

    def rejection_rows():
        rows = db.query("SELECT spool_id, sop_instance_uid, dimse_status, reason, path FROM xreg.rejection")
        return rows if len(rows) >= 2 else None

    rows = wait_until(rejection_rows, 30, "two rows in xreg.rejection")
    assert len(rows) == 2, rows
    by_uid = {r[1]: r for r in rows}
    assert set(by_uid) == damaged, f"rejection rows for {set(by_uid)}, damaged {damaged}"
    kept = area(d, "rejected")
    for uid in damaged:
        spool_id, _uid, status, reason, path = by_uid[uid]
        assert dimse_status(status) == 0, f"{uid}: acknowledged with Success, so dimse_status 0, got {status}"
        assert "no longer parses" in reason, f"{uid}: reason {reason!r}"
        assert f"{spool_id}.dcm" in kept and f"{spool_id}.reason" in kept, f"rejected/ holds {kept}"
        assert str(path).endswith(f"rejected/{spool_id}.dcm"), f"rejection.path {path!r}"
        record = read_record(d.spool_dir / "rejected" / f"{spool_id}.reason")
        assert "no longer parses" in record.get("reason", ""), f"{spool_id}.reason: {record}"
        assert record.get("sop_instance_uid") == uid, f"{spool_id}.reason names {record.get('sop_instance_uid')}"
    assert (d.spool_dir / "rejected" / f"{by_uid[garbage_uid][0]}.dcm").stat().st_size == size, \
        "the rejected file is not the damaged object as it was found"
    assert db.count("xreg.audit_log", "table_name = 'rejection' AND action = 'INSERT'") == 2

    registered = db.instance_uids()
    assert not damaged & registered, "a damaged object was registered"
    ledger.acked = good  # the damaged two are accounted for as rejections
    check = check_registry(db, ledger)
    assert not check.problems(), "; ".join(check.problems())
    assert check.distinct == N - 2

    # A restart does not record them twice (rejected/ is replayed at start; the record is idempotent).
    log = LogWatch(d)
    d.restart()
    wait_until(lambda: len(log.lines(r"rejection recorded")) >= 2, 30,
               "the two rejections to be recorded again after the restart")
    assert db.count("xreg.rejection") == 2
    assert db.count("xreg.audit_log", "table_name = 'rejection'") == 2, "recording a rejection again changed it"
    d.check_alive()
    summary(f"corrupt spool: {N} acknowledged, 1 overwritten with garbage and 1 truncated in incoming/ -> "
            f"2 in rejected/ with reason 'stored object no longer parses', 2 xreg.rejection rows, {N - 2} registered")
