#!/usr/bin/python3
"""Load benchmark: 5,000 instances over 32 concurrent storescu associations, sent to DCMTK's
storescp, to Orthanc and to xregd.

Exact command (from the repository root, after `meson setup build && meson compile -C build`):

    XREGD=build/daemon/xregd XREGCTL=build/daemon/xregctl XREG_SOURCE_ROOT=$PWD \\
        tests/with-postgres.sh /usr/bin/python3 tests/bench/bench-load.py

    # the median of 3 runs, a JSON summary as the last line:
    XREGD=build/daemon/xregd XREGCTL=build/daemon/xregctl XREG_SOURCE_ROOT=$PWD \\
        tests/with-postgres.sh /usr/bin/python3 tests/bench/bench-load.py --runs 3 --json

What it does: generates N objects once (CR/DX, 64x64, 16 bits allocated, ~9 KiB each; 5,000 by
default), then, run after run, sends all of them over 32 concurrent storescu processes (one
association each, N/32 files each) to:
  1. DCMTK storescp --fork (one process per association, so that 32 associations run at once;
     --storescp-single for one storescp process serving them in turn); it writes into a temporary
     directory and does NOT fsync;
  2. Orthanc (/usr/sbin/Orthanc, Debian package orthanc) on its built-in defaults except, in a
     JSON file written for the run: StorageDirectory and IndexDirectory in a temporary directory,
     DicomPort and HttpPort on free ports, HttpServerEnabled true (to poll /statistics),
     RemoteAccessAllowed false. Everything else is Orthanc's default: DicomAet ORTHANC,
     any calling AE accepted, DicomThreadsCount 4, SyncStorageArea true (it fsyncs), SQLite index;
  3. xregd on a fresh database of the harness's PostgreSQL (fsync=off there), with
     dicom.max_associations 40 so that all 32 associations are served at once; xregd fsyncs every
     object before acknowledging it and registers it in PostgreSQL.
storescu runs with TCP_NODELAY=1 in its environment (DCMTK leaves Nagle on otherwise), and so do
storescp and Orthanc; xregd runs WITHOUT it (it turns Nagle off itself). storescu's ACSE/DIMSE
timeouts are 600 s, since associations beyond an SCP's thread count wait in its listen queue.
Times are until the last storescu exits (all acknowledged); for Orthanc and xregd also until all N
are stored/registered. Reported: instances/s per target (median of --runs), and the ratios
xregd/storescp and xregd/Orthanc (1.0 = as fast; higher is better).

Exit status: 0 when every object was acknowledged everywhere, 1 otherwise, 77 (meson's skip)
when a tool, XREGD/XREGCTL or the PostgreSQL harness is missing and CI is not "true".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "faults"))
sys.path.insert(0, str(HERE.parent / "integration"))

import xregtest  # noqa: E402
from faultkit import generate_parallel, send_load  # noqa: E402
from xregtest import CI, Postgres, Storescp, Unavailable, Xregd, echoscu, free_port, migrate, wait_until  # noqa: E402

ORTHANC = "/usr/sbin/Orthanc"


def skip(message: str) -> None:
    print(f"bench-load: {message}", file=sys.stderr)
    sys.exit(1 if CI else 77)


def fail(message: str) -> None:
    raise SystemExit(f"bench-load: {message}")


def check_all_acked(name: str, files, run) -> None:
    ok = len(run.succeeded())
    if ok != len(files):
        fail(f"{name} acknowledged {ok} of {len(files)}\n{run.describe_failures()}")


# ------------------------------------------------------------------------------------------------


def bench_storescp(files, base: pathlib.Path, parallel: int, fork: bool) -> dict:
    scp = Storescp(base / "storescp", extra=["--fork"] if fork else []).start()
    try:
        acked_s, run = send_load(scp.port, files, base / "scu-storescp", parallel=parallel, aec=scp.aet)
    finally:
        scp.stop()
    check_all_acked("storescp", files, run)
    shutil.rmtree(base / "storescp", ignore_errors=True)
    shutil.rmtree(base / "scu-storescp", ignore_errors=True)
    return {"acked_s": acked_s}


class Orthanc:
    """/usr/sbin/Orthanc on a JSON configuration that changes only what the module doc lists."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config = {
            "StorageDirectory": str(base / "storage"),
            "IndexDirectory": str(base / "index"),
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
        }
        self.config_path = base / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.log_path = base / "orthanc.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Orthanc":
        env = dict(os.environ, TCP_NODELAY="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([ORTHANC, str(self.config_path)], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=env, cwd=self.base)

        def up() -> bool:
            if self.proc.poll() is not None:
                fail(f"Orthanc exited with {self.proc.returncode}:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                self.get("/system")
            except OSError:
                return False
            return echoscu(self.dicom_port, aec="ORTHANC").returncode == 0

        try:
            wait_until(up, 60, "Orthanc to answer HTTP and C-ECHO", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def bench_orthanc(files, base: pathlib.Path, parallel: int) -> dict:
    o = Orthanc(base / "orthanc").start()
    try:
        n = len(files)
        t0 = time.monotonic()
        stored_at: list[float] = []
        last_poll = [0.0]

        def poll():
            now = time.monotonic()
            if not stored_at and now - last_poll[0] >= 0.2:  # HTTP: not every 20 ms
                last_poll[0] = now
                if o.count() >= n:
                    stored_at.append(now - t0)

        acked_s, run = send_load(o.dicom_port, files, base / "scu-orthanc", parallel=parallel, aec="ORTHANC",
                                 on_poll=poll)
        check_all_acked("Orthanc", files, run)
        if not stored_at:
            wait_until(lambda: o.count() >= n, 300, f"Orthanc to hold {n} instances", interval=0.05)
            stored_at.append(time.monotonic() - t0)
        if o.count() != n:
            fail(f"Orthanc holds {o.count()} instances, {n} sent")
        return {"acked_s": acked_s, "stored_s": stored_at[0]}
    finally:
        o.stop()
        shutil.rmtree(base / "orthanc", ignore_errors=True)
        shutil.rmtree(base / "scu-orthanc", ignore_errors=True)


def bench_xregd(files, base: pathlib.Path, parallel: int, pg: Postgres, workers: int) -> dict:
    db = pg.create_database()
    d = Xregd(base / "xregd", port=free_port(), conninfo=db.conninfo, pipeline={"workers": workers},
              dicom={"max_associations": parallel + 8}, log={"level": "notice"})
    try:
        migrate(d)
        d.start()
        n = len(files)
        t0 = time.monotonic()
        registered_at: list[float] = []

        def poll():
            if not registered_at and db.count("xreg.instance") >= n:
                registered_at.append(time.monotonic() - t0)

        acked_s, run = send_load(d.port, files, base / "scu-xregd", parallel=parallel, on_poll=poll)
        if len(run.succeeded()) != n:
            fail(f"xregd acknowledged {len(run.succeeded())} of {n}\n{run.describe_failures()}\n{d.log_tail()}")
        deadline = time.monotonic() + 600
        while not registered_at:
            d.check_alive()
            poll()
            if time.monotonic() > deadline:
                fail(f"only {db.count('xreg.instance')} of {n} registered after 600 s")
            time.sleep(0.02)
        rows = db.count("xreg.instances")
        inserts = db.count("xreg.audit_log", "table_name = 'instance' AND action = 'INSERT'")
        if rows != n or inserts != n:
            fail(f"xregd: {rows} rows and {inserts} INSERT audit rows for {n} instances")
        rc = d.stop()
        if rc != 0:
            fail(f"xregd exited with {rc}\n{d.log_tail()}")
        return {"acked_s": acked_s, "stored_s": registered_at[0]}
    finally:
        d.close()
        db.close()
        pg.drop_database(db.name)
        shutil.rmtree(base / "xregd", ignore_errors=True)
        shutil.rmtree(base / "scu-xregd", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=5000, help="objects per run (default 5000)")
    ap.add_argument("--parallel", type=int, default=32, help="concurrent storescu associations (default 32)")
    ap.add_argument("--runs", type=int, default=1, help="runs per target; the median is reported (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="xregd pipeline.workers (default 2, as shipped)")
    ap.add_argument("--storescp-single", action="store_true",
                    help="run storescp without --fork (one process, associations served one at a time)")
    ap.add_argument("--targets", default="storescp,orthanc,xregd",
                    help="comma-separated subset of storescp,orthanc,xregd (default all three)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = set(targets) - {"storescp", "orthanc", "xregd"}
    if bad:
        ap.error(f"unknown targets {sorted(bad)}")

    for t in ("storescu", "storescp", "echoscu"):
        if not shutil.which(t):
            skip(f"{t} not found (Debian package dcmtk)")
    if "orthanc" in targets and not os.access(ORTHANC, os.X_OK):
        skip(f"{ORTHANC} not found (Debian package orthanc)")
    pg = None
    if "xregd" in targets:
        if not os.environ.get("XREGD") or not os.environ.get("XREGCTL"):
            skip("XREGD and XREGCTL must name the built xregd and xregctl")
        try:
            pg = Postgres()
        except (Unavailable, ImportError) as e:
            skip(str(e))

    base = xregtest.short_tempdir("xrl-")
    try:
        t0 = time.monotonic()
        files = generate_parallel(base / "files", args.files, n_patients=40)
        size = sum(f.size for f in files)
        print(f"generated {len(files)} objects ({size / len(files) / 1024:.1f} KiB each on average) "
              f"in {time.monotonic() - t0:.1f} s")
        print(f"sender: {args.parallel} concurrent storescu associations ({len(files) // args.parallel}-"
              f"{-(-len(files) // args.parallel)} files each), TCP_NODELAY=1 in storescu's environment")
        if "storescp" in targets:
            print(f"storescp: {'one process' if args.storescp_single else '--fork (a process per association)'}, "
                  f"writes to a temp dir, does NOT fsync; TCP_NODELAY=1")
        if "orthanc" in targets:
            print("Orthanc: defaults except StorageDirectory/IndexDirectory (temp dir), DicomPort/HttpPort (free ports), "
                  "HttpServerEnabled true, RemoteAccessAllowed false; so DicomThreadsCount 4, "
                  "SyncStorageArea true, SQLite index; TCP_NODELAY=1")
        if "xregd" in targets:
            print(f"xregd: fsyncs every object before acknowledging it; {args.workers} workers; "
                  f"dicom.max_associations {args.parallel + 8}; PostgreSQL from tests/with-postgres.sh (fsync=off); "
                  f"no TCP_NODELAY in its environment")
        sys.stdout.flush()

        results: dict[str, list[dict]] = {t: [] for t in targets}
        for i in range(args.runs):
            line = []
            for t in targets:
                if t == "storescp":
                    r = bench_storescp(files, base, args.parallel, fork=not args.storescp_single)
                elif t == "orthanc":
                    r = bench_orthanc(files, base, args.parallel)
                else:
                    r = bench_xregd(files, base, args.parallel, pg, args.workers)
                results[t].append(r)
                line.append(f"{t} {len(files) / r['acked_s']:7.1f}/s acknowledged"
                            + (f", {len(files) / r['stored_s']:7.1f}/s stored" if "stored_s" in r else ""))
            print(f"run {i + 1}/{args.runs}: " + ";  ".join(line), flush=True)

        n = len(files)

        def rate(t: str, key: str) -> float | None:
            vals = [r[key] for r in results.get(t, []) if key in r]
            return n / statistics.median(vals) if vals else None

        print()
        print(f"{'target':<44}{'instances/s':>12}")
        scp_name = "storescp" + ("" if args.storescp_single else " --fork") + " (no fsync, no index)"
        rows = [(scp_name, rate("storescp", "acked_s")),
                ("Orthanc, all acknowledged", rate("orthanc", "acked_s")),
                ("Orthanc, all in its index", rate("orthanc", "stored_s")),
                ("xregd, all acknowledged", rate("xregd", "acked_s")),
                ("xregd, all in xreg.instances", rate("xregd", "stored_s"))]
        for name, v in rows:
            if v is not None:
                print(f"{name:<44}{v:12.1f}")
        summary = {"files": n, "parallel": args.parallel, "runs": args.runs, "workers": args.workers,
                   "storescp_fork": not args.storescp_single}
        for t, key, label in (("storescp", "acked_s", "storescp_per_s"), ("orthanc", "acked_s", "orthanc_acked_per_s"),
                              ("orthanc", "stored_s", "orthanc_stored_per_s"), ("xregd", "acked_s", "xregd_acked_per_s"),
                              ("xregd", "stored_s", "xregd_registered_per_s")):
            v = rate(t, key)
            if v is not None:
                summary[label] = round(v, 1)
        x_ack, x_reg = rate("xregd", "acked_s"), rate("xregd", "stored_s")
        scp, o_ack, o_st = rate("storescp", "acked_s"), rate("orthanc", "acked_s"), rate("orthanc", "stored_s")
        if x_ack and scp:
            print(f"ratio xregd/storescp: {x_ack / scp:.2f} acknowledged, {x_reg / scp:.2f} registered")
            summary["ratio_xregd_storescp"] = round(x_ack / scp, 3)
            summary["ratio_xregd_registered_storescp"] = round(x_reg / scp, 3)
        if x_ack and o_ack:
            print(f"ratio xregd/Orthanc:  {x_ack / o_ack:.2f} acknowledged, {x_reg / o_st:.2f} registered vs stored")
            summary["ratio_xregd_orthanc"] = round(x_ack / o_ack, 3)
            summary["ratio_xregd_registered_orthanc_stored"] = round(x_reg / o_st, 3)
        if args.json:
            print(json.dumps(summary))
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
