"""PostgreSQL stopped for 30 s in the middle of an ingest while storescu keeps sending: reception
goes on into the spool, the workers retry with a growing delay, and once the database is back
the backlog drains, every acknowledged object registered exactly once, nothing rejected."""

from __future__ import annotations

import re
import time

from faultkit import Ledger, LogWatch, PacedSender, area, check_registry
from xregtest import pending_objects, wait_registered, wait_until

OUTAGE_S = 30.0
RETRY_INITIAL_MS = 200
RETRY_MAX_MS = 4000


def test_postgres_down_30s(make_xregd, db, pg, gen, workdir, summary):
    d = make_xregd(database={"retry_initial_ms": RETRY_INITIAL_MS, "retry_max_ms": RETRY_MAX_MS})
    # ~16 objects/s over 2 associations for the whole test (~45 s): 900 is more than it needs.
    files = gen(900, n_patients=6)
    log = LogWatch(d)
    sender = PacedSender(d.port, files, workdir / "scu", chunk=8, parallel=2, period=0.5).start()
    try:
        wait_until(lambda: db.count("xreg.instances") >= 30, 60, "30 instances registered before the outage")
        d.check_alive()
        pg.stop()
        t_down = time.monotonic()
        try:
            acked_at_stop = sender.n_acked()
            # Hold the outage for 30 s, watching that xregd stays up and keeps acknowledging.
            while time.monotonic() - t_down < OUTAGE_S:
                d.check_alive()
                assert not sender.exhausted, "the sender ran out of objects during the outage (generate more)"
                time.sleep(0.2)
            acked_during = sender.n_acked() - acked_at_stop
            backlog_files = [p for p in pending_objects(d) if p.suffix == ".dcm"]
            backlog = len(backlog_files)
        finally:
            pg.ensure_up()
        t_up = time.monotonic()
        outage = t_up - t_down
        assert acked_during > 100, f"only {acked_during} objects acknowledged during the {OUTAGE_S:g} s outage"
        assert backlog >= acked_during * 0.9, \
            f"{backlog} objects waiting after {acked_during} acknowledged with the database down"
        # The backlog drains while the sender goes on: new objects mix with the old ones.
        wait_until(lambda: not any(p.exists() for p in backlog_files), 120, f"the backlog of {backlog} to drain",
                   interval=0.05)
        drain = time.monotonic() - t_up
        target = sender.n_sent() + 48
        wait_until(lambda: sender.n_sent() >= target or sender.exhausted, 60, "storescu to go on sending")
    finally:
        runs = sender.stop()

    ledger = Ledger()
    for part, run in runs:
        ledger.record(part, run)
    assert ledger.n_success == ledger.n_sends, \
        "every C-STORE must succeed, database or not:\n" + "\n".join(r.describe_failures() for _p, r in runs
                                                                     if len(r.succeeded()) != len(_p))
    wait_registered(db, ledger.acked, 120, d)
    wait_until(lambda: not pending_objects(d), 60, "the spool to drain")
    check = check_registry(db, ledger)
    assert not check.problems(), "; ".join(check.problems())
    assert check.distinct == len(ledger.acked)
    assert db.count("xreg.rejection") == 0, db.query("SELECT spool_id, reason FROM xreg.rejection")
    assert not area(d, "rejected"), f"rejected/: {area(d, 'rejected')}"

    # Retries were logged, with a delay that grows (doubling) up to retry_max_ms and no further.
    retries = log.lines(r"retrying in \d+ ms")
    assert retries, "no 'retrying in' line while PostgreSQL was down:\n" + log.text()[-3000:]
    delays = [int(m.group(1)) for m in (re.search(r"retrying in (\d+) ms", l) for l in retries)]
    assert min(delays) == RETRY_INITIAL_MS, f"first retry delays: {sorted(set(delays))}"
    assert max(delays) == RETRY_MAX_MS, f"the delay never reached retry_max_ms: {sorted(set(delays))}"
    assert set(delays) <= {min(RETRY_INITIAL_MS * 2**k, RETRY_MAX_MS) for k in range(12)}, \
        f"retry delays are not a doubling sequence capped at {RETRY_MAX_MS}: {sorted(set(delays))}"
    # Backoff keeps the retry rate low: 2 workers at <= 1 attempt per 4 s once at the cap.
    assert len(retries) <= 2 * (OUTAGE_S / (RETRY_MAX_MS / 1000) + 6) + 4, \
        f"{len(retries)} retries in a {outage:.0f} s outage: no backoff?"
    d.check_alive()
    summary(f"postgres down: {outage:.0f} s outage, {len(ledger.acked)} acknowledged "
            f"({acked_during} while the database was down), backlog of {backlog} drained {drain:.1f} s after the restart, "
            f"{len(retries)} retry lines, delays {sorted(set(delays))} ms, {check.duplicates} duplicates, "
            f"0 rejected")
