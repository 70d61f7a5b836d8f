"""Load: 5,000 generated instances (64x64, ~9 KiB) over 32 concurrent storescu associations.
All acknowledged, exactly 5,000 rows and 5,000 instance INSERT audit rows, no duplicates.
The rate is printed (storescu runs with TCP_NODELAY=1, as in tests/bench/bench-load.py, which
compares it with storescp and Orthanc); it is reported, never asserted."""

from __future__ import annotations

import time

from faultkit import Ledger, check_registry, generate_parallel, send_load
from xregtest import pending_objects, wait_registered, wait_until

N_INSTANCES = 5000
ASSOCIATIONS = 32


def test_load_32_associations(make_xregd, db, workdir, summary):
    t0 = time.monotonic()
    files = generate_parallel(workdir / "load", N_INSTANCES, n_patients=40)
    gen_s = time.monotonic() - t0
    d = make_xregd(dicom={"max_associations": ASSOCIATIONS + 8}, log={"level": "notice"})
    registered_at = []

    def poll():
        if not registered_at and db.count("xreg.instance") >= N_INSTANCES:
            registered_at.append(time.monotonic() - t1)

    t1 = time.monotonic()
    acked_s, run = send_load(d.port, files, workdir / "scu", parallel=ASSOCIATIONS, on_poll=poll)
    ledger = Ledger()
    ledger.record(files, run)
    assert len(run.results) == N_INSTANCES and len(run.succeeded()) == N_INSTANCES, run.describe_failures()
    assert run.returncodes == [0] * ASSOCIATIONS, f"storescu exit codes {run.returncodes}"
    wait_registered(db, ledger.acked, 300, d)
    if not registered_at:
        registered_at.append(time.monotonic() - t1)
    wait_until(lambda: not pending_objects(d), 60, "the spool to drain")
    check = check_registry(db, ledger)
    assert not check.problems(), "; ".join(check.problems())
    assert (check.rows, check.distinct, check.audit_inserts, check.duplicates) == (N_INSTANCES, N_INSTANCES,
                                                                                  N_INSTANCES, 0)
    assert db.count("xreg.rejection") == 0
    summary(f"load: {N_INSTANCES} instances over {ASSOCIATIONS} storescu associations (TCP_NODELAY=1 in storescu's "
            f"environment): all acknowledged in {acked_s:.1f} s = {N_INSTANCES / acked_s:.0f} instances/s, "
            f"all registered after {registered_at[0]:.1f} s = {N_INSTANCES / registered_at[0]:.0f} instances/s; "
            f"{check.rows} rows, {check.audit_inserts} INSERT audit rows, {check.duplicates} duplicates "
            f"(generated in {gen_s:.0f} s)")
