"""The sd_notify protocol as systemd sees it (Type=notify, NotifyAccess=main, WatchdogSec=).

xregd gets NOTIFY_SOCKET (a datagram socket this test binds with SO_PASSCRED, so each message
carries its sender's pid) and, where stated, WATCHDOG_USEC=2000000 without WATCHDOG_PID. The
contract checked here:
- READY=1, with a STATUS= line in the same message, once it listens; every message from xregd's
  own pid (systemd's NotifyAccess=main drops the others);
- STATUS= updates every few seconds naming the queue depth, and the last error while there is one;
- with WATCHDOG_USEC: WATCHDOG=1 at about half that interval while the pipeline makes progress
  (idle with an empty queue counts; so does retrying an unreachable database with backoff); none
  without WATCHDOG_USEC;
- SIGHUP: RELOADING=1 with MONOTONIC_USEC=<CLOCK_MONOTONIC in us> in one message, then READY=1,
  also when the new file is refused (the old configuration stays);
- SIGTERM: STOPPING=1 and exit 0; associations in flight finish first (every object they send is
  acknowledged), but for at most dicom.stop_timeout_s (reloadable).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import threading
import time

import pytest

import dicomgen
import rawscu
from dicomgen import SOP, TS
from xregtest import (CALLING_AE, Datagram, monotonic_us, StorescuBatch, Xregd, echoscu, free_port, migrate,
                      pending_objects, wait_registered, wait_until)

WATCHDOG_USEC = 2_000_000


class NotifyXregd(Xregd):
    """Xregd (which keeps every notify datagram whole: RELOADING=1 and MONOTONIC_USEC= must
    arrive in one) that can run xregd with WATCHDOG_USEC set. The helper gives xregd a clean
    environment, so the variable comes from a two-line wrapper that execs xregd: exec keeps the
    pid, so the messages still come from the process the helper started."""

    def __init__(self, *args, watchdog_usec: int | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        if watchdog_usec:
            wrapper = self.base / "xregd-with-watchdog"
            wrapper.write_text("#!/bin/sh\n"
                               f"WATCHDOG_USEC={int(watchdog_usec)}; export WATCHDOG_USEC; unset WATCHDOG_PID\n"
                               f"exec {shlex.quote(self.exe)} \"$@\"\n")
            wrapper.chmod(0o755)
            self.exe = str(wrapper)

    # -- queries ---------------------------------------------------------------------------
    def messages(self, since_us: int = 0) -> list[Datagram]:
        with self._cond:
            return [g for g in self.datagrams if g.start == self.starts and g.t_us >= since_us]

    def wait_message(self, predicate, since_us: int, timeout: float, what: str) -> Datagram:
        def found():
            for g in self.messages(since_us):
                if predicate(g):
                    return g
            return None

        try:
            return wait_until(found, timeout, what, interval=0.02)
        except AssertionError as e:
            raise AssertionError(f"{e}\nmessages since: {self.describe(since_us)}\n{self.log_tail(20)}") from None

    def describe(self, since_us: int = 0) -> str:
        return "; ".join(f"+{(g.t_us - since_us) / 1e6:.2f}s pid {g.pid}: {' | '.join(g.lines)}"
                         for g in self.messages(since_us))

    def assert_all_from_main_pid(self) -> None:
        with self._cond:
            foreign = [(g.pid, g.lines) for g in self.datagrams if g.pid not in self._main_pids]
            wrong = [(g.pid, g.lines) for g in self.datagrams if g.pid in self._main_pids and g.pid != self.pid
                     and g.start == self.starts]
        assert not foreign, f"notify messages from processes other than xregd: {foreign}"
        assert not wrong, f"notify messages from an earlier xregd during this run: {wrong}"


@pytest.fixture
def make_sd(request, xregd_exe, xregctl_exe, dcmtk, db, workdir):
    """make_sd(watchdog_usec=None, start=True, **config overrides) -> a running NotifyXregd.
    Teardown as the integration conftest's make_xregd: the test errors if xregd died unexpectedly
    or did not exit 0 on SIGTERM (its log is attached to a failure report)."""
    instances: list[NotifyXregd] = []
    request.node._xregds = instances

    def make(watchdog_usec: int | None = None, start: bool = True, **overrides) -> NotifyXregd:
        d = NotifyXregd(workdir / f"xregd{len(instances) + 1}", port=free_port(), conninfo=db.conninfo,
                        exe=xregd_exe, watchdog_usec=watchdog_usec, **overrides)
        instances.append(d)
        migrate(d, xregctl_exe)
        if start:
            d.start()
        return d

    yield make
    problems = []
    for d in instances:
        problems += [f"{d.base.name}: {p}" for p in d.close()]
    if problems:
        pytest.fail("xregd teardown: " + "; ".join(problems) + "\n" + instances[0].log_tail(40), pytrace=False)


class Stopper:
    """Xregd.stop() (SIGTERM, wait) on a thread, so that the test can talk to xregd meanwhile."""

    def __init__(self, d: Xregd, timeout: float) -> None:
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.timeout = timeout
        self._t = threading.Thread(target=self._run, args=(d,), name="stopper", daemon=True)
        self._t.start()

    def _run(self, d: Xregd) -> None:
        try:
            self.rc = d.stop(timeout=self.timeout)
        except BaseException as e:
            self.error = e

    def result(self) -> int:
        self._t.join(self.timeout + 15)
        if self.error is not None:
            raise self.error
        assert self.rc is not None, "stop() did not return"
        return self.rc


def gaps_s(stamps_us: list[int]) -> list[float]:
    return [(b - a) / 1e6 for a, b in zip(stamps_us, stamps_us[1:])]


def observe(d: NotifyXregd, seconds: float) -> None:
    """Watch xregd for `seconds`: the point is to collect the periodic messages of that span."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        d.check_alive()
        time.sleep(0.05)


QUEUE_RX = re.compile(r"(\d+)\s+queued|queue\D{0,20}(\d+)", re.I)


def queue_depth(status: str) -> int | None:
    m = QUEUE_RX.search(status)
    return None if m is None else int(m.group(1) or m.group(2))


# ------------------------------------------------------------------------------------------------


def test_ready_status_and_watchdog_while_ingesting(make_sd, db, gen, workdir):
    t0 = monotonic_us()
    d = make_sd(watchdog_usec=WATCHDOG_USEC)
    ready = [g for g in d.messages(t0) if g.has("READY=1")]
    assert len(ready) == 1, f"one READY=1 at start: {d.describe(t0)}"
    assert ready[0].value("STATUS"), f"READY=1 without a STATUS= line in the same message: {ready[0].lines}"
    assert echoscu(d.port).returncode == 0, "READY=1 was sent but the SCP does not answer"

    # 6 s with an ingest in the middle: pings go on at about 1 s (half of WATCHDOG_USEC).
    files = gen(150, n_patients=2)
    t_obs = monotonic_us()
    observe(d, 1.5)
    batch = StorescuBatch(d.port, files, parallel=2, workdir=workdir / "scu", debug=False)
    run = batch.wait(60)
    assert len(run.succeeded()) == len(files), run.describe_failures()
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, d)
    observe(d, max(1.5, 6.0 - (monotonic_us() - t_obs) / 1e6))
    t_end = monotonic_us()

    pings = [g.t_us for g in d.messages(ready[0].t_us) if g.has("WATCHDOG=1")]
    span = (t_end - ready[0].t_us) / 1e6
    assert len(pings) >= span / 1.5, f"{len(pings)} WATCHDOG=1 in {span:.1f} s: {d.describe(t_obs)}"
    gaps = gaps_s([ready[0].t_us] + pings + [t_end])
    assert max(gaps) < WATCHDOG_USEC / 1e6, \
        f"a {max(gaps):.2f} s gap between watchdog pings (WATCHDOG_USEC {WATCHDOG_USEC}): {gaps}"
    inner = sorted(gaps_s(pings))
    median = inner[len(inner) // 2]
    assert 0.3 * WATCHDOG_USEC / 1e6 <= median <= 0.6 * WATCHDOG_USEC / 1e6, \
        f"pings every {median:.2f} s (median); about half of {WATCHDOG_USEC / 1e6:g} s expected: {inner}"

    statuses = [g for g in d.messages(ready[0].t_us + 1) if g.value("STATUS") and not g.has("READY=1")]
    assert len(statuses) >= 2, f"no periodic STATUS= updates: {d.describe(t_obs)}"
    assert max(gaps_s([ready[0].t_us] + [g.t_us for g in statuses])) <= 6.0, \
        f"STATUS= updates further apart than a few seconds: {d.describe(t_obs)}"
    depths = [queue_depth(g.value("STATUS")) for g in statuses]
    assert None not in depths, f"STATUS= without the queue depth: {[g.value('STATUS') for g in statuses]}"
    assert depths[-1] == 0, f"queue depth {depths[-1]} after everything was registered"
    d.assert_all_from_main_pid()


def test_status_names_queue_and_last_error_watchdog_survives_database_outage(make_sd, db, pg, gen, workdir):
    d = make_sd(watchdog_usec=WATCHDOG_USEC)
    files = gen(5, n_patients=1)
    pg.stop()
    try:
        t0 = monotonic_us()
        run = StorescuBatch(d.port, files, workdir=workdir / "scu", debug=False).wait(60)
        assert len(run.succeeded()) == 5, run.describe_failures()
        t_sent = monotonic_us()
        observe(d, 4.0)  # the outage goes on: pings must too (retrying with backoff is not a hang)
        t_end = monotonic_us()
        waiting = len([p for p in pending_objects(d) if p.suffix == ".dcm"])
        pings = [x.t_us for x in d.messages(t0) if x.has("WATCHDOG=1")]
        gaps = gaps_s([t0] + pings + [t_end])
        assert max(gaps) < WATCHDOG_USEC / 1e6, \
            f"watchdog pings stopped while the database was down ({max(gaps):.2f} s gap): systemd would " \
            f"restart xregd during every outage. {d.describe(t0)}"
        statuses = [g.value("STATUS") for g in d.messages(t_sent + 1_500_000) if g.value("STATUS")]
        assert statuses, f"no STATUS= update during the outage: {d.describe(t0)}"
        down_status = statuses[-1]
        assert re.search(r"error|unreachable|fail", down_status, re.I), \
            f"STATUS= does not name the last error while the database is down: {down_status!r}"
    finally:
        pg.ensure_up()
    t_up = monotonic_us()
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, d)
    d.wait_message(lambda x: queue_depth(x.value("STATUS") or "") == 0, t_up, 12,
                   "a STATUS= with queue depth 0 once the database is back")
    d.assert_all_from_main_pid()
    print(f"STATUS with the database down: {down_status}")
    assert waiting == 5
    assert queue_depth(down_status) == waiting, \
        (f"STATUS= reports queue depth {queue_depth(down_status)} while {waiting} acknowledged objects wait in "
         f"the spool for the database: {down_status!r}")


def test_no_watchdog_pings_without_watchdog_usec(make_sd):
    d = make_sd()
    t_ready = next(g.t_us for g in d.messages() if g.has("READY=1"))
    d.wait_message(lambda g: g.value("STATUS") and not g.has("READY=1"), t_ready + 1, 8,
                   "a periodic STATUS= update (every few seconds)")
    assert not [g for g in d.messages() if g.has("WATCHDOG=1")], \
        f"WATCHDOG=1 without WATCHDOG_USEC in the environment: {d.describe()}"
    d.assert_all_from_main_pid()


def test_reload_sends_reloading_with_monotonic_usec_then_ready(make_sd, gen, workdir):
    d = make_sd()
    log_start = len(d.log())

    def hup(what: str) -> tuple[Datagram, Datagram]:
        t_sig = monotonic_us()
        os.kill(d.pid, signal.SIGHUP)
        rel = d.wait_message(lambda g: g.has("RELOADING=1"), t_sig, 10, f"RELOADING=1 after SIGHUP ({what})")
        ready = d.wait_message(lambda g: g.has("READY=1") and g is not rel, rel.t_us, 10,
                               f"READY=1 after RELOADING=1 ({what})")
        seq = [g for g in d.messages(t_sig) if g.has("RELOADING=1") or g.has("READY=1")]
        assert seq.index(rel) < seq.index(ready), f"{what}: READY=1 before RELOADING=1: {d.describe(t_sig)}"
        assert sum(g.has("RELOADING=1") for g in seq) == 1 and sum(g.has("READY=1") for g in seq) == 1, \
            f"{what}: one RELOADING=1 and one READY=1 per SIGHUP: {d.describe(t_sig)}"
        mono = rel.value("MONOTONIC_USEC")
        assert mono is not None and mono.isdigit(), \
            f"{what}: RELOADING=1 without MONOTONIC_USEC= in the same message: {rel.lines}"
        assert t_sig - 1_000_000 <= int(mono) <= rel.t_us + 1_000_000, \
            (f"{what}: MONOTONIC_USEC={mono} is not CLOCK_MONOTONIC in microseconds at the reload "
             f"(signal sent at {t_sig}, message received at {rel.t_us})")
        assert ready.t_us >= rel.t_us
        d.check_alive()
        return rel, ready

    # A valid reload.
    d.config["log"]["level"] = "notice"
    d.write_config()
    hup("valid file")
    wait_until(lambda: "configuration reloaded" in d.log()[log_start:], 10, "'configuration reloaded' in the log")

    # A refused file: the same sequence, the old configuration kept.
    good = d.config_path.read_text()
    d.config_path.write_text(good + "dicom: [unclosed\n")
    n_reloaded = d.log()[log_start:].count("configuration reloaded")
    _rel, ready = hup("invalid YAML")
    wait_until(lambda: "reload failed" in d.log()[log_start:], 10, "the reload error in the log")
    assert d.log()[log_start:].count("configuration reloaded") == n_reloaded
    assert echoscu(d.port).returncode == 0, "xregd stopped serving after a refused reload"
    run = StorescuBatch(d.port, gen(2, n_patients=1), workdir=workdir / "scu", debug=False).wait(60)
    assert len(run.succeeded()) == 2, run.describe_failures()
    d.config_path.write_text(good)
    d.assert_all_from_main_pid()


def test_sigterm_lets_associations_in_flight_finish(make_sd, db, gen, workdir):
    d = make_sd()
    files = gen(800, n_patients=4)  # 2 associations of 400: a few seconds of sending
    batch = StorescuBatch(d.port, files, parallel=2, workdir=workdir / "scu", debug=False)
    try:
        wait_until(lambda: batch.n_acked() >= 40 or all(p.poll() is not None for p in batch.procs), 60,
                   "40 acknowledgements", interval=0.01)
        assert all(p.poll() is None for p in batch.procs), "storescu finished before SIGTERM: send more"
        t_sig = monotonic_us()
        acked_at_sigterm = batch.n_acked()
        rc = d.stop(timeout=30 + 10)  # SIGTERM and wait; dicom.stop_timeout_s is 30 by default
        t_exit = monotonic_us()
    finally:
        run = batch.wait(60)
    stopping = d.wait_message(lambda g: g.has("STOPPING=1"), t_sig, 1, "STOPPING=1 after SIGTERM")
    assert rc == 0, f"xregd exited with {rc} on SIGTERM\n{d.log_tail()}"
    assert acked_at_sigterm < len(files)
    assert len(run.succeeded()) == len(files), \
        "associations in flight at SIGTERM must finish: " + run.describe_failures()
    assert run.returncodes == [0, 0], f"storescu exit codes {run.returncodes}"
    assert stopping.t_us <= t_exit
    lifecycle = [l for g in d.messages() for l in g.lines if l in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert lifecycle == ["READY=1", "STOPPING=1"], f"READY=1 then STOPPING=1 expected: {d.describe()}"
    d.assert_all_from_main_pid()
    print(f"SIGTERM after {acked_at_sigterm} of {len(files)} acknowledgements; exit 0 "
          f"{(t_exit - t_sig) / 1e6:.1f} s later, all {len(files)} acknowledged")

    # Whatever was not registered before the stop is in the spool: the next start registers it.
    d.start()
    wait_registered(db, {f.sop_instance_uid for f in files}, 120, d)
    wait_until(lambda: not pending_objects(d), 30, "the spool to drain")
    assert db.count("xreg.audit_log", "table_name = 'instance' AND action = 'INSERT'") == len(files)


def test_stop_timeout_bounds_the_wait_for_an_open_association(make_sd, db):
    d = make_sd()
    # dicom.stop_timeout_s is reloadable: 30 (the default) -> 3 through SIGHUP.
    d.config["dicom"]["stop_timeout_s"] = 3
    d.write_config()
    t_sig = monotonic_us()
    os.kill(d.pid, signal.SIGHUP)
    d.wait_message(lambda g: g.has("READY=1"), t_sig, 10, "READY=1 after the reload")
    wait_until(lambda: "configuration reloaded" in d.log(), 10, "'configuration reloaded'")

    ds = [dicomgen.make_dataset("CR") for _ in range(2)]
    a = rawscu.Association.connect("127.0.0.1", d.port, "XREG", [(SOP["CR"], [TS.EXPLICIT_LE])],
                                   calling_ae=CALLING_AE)
    try:
        r = a.c_store(SOP["CR"], str(ds[0].SOPInstanceUID), dicomgen.dataset_bytes(ds[0]))
        assert r.status == 0x0000, str(r)
        t_term = monotonic_us()
        stop = Stopper(d, timeout=3 + 7)  # SIGTERM; xregd must give up on the association after ~3 s
        d.wait_message(lambda g: g.has("STOPPING=1"), t_term, 5, "STOPPING=1 after SIGTERM")
        # The association is still served after SIGTERM: this object is acknowledged, so durable.
        r = a.c_store(SOP["CR"], str(ds[1].SOPInstanceUID), dicomgen.dataset_bytes(ds[1]))
        assert r.status == 0x0000, f"a store on an association open at SIGTERM: {r}"
        # ...and then left idle: xregd gives up after stop_timeout_s, not the 30 s default.
        rc = stop.result()
        waited = (monotonic_us() - t_term) / 1e6
    finally:
        a.abort()
    assert rc == 0, f"xregd exited with {rc}\n{d.log_tail()}"
    print(f"exit 0 {waited:.1f} s after SIGTERM with one idle association and dicom.stop_timeout_s 3")
    d.start()
    wait_registered(db, {str(x.SOPInstanceUID) for x in ds}, 60, d)
    d.assert_all_from_main_pid()
