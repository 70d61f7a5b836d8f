"""A full spool: with spool.max_bytes at 256 KiB and PostgreSQL stopped, concurrent senders fill
the budget, then get A700 (Refused: Out of Resources) - never a Success past the budget, nothing
half-written left. Once the database is back the spool drains and service is normal again: the
refused objects, sent again, are accepted and registered."""

from __future__ import annotations

import rawscu
import dicomgen
from dicomgen import SOP, TS
from faultkit import Ledger, area, check_registry
from xregtest import CALLING_AE, Size, echoscu, pending_objects, storescu, wait_registered, wait_until

BUDGET = 256 * 1024


def test_spool_budget(make_xregd, db, pg, gen, workdir, summary):
    d = make_xregd(spool={"max_bytes": Size("256KiB")})
    files = gen(90, n_patients=3)  # ~9.3 KB each, ~830 KB in all: about 3 budgets
    ledger = Ledger()
    pg.stop()
    try:
        run = storescu(d.port, files, parallel=3, workdir=workdir / "scu")  # -nh: go on after A700
        ledger.record(files, run)
        statuses = {str(f.path): run.status(f.path) for f in files}
        assert set(statuses.values()) <= {0x0000, 0xA700}, run.describe_failures()
        ok = [f for f in files if statuses[str(f.path)] == 0x0000]
        refused = [f for f in files if statuses[str(f.path)] == 0xA700]
        assert ok and refused, f"{len(ok)} accepted, {len(refused)} refused with A700"
        texts = {run.results[str(f.path)].status_text for f in refused}
        assert {t.lower().replace(" ", "") for t in texts} == {"refused:outofresources"}, f"storescu reported {texts}"

        # The budget holds across 3 concurrent associations and is used up to the last object.
        spooled = [p for p in pending_objects(d) if p.suffix == ".dcm"]
        assert len(spooled) == len(ok), f"{len(spooled)} objects in incoming/, {len(ok)} acknowledged"
        used = sum(p.stat().st_size for p in spooled)
        biggest = max(p.stat().st_size for p in spooled)
        assert used <= BUDGET, f"{used} bytes acknowledged into a {BUDGET}-byte spool"
        assert BUDGET - used < biggest + 256, f"A700 with {BUDGET - used} bytes of the budget still free"
        assert not area(d, "tmp"), f"refused receptions left files in tmp/: {area(d, 'tmp')}"

        # The raw client sees the same status; C-ECHO still works with the spool full.
        ds = dicomgen.make_dataset("CR")
        raw = rawscu.store("127.0.0.1", d.port, "XREG", SOP["CR"], str(ds.SOPInstanceUID), TS.EXPLICIT_LE,
                           dicomgen.dataset_bytes(ds), calling_ae=CALLING_AE)
        assert raw.status == 0xA700, str(raw)
        assert echoscu(d.port).returncode == 0
        d.check_alive()
    finally:
        pg.ensure_up()

    # The database is back: the spool drains, and nothing that got A700 was registered.
    wait_registered(db, {f.sop_instance_uid for f in ok}, 90, d)
    wait_until(lambda: not pending_objects(d), 60, "the spool to drain")
    refused_uids = {f.sop_instance_uid for f in refused} | {str(ds.SOPInstanceUID)}
    assert not refused_uids & db.instance_uids(), "an object answered with A700 was registered"

    # Normal service: the refused objects, sent again (as a PACS retries), and new ones succeed.
    # Sent in batches that fit the budget, waiting for the spool to drain in between: a faster
    # sender may rightly get A700 again while a loaded machine registers slowly.
    again = refused + gen(10, n_patients=1)
    step = max(1, len(ok) // 2)
    for i in range(0, len(again), step):
        batch = again[i:i + step]
        run2 = storescu(d.port, batch, parallel=3, workdir=workdir / f"scu2-{i}")
        ledger.record(batch, run2)
        assert len(run2.succeeded()) == len(batch), run2.describe_failures()
        wait_until(lambda: not pending_objects(d), 60, "the spool to drain between batches")
    wait_registered(db, ledger.acked, 90, d)
    wait_until(lambda: not pending_objects(d), 60, "the spool to drain again")
    check = check_registry(db, ledger)
    assert not check.problems(), "; ".join(check.problems())
    assert check.distinct == len(files) + 10
    summary(f"spool budget: {BUDGET} B budget, {len(ok)} accepted ({used} B) and {len(refused)} refused with A700 "
            f"over 3 associations with the database down; after the restart all {len(again)} resent/new accepted")
