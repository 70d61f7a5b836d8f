"""SIGKILL cycles: start xregd, send over 2-3 storescu associations, SIGKILL it after a random
number of acknowledgements, again and again on the same spool and database. Every object that
ever got Success must end up registered exactly once; nothing else may appear.

The randomness is seeded and printed: XREG_FAULT_SEED=<n> repeats a run, XREG_KILL_CYCLES=<n>
changes the number of cycles (default 30, at least 20).
"""

from __future__ import annotations

import os
import random
import threading

from faultkit import Ledger, area, check_registry, incoming_by_uid
from xregtest import StorescuBatch, wait_registered, wait_until

FRESH_PER_CYCLE = 60      # new objects per cycle (~9 KiB each)
RESENT_ACKED = 3          # already acknowledged objects sent again per cycle (a PACS resending)


def test_kill_cycles(make_xregd, db, pg, gen, workdir, summary):
    seed = int(os.environ.get("XREG_FAULT_SEED") or random.SystemRandom().randrange(1, 10**6))
    n_cycles = max(20, int(os.environ.get("XREG_KILL_CYCLES", "30")))
    rng = random.Random(seed)
    print(f"kill cycles: seed {seed} (XREG_FAULT_SEED={seed} repeats this run)")

    # How PostgreSQL behaves in each cycle: up; "down" = stopped before xregd starts and through
    # the burst; "stops" = stopped in the middle of the burst.
    modes = ["down"] * (n_cycles // 5) + ["stops"] * (n_cycles // 5)
    modes += ["up"] * (n_cycles - len(modes))
    rng.shuffle(modes)

    d = make_xregd(start=False)  # migrated; every cycle starts a fresh process
    ledger = Ledger()
    acked_files: list = []      # acknowledged at least once (resent now and then)
    retry: list = []            # sent, never acknowledged: the "PACS" sends them again
    mid_burst = 0
    partial = 0                 # files left in tmp/ by kills (removed at the next start)
    for cycle, mode in enumerate(modes, 1):
        fresh = gen(FRESH_PER_CYCLE, n_patients=3)
        batch = retry + fresh + rng.sample(acked_files, min(RESENT_ACKED, len(acked_files)))
        rng.shuffle(batch)
        parallel = rng.choice((2, 3))
        kill_after = rng.randint(1, len(batch) - 1)
        stopper = None
        if mode == "down":
            pg.stop()
        try:
            d.start()
            scu = StorescuBatch(d.port, batch, parallel=parallel, workdir=workdir / f"cycle{cycle:02d}", debug=False)
            try:
                if mode == "stops":
                    wait_until(lambda: scu.n_acked() >= kill_after // 2 or all(p.poll() is not None for p in scu.procs),
                               60, f"{kill_after // 2} acknowledgements", interval=0.01)
                    stopper = threading.Thread(target=pg.stop, name="pg-stop")  # the kill must not wait for it
                    stopper.start()
                wait_until(lambda: scu.n_acked() >= kill_after or all(p.poll() is not None for p in scu.procs),
                           60, f"{kill_after} acknowledgements", interval=0.01)
                if any(p.poll() is None for p in scu.procs):
                    mid_burst += 1
                d.kill()
            finally:
                run = scu.wait(120)
                if stopper is not None:
                    stopper.join(120)
        finally:
            pg.ensure_up()
        ok = ledger.record(batch, run)
        n_ok = len(run.succeeded())
        retry = [f for f in batch if f.sop_instance_uid not in ledger.acked]
        known = {f.sop_instance_uid for f in acked_files}
        acked_files += [f for f in batch if f.sop_instance_uid in ok - known]

        # xregd is dead: every object acknowledged in this cycle is registered or waits, complete
        # (.dcm with its .meta), in incoming/.
        spooled = incoming_by_uid(d)
        partial += len(area(d, "tmp"))
        registered = db.instance_uids()
        lost = sorted(ok - registered - set(spooled))
        assert not lost, (f"cycle {cycle} ({mode}, seed {seed}): {len(lost)} acknowledged objects are neither "
                          f"registered nor in incoming/ after SIGKILL: {lost[:3]}")
        print(f"cycle {cycle:2d}: PostgreSQL {mode:5s} {parallel} associations, {len(batch):3d} sent, "
              f"kill after >= {kill_after:3d}: {n_ok:3d} acknowledged, {len(spooled):3d} spooled at the kill, "
              f"{len(registered)} registered so far", flush=True)

    assert mid_burst >= n_cycles // 2, \
        f"only {mid_burst} of {n_cycles} kills landed while storescu was still sending (seed {seed})"

    # A last start on the same spool and database: everything drains.
    d.start()
    wait_registered(db, ledger.acked, 180, d)
    wait_until(lambda: not area(d, "incoming"), 60, "incoming/ to empty")
    assert not area(d, "tmp"), f"tmp/ still holds {area(d, 'tmp')} (partial receptions are removed at start)"
    assert not area(d, "rejected"), f"objects were rejected: {area(d, 'rejected')}"
    assert db.count("xreg.rejection") == 0
    check = check_registry(db, ledger)
    assert not check.problems(), f"seed {seed}: " + "; ".join(check.problems())
    extra = len(check.registered - ledger.acked)
    summary(f"kill cycles: {n_cycles} cycles (seed {seed}; {modes.count('down')} with PostgreSQL down, "
            f"{modes.count('stops')} with it stopped mid-burst; {mid_burst} kills mid-burst, leaving {partial} partial "
            f"receptions in tmp/), "
            f"{len(ledger.sent)} instances sent ({ledger.n_sends} C-STOREs), {len(ledger.acked)} acknowledged, "
            f"{check.distinct} registered ({extra} of them sent but not acknowledged before a kill), "
            f"{check.duplicates} duplicates, {len(check.missing)} lost")
