"""Pieces shared by the fault-injection tests (tests/faults) and tests/bench/bench-load.py, on top of
tests/integration/xregtest.py and dicomgen.py (imported, not copied).

- LogWatch: wait for a line in xregd's log written after a mark (reload errors, retries).
- Ledger: what was sent and acknowledged, checked against the registry (exactly once, nothing
  unknown, audit INSERT rows) with one summary.
- spool helpers: the reception record (.meta) of a spooled object, per-area listings.
- PacedSender: storescu batches started at a steady pace from a thread, so that "storescu keeps
  sending" through a 30 s database outage without sending tens of thousands of objects.
- generate_parallel / send_load: the 5,000-instance load over 32 storescu associations.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import sys
import threading
import time
from typing import Iterable, Sequence

INTEGRATION = pathlib.Path(__file__).resolve().parent.parent / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))

import dicomgen  # noqa: E402
from xregtest import AE_TITLE, StorescuBatch, StoreRun, wait_until  # noqa: E402


# ------------------------------------------------------------------------------------------------
# xregd's log


class LogWatch:
    """Lines of an Xregd's log written after mark() (or after construction)."""

    def __init__(self, d) -> None:
        self.d = d
        self.offset = 0
        self.mark()

    def mark(self) -> None:
        self.offset = len(self.d.log())

    def text(self) -> str:
        return self.d.log()[self.offset:]

    def lines(self, pattern: str = "") -> list[str]:
        rx = re.compile(pattern)
        return [l for l in self.text().splitlines() if rx.search(l)]

    def wait(self, pattern: str, timeout: float = 15.0, what: str | None = None) -> str:
        """The first line after the mark matching pattern (a regex); fails after timeout, and at
        once if xregd died."""

        def found():
            self.d.check_alive()
            got = self.lines(pattern)
            return got[0] if got else None

        try:
            return wait_until(found, timeout, what or f"a log line matching {pattern!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}\nlog since the mark:\n{self.text()[-4000:]}") from None


# ------------------------------------------------------------------------------------------------
# the registry against what was sent


@dataclasses.dataclass
class Ledger:
    """Instances sent and acknowledged over a test (several batches, restarts, resends)."""

    sent: set[str] = dataclasses.field(default_factory=set)
    acked: set[str] = dataclasses.field(default_factory=set)
    n_sends: int = 0          # C-STORE attempts (files handed to storescu), resends included
    n_success: int = 0        # Success responses, resends included

    def record(self, files: Sequence, run: StoreRun) -> set[str]:
        """Add one storescu run; returns the UIDs it got Success for."""
        uid_of = {str(f.path): f.sop_instance_uid for f in files}
        self.sent |= set(uid_of.values())
        self.n_sends += len(files)
        ok = run.acked_uids(uid_of)
        self.n_success += len(run.succeeded())
        self.acked |= ok
        return ok


@dataclasses.dataclass
class RegistryCheck:
    rows: int                 # rows in xreg.instances
    distinct: int             # distinct SOP Instance UIDs in it
    audit_inserts: int        # INSERT audit rows for table 'instance'
    duplicates: int           # extra rows + extra INSERT audit rows for one UID
    missing: list[str]        # acknowledged, not registered
    unknown: list[str]        # registered, never sent
    registered: set[str]

    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} acknowledged instances are not registered (e.g. {self.missing[:3]})")
        if self.unknown:
            out.append(f"{len(self.unknown)} registered instances were never sent (e.g. {self.unknown[:3]})")
        if self.rows != self.distinct:
            out.append(f"xreg.instances has {self.rows} rows for {self.distinct} SOP Instance UIDs")
        if self.audit_inserts != self.distinct:
            out.append(f"{self.audit_inserts} INSERT audit rows for {self.distinct} instances")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicates")
        return out


def check_registry(db, ledger: Ledger) -> RegistryCheck:
    rows = int(db.scalar("SELECT count(*) FROM xreg.instances"))
    registered = db.instance_uids()
    inserts = dict(db.query("SELECT row_key, count(*) FROM xreg.audit_log "
                            "WHERE table_name = 'instance' AND action = 'INSERT' GROUP BY row_key"))
    audit_inserts = sum(inserts.values())
    dup = (rows - len(registered)) + sum(n - 1 for n in inserts.values() if n > 1)
    return RegistryCheck(rows=rows, distinct=len(registered), audit_inserts=audit_inserts, duplicates=dup,
                         missing=sorted(ledger.acked - registered), unknown=sorted(registered - ledger.sent),
                         registered=registered)


# ------------------------------------------------------------------------------------------------
# the spool


def read_record(path: os.PathLike | str) -> dict[str, str]:
    """A spool reception record (.meta or .reason): key=value lines after a version line."""
    out = {}
    for line in pathlib.Path(path).read_text(errors="replace").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


def incoming_by_uid(d) -> dict[str, pathlib.Path]:
    """SOP Instance UID -> incoming/<id>.dcm for every complete spooled object (.dcm and .meta)."""
    out = {}
    for meta in d.spool_files("incoming", ".meta"):
        dcm = meta.with_suffix(".dcm")
        if dcm.is_file():
            out[read_record(meta).get("sop_instance_uid", "")] = dcm
    return out


def area(d, name: str) -> list[str]:
    """File names in spool/<name>/ (hidden files included: nothing may be left behind)."""
    p = d.spool_dir / name
    return sorted(x.name for x in p.iterdir()) if p.is_dir() else []


# ------------------------------------------------------------------------------------------------
# senders


class PacedSender:
    """Send files in chunks of `chunk` over `parallel` storescu associations, one chunk every
    `period` seconds, from a thread, until the files run out or stop() is called.

    The pause between chunks is the point (a steady trickle through an outage), not a guess at
    when something is ready."""

    def __init__(self, port: int, files: Sequence, workdir: pathlib.Path, *, chunk: int = 8,
                 parallel: int = 2, period: float = 0.5, timeout: float = 120.0) -> None:
        self.port, self.files, self.workdir = port, list(files), workdir
        self.chunk, self.parallel, self.period, self.timeout = chunk, parallel, period, timeout
        self.runs: list[tuple[list, StoreRun]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="paced-sender", daemon=True)

    def start(self) -> "PacedSender":
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            for i in range(0, len(self.files), self.chunk):
                t0 = time.monotonic()
                part = self.files[i:i + self.chunk]
                run = StorescuBatch(self.port, part, parallel=self.parallel, workdir=self.workdir / f"chunk{i:05d}",
                                    debug=False).wait(self.timeout)
                with self._lock:
                    self.runs.append((part, run))
                if self._stop.wait(max(0.0, self.period - (time.monotonic() - t0))):
                    return
        except BaseException as e:  # reported by join()
            self.error = e

    def n_acked(self) -> int:
        with self._lock:
            return sum(len(r.succeeded()) for _p, r in self.runs)

    def n_sent(self) -> int:
        with self._lock:
            return sum(len(p) for p, _r in self.runs)

    @property
    def exhausted(self) -> bool:
        return not self._thread.is_alive()

    def stop(self, timeout: float = 150.0) -> list[tuple[list, StoreRun]]:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the paced sender did not stop within {timeout:g} s")
        if self.error is not None:
            raise AssertionError(f"the paced sender failed: {self.error!r}") from self.error
        return self.runs


def _generate_part(args) -> list:
    outdir, n, kw = args
    return dicomgen.generate(outdir, n, **kw)


def generate_parallel(outdir: pathlib.Path, n: int, jobs: int | None = None, **kw) -> list:
    """dicomgen.generate split over `jobs` processes (default: the CPUs), each with its own
    patients/studies; file names stay unique (prefix per part)."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, n))
    sizes = [n // jobs + (1 if i < n % jobs else 0) for i in range(jobs)]
    n_patients = kw.pop("n_patients", 20)
    parts = [(pathlib.Path(outdir), sizes[i], dict(kw, prefix=f"p{i}", n_patients=max(1, n_patients // jobs)))
             for i in range(jobs) if sizes[i]]
    if len(parts) == 1:
        return _generate_part(parts[0])
    with concurrent.futures.ProcessPoolExecutor(len(parts)) as ex:
        return [f for part in ex.map(_generate_part, parts) for f in part]


# 32 storescu processes wait their turn when the SCP serves fewer associations at a time than
# that (storescp without --fork, Orthanc's DicomThreadsCount): a long ACSE timeout keeps the
# queued ones from giving up. DCMTK takes the last of repeated options.
LOAD_STORESCU_EXTRA = ("-ta", "600", "-td", "600")


def send_load(port: int, files: Sequence, workdir: pathlib.Path, *, parallel: int = 32, aec: str = AE_TITLE,
              timeout: float = 900.0, on_poll=None) -> tuple[float, StoreRun]:
    """Send files over `parallel` concurrent storescu associations (TCP_NODELAY=1 in storescu's
    environment, -v output); returns (seconds until the last storescu exited, results).
    on_poll(), if given, runs every 20 ms meanwhile."""
    t0 = time.monotonic()
    batch = StorescuBatch(port, files, parallel=parallel, workdir=workdir, aec=aec, debug=False, nodelay=True,
                          extra=LOAD_STORESCU_EXTRA)
    try:
        while any(p.poll() is None for p in batch.procs):
            if on_poll:
                on_poll()
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"storescu did not finish within {timeout:g} s; output in {workdir}")
            time.sleep(0.02)
    except BaseException:
        batch.kill()
        raise
    elapsed = time.monotonic() - t0
    return elapsed, batch.wait(60)


def uid_map(files: Iterable) -> dict[str, str]:
    return {str(f.path): f.sop_instance_uid for f in files}
