#!/usr/bin/python3
"""Ingest throughput of xregd against DCMTK's storescp as a baseline.

Exact command lines (from the repository root, after `meson setup build && meson compile -C build`):

    # what `meson test -C build --benchmark ingest` runs:
    XREGD=build/daemon/xregd XREGCTL=build/daemon/xregctl XREG_SOURCE_ROOT=$PWD \\
        tests/with-postgres.sh /usr/bin/python3 tests/bench/bench-ingest.py

    # more objects, more runs, machine-readable summary on the last line:
    XREGD=build/daemon/xregd XREGCTL=build/daemon/xregctl XREG_SOURCE_ROOT=$PWD \\
        tests/with-postgres.sh /usr/bin/python3 tests/bench/bench-ingest.py --files 5000 --runs 5 --json

What it does: generates N small objects (CR/DX, 64x64, 16-bit, ~9 KiB each; 1,000 by default),
then sends them over 4 parallel storescu associations (4 storescu processes, each with its own
quarter of the files), run after run:
  1. to DCMTK's storescp (writing into a temporary directory; storescp does NOT fsync), and
  2. to xregd on a fresh database of the harness's PostgreSQL (xregd fsyncs each object before
     acknowledging it, and registers it in PostgreSQL).
storescu and storescp run with TCP_NODELAY=1 in their environment (DCMTK leaves Nagle on
otherwise, which stalls a stream of small objects on delayed ACKs); xregd runs WITHOUT it, as it
must disable Nagle on its own sockets. xregd is timed twice: until all N objects are acknowledged
and until all N are in xreg.instances. The median of --runs runs is reported, with the ratios
xregd/storescp (1.0 = as fast as storescp; higher is better).

Exit status: 0 when every object was acknowledged (and registered), 1 otherwise, 77 (meson's
skip) when XREGD/XREGCTL or the PostgreSQL harness is missing and CI is not "true".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "integration"))

import dicomgen  # noqa: E402
import xregtest  # noqa: E402
from xregtest import CI, Postgres, Storescp, StorescuBatch, Unavailable, Xregd, free_port, migrate  # noqa: E402


def skip(message: str) -> None:
    print(f"bench-ingest: {message}", file=sys.stderr)
    sys.exit(1 if CI else 77)


def send(port: int, files, workdir: pathlib.Path, parallel: int, aec: str, on_poll=None, timeout: float = 600):
    """Send files over `parallel` associations; returns (seconds until storescu finished, results).
    on_poll, if given, is called every 20 ms while storescu runs (to watch the registry)."""
    t0 = time.monotonic()
    batch = StorescuBatch(port, files, parallel=parallel, workdir=workdir, aec=aec, debug=False, nodelay=True)
    while any(p.poll() is None for p in batch.procs):
        if on_poll:
            on_poll()
        if time.monotonic() - t0 > timeout:
            batch.kill()
            raise SystemExit(f"bench-ingest: storescu did not finish within {timeout} s")
        time.sleep(0.02)
    run = batch.wait(60)
    return time.monotonic() - t0, run


def bench_storescp(files, base: pathlib.Path, parallel: int) -> float:
    scp = Storescp(base / "storescp").start()
    try:
        elapsed, run = send(scp.port, files, base / "scu-storescp", parallel, scp.aet)
    finally:
        scp.stop()
    ok = len(run.succeeded())
    if ok != len(files):
        raise SystemExit(f"bench-ingest: storescp acknowledged {ok} of {len(files)}\n{run.describe_failures()}")
    shutil.rmtree(base / "storescp", ignore_errors=True)
    return elapsed


def bench_xregd(files, base: pathlib.Path, parallel: int, pg: Postgres, workers: int) -> tuple[float, float]:
    db = pg.create_database()
    d = Xregd(base / "xregd", port=free_port(), conninfo=db.conninfo, pipeline={"workers": workers},
              log={"level": "notice"})
    try:
        migrate(d)
        d.start()
        n = len(files)
        t0 = time.monotonic()
        registered_at: list[float] = []

        def poll():
            if not registered_at and db.count("xreg.instances") >= n:
                registered_at.append(time.monotonic() - t0)

        acked_s, run = send(d.port, files, base / "scu-xregd", parallel, xregtest.AE_TITLE, on_poll=poll)
        ok = len(run.succeeded())
        if ok != n:
            raise SystemExit(f"bench-ingest: xregd acknowledged {ok} of {n}\n{run.describe_failures()}\n{d.log_tail()}")
        deadline = time.monotonic() + 600
        while not registered_at:
            d.check_alive()
            poll()
            if time.monotonic() > deadline:
                raise SystemExit(f"bench-ingest: only {db.count('xreg.instances')} of {n} registered after 600 s")
            time.sleep(0.02)
        rc = d.stop()
        if rc != 0:
            raise SystemExit(f"bench-ingest: xregd exited with {rc}\n{d.log_tail()}")
        return acked_s, registered_at[0]
    finally:
        d.close()
        db.close()
        pg.drop_database(db.name)
        shutil.rmtree(base / "xregd", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000, help="objects per run (default 1000)")
    ap.add_argument("--parallel", type=int, default=4, help="storescu associations (default 4)")
    ap.add_argument("--runs", type=int, default=3, help="runs per target; the median is reported (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="xregd pipeline.workers (default 2)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = ap.parse_args()

    for t in ("storescu", "storescp", "echoscu"):
        if not shutil.which(t):
            skip(f"{t} not found (Debian package dcmtk)")
    if not os.environ.get("XREGD") or not os.environ.get("XREGCTL"):
        skip("XREGD and XREGCTL must name the built xregd and xregctl")
    try:
        pg = Postgres()
    except (Unavailable, ImportError) as e:
        skip(str(e))

    base = xregtest.short_tempdir("xrb-")
    try:
        t0 = time.monotonic()
        files = dicomgen.generate(base / "files", args.files, n_patients=20, studies_per_patient=2,
                                  series_per_study=2)
        size = sum(f.size for f in files)
        print(f"generated {len(files)} objects ({size / len(files) / 1024:.1f} KiB each on average) "
              f"in {time.monotonic() - t0:.1f} s")
        print(f"sender: {args.parallel} parallel storescu associations, TCP_NODELAY=1 in storescu's environment")
        print("storescp: writes to a temporary directory and does NOT fsync (TCP_NODELAY=1 too)")
        print(f"xregd: fsyncs every object before acknowledging it; {args.workers} workers; PostgreSQL from "
              f"tests/with-postgres.sh (fsync=off there); no TCP_NODELAY in its environment")

        scp_s, ack_s, reg_s = [], [], []
        for i in range(args.runs):
            scp_s.append(bench_storescp(files, base, args.parallel))
            a, r = bench_xregd(files, base, args.parallel, pg, args.workers)
            ack_s.append(a)
            reg_s.append(r)
            print(f"run {i + 1}/{args.runs}: storescp {len(files) / scp_s[-1]:7.1f}/s   "
                  f"xregd acknowledged {len(files) / a:7.1f}/s   registered {len(files) / r:7.1f}/s")

        n = len(files)
        scp_rate = n / statistics.median(scp_s)
        ack_rate = n / statistics.median(ack_s)
        reg_rate = n / statistics.median(reg_s)
        print()
        print(f"{'target':<34}{'instances/s':>12}{'vs storescp':>13}")
        print(f"{'storescp (no fsync, no registry)':<34}{scp_rate:12.1f}{1.0:13.2f}")
        print(f"{'xregd, all acknowledged':<34}{ack_rate:12.1f}{ack_rate / scp_rate:13.2f}")
        print(f"{'xregd, all in xreg.instances':<34}{reg_rate:12.1f}{reg_rate / scp_rate:13.2f}")
        if args.json:
            print(json.dumps({"files": n, "parallel": args.parallel, "runs": args.runs, "workers": args.workers,
                              "storescp_per_s": round(scp_rate, 1), "xregd_acked_per_s": round(ack_rate, 1),
                              "xregd_registered_per_s": round(reg_rate, 1),
                              "ratio_acked": round(ack_rate / scp_rate, 3),
                              "ratio_registered": round(reg_rate / scp_rate, 3)}))
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
