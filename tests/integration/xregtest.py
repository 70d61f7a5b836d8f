"""Helpers shared by the integration tests (conftest.py) and the benchmark (tests/bench).

- Environment: XREGD, XREGCTL, XREG_SOURCE_ROOT, XREG_SHARED_DATA, XREG_TEST_* from
  tests/with-postgres.sh; `need()` skips, or fails under CI=true.
- Postgres: the harness's cluster (stop/start through XREG_TEST_PGCTL, one database per test).
- Xregd: writes a config, runs $XREGD -c CONFIG in the foreground with its own NOTIFY_SOCKET,
  waits for READY=1, SIGTERM/SIGKILL/restart, keeps stderr in a file.
- storescu/echoscu runners that parse DCMTK's debug output into per-file DIMSE statuses.
- Storescp: DCMTK's storescp as a stand-in SCP (benchmark baseline, self-tests of this kit).
- wait_until: bounded polling; nothing here sleeps blindly.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Callable, Iterable, Sequence

import dicomgen

CI = os.environ.get("CI", "") == "true"
SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)        # Linux values; Python exposes them on most builds
SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
HERE = pathlib.Path(__file__).resolve().parent
SOURCE_ROOT = pathlib.Path(os.environ.get("XREG_SOURCE_ROOT") or HERE.parent.parent)
SHARED_DATA = pathlib.Path(os.environ.get("XREG_SHARED_DATA") or SOURCE_ROOT.parent / "shared" / "data")

AE_TITLE = "XREG"
CALLING_AE = "XTEST"


class Unavailable(Exception):
    """A dependency of a test is missing; conftest turns it into skip (or fail under CI)."""


def need(condition: object, message: str) -> None:
    """Skip the calling test when condition is false, or fail it under CI=true."""
    if condition:
        return
    import pytest

    if CI:
        pytest.fail(f"{message} (CI=true: a missing dependency is an error)", pytrace=False)
    pytest.skip(message)


def tool(name: str) -> str:
    path = shutil.which(name)
    need(path, f"{name} not found on PATH (Debian package {dicomgen.DEBIAN_PACKAGE.get(name, '?')})")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.1, ignore: tuple = ()) -> object:
    """Poll predicate every interval until it returns a truthy value; return that value.

    Raises AssertionError after timeout seconds, naming what and the last value seen. Exceptions
    of the types in ignore count as a falsy result (e.g. the database restarting).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = predicate()
        except ignore as e:  # noqa: PERF203
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def short_tempdir(prefix: str = "xrt-") -> pathlib.Path:
    """A directory with a short path (unix sockets are limited to 107 bytes), readable by all so
    that an embedded cluster running as another user can reach its data directory below it."""
    d = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


def _clean_env(extra: dict | None = None) -> dict:
    """The environment for xregd/xregctl: no libpq variables (so that a config's conninfo is
    tested as written) and no TCP_NODELAY (xregd must turn Nagle off by itself)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PG") and k not in ("TCP_NODELAY", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                                                   "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(extra or {})
    return env


# ------------------------------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    """The cluster tests/with-postgres.sh started (XREG_TEST_CONNINFO, XREG_TEST_PGCTL)."""

    _counter = itertools.count(1)

    def __init__(self) -> None:
        import psycopg2  # noqa: F401  (fail early with ImportError if missing)

        self.conninfo = os.environ.get("XREG_TEST_CONNINFO", "")
        self.pgctl = shlex.split(os.environ.get("XREG_TEST_PGCTL", ""))
        self.log = os.environ.get("XREG_TEST_PGLOG", "")
        if not self.conninfo or not self.pgctl:
            raise Unavailable("XREG_TEST_CONNINFO/XREG_TEST_PGCTL not set: run under tests/with-postgres.sh")

    def dsn(self, dbname: str) -> str:
        from psycopg2.extensions import make_dsn

        return make_dsn(self.conninfo, dbname=dbname)

    def connect(self, dbname: str = "postgres", timeout: int = 5):
        import psycopg2

        conn = psycopg2.connect(self.dsn(dbname), connect_timeout=timeout)
        conn.autocommit = True
        return conn

    def is_up(self) -> bool:
        import psycopg2

        try:
            self.connect("postgres", timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def _pg_ctl(self, *args: str) -> None:
        with tempfile.TemporaryFile() as out:
            r = subprocess.run(self.pgctl + list(args), stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, timeout=120)
            if r.returncode != 0:
                out.seek(0)
                text = out.read().decode(errors="replace")
                raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({r.returncode}): {text}")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def start(self) -> None:
        self._pg_ctl("start")
        wait_until(self.is_up, 30, "PostgreSQL to accept connections")

    def ensure_up(self) -> None:
        if not self.is_up():
            self.start()

    def create_database(self) -> "Database":
        name = f"xreg_{os.getpid()}_{next(self._counter)}"
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return Database(self, name)

    def drop_database(self, name: str) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()


class Database:
    """One database of the test cluster; query() reconnects after a server restart."""

    def __init__(self, pg: Postgres, name: str) -> None:
        self.pg = pg
        self.name = name
        self.conninfo = pg.dsn(name)
        self._conn = None

    def _cursor(self):
        import psycopg2

        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.conninfo, connect_timeout=5)
            self._conn.autocommit = True
        return self._conn.cursor()

    def query(self, sql: str, params: Sequence | dict | None = None) -> list[tuple]:
        import psycopg2

        for attempt in (1, 2):
            try:
                with self._cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall() if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def scalar(self, sql: str, params: Sequence | dict | None = None):
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def execute(self, sql: str, params: Sequence | dict | None = None) -> None:
        self.query(sql, params)

    def relation_exists(self, name: str) -> bool:
        return bool(self.scalar("SELECT to_regclass(%s) IS NOT NULL", (name,)))

    def count(self, relation: str, where: str = "TRUE", params: Sequence | None = None) -> int:
        """Row count of relation, 0 while it does not exist yet (before migrations)."""
        if not self.relation_exists(relation):
            return 0
        return int(self.scalar(f"SELECT count(*) FROM {relation} WHERE {where}", params))

    def instance_uids(self) -> set[str]:
        if not self.relation_exists("xreg.instances"):
            return set()
        return {r[0] for r in self.query("SELECT sop_instance_uid FROM xreg.instances")}

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


# ------------------------------------------------------------------------------------------------
# xregd


def yaml_scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Size):
        return str(v)
    s = str(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Size(str):
    """A size written plain in YAML (200KiB), as a user would."""


def to_yaml(cfg: dict, indent: int = 0) -> str:
    out = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.append(" " * indent + f"{k}:")
            out.append(to_yaml(v, indent + 2))
        else:
            out.append(" " * indent + f"{k}: {yaml_scalar(v)}")
    return "\n".join(out)


def deep_update(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def monotonic_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@dataclasses.dataclass
class Datagram:
    t_us: int            # CLOCK_MONOTONIC when the test received it
    start: int           # which start of the Xregd it belongs to
    pid: int             # sender, from SCM_CREDENTIALS
    lines: list[str]

    def has(self, line: str) -> bool:
        return line in self.lines

    def value(self, key: str) -> str | None:
        for l in self.lines:
            if l.startswith(key + "="):
                return l[len(key) + 1:]
        return None


class XregdError(AssertionError):
    pass


class Xregd:
    """One xregd process (and its restarts) with its config, state dir and log file.

        d = Xregd(base_dir, port=free_port(), conninfo=db.conninfo, spool={"max_bytes": Size("200KiB")})
        d.start()             # returns once READY=1 arrived on NOTIFY_SOCKET
        d.kill(); d.start()   # SIGKILL and restart on the same state
        rc = d.stop()         # SIGTERM, wait, returns the exit status
    """

    READY_TIMEOUT = 30.0

    def __init__(self, base: pathlib.Path, *, port: int, conninfo: str, exe: str | None = None,
                 **overrides: dict) -> None:
        self.exe = exe or os.environ.get("XREGD", "")
        self.base = pathlib.Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.base / "state"
        self.port = port
        self.config = {
            "state_dir": str(self.state_dir),
            "dicom": {"ae_title": AE_TITLE, "bind": "127.0.0.1", "port": port, "max_associations": 16,
                      "max_pdu_bytes": 65536, "acse_timeout_s": 30, "dimse_timeout_s": 60,
                      "max_object_bytes": Size("2GiB")},
            "spool": {"dir": "", "max_bytes": Size("10GiB")},
            "database": {"conninfo": conninfo, "embedded_user": "postgres", "retry_initial_ms": 200,
                         "retry_max_ms": 1000},
            "pipeline": {"workers": 2},
            "log": {"level": "info"},
            # Each daemon gets its own metrics port: the default (9112) would collide.
            "metrics": {"bind": "127.0.0.1", "port": free_port()},
        }
        deep_update(self.config, overrides)
        self.metrics_port = self.config["metrics"]["port"]
        self.config_path = self.base / "xregd.yaml"
        self.log_path = self.base / "xregd.log"
        self.notify_path = self.base / "notify.sock"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.exits: list[tuple[int, bool]] = []  # (returncode, expected)
        self.notifications: list[tuple[float, int, int, str]] = []  # (time, start number, sender pid, message)
        self.datagrams: list[Datagram] = []  # the same, one entry per datagram, kept whole
        self._main_pid = 0
        self._main_pids: set[int] = set()
        self._notify_sock: socket.socket | None = None
        self._notify_thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._expect_exit = False
        self._recorded = 0

    # -- config ------------------------------------------------------------------------------
    @property
    def spool_dir(self) -> pathlib.Path:
        d = self.config["spool"].get("dir") or ""
        return pathlib.Path(d) if d else self.state_dir / "spool"

    def write_config(self) -> pathlib.Path:
        self.config_path.write_text("# written by tests/integration/xregtest.py\n" + to_yaml(self.config) + "\n")
        return self.config_path

    # -- notify socket -----------------------------------------------------------------------
    def _open_notify(self) -> None:
        if self._notify_sock is not None:
            return
        self.notify_path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)  # learn each sender's pid
        s.bind(str(self.notify_path))
        self.notify_path.chmod(0o777)
        s.settimeout(0.2)
        self._notify_sock = s
        self._notify_thread = threading.Thread(target=self._notify_loop, name="notify", daemon=True)
        self._notify_thread.start()

    def _notify_loop(self) -> None:
        s = self._notify_sock
        cred_size = struct.calcsize("iII")
        while s is not None and s.fileno() >= 0:
            try:
                data, ancdata, _flags, _addr = s.recvmsg(65536, socket.CMSG_SPACE(cred_size))
            except socket.timeout:
                continue
            except OSError:
                return
            t_us = monotonic_us()
            pid = -1
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == SCM_CREDENTIALS and len(cdata) >= cred_size:
                    pid = struct.unpack("iII", cdata[:cred_size])[0]
            lines = [m for m in data.decode(errors="replace").split("\n") if m]
            with self._cond:
                self.datagrams.append(Datagram(t_us, self.starts, pid, lines))
                for msg in lines:
                    self.notifications.append((time.monotonic(), self.starts, pid, msg))
                self._cond.notify_all()

    def notified(self, message: str, start: int | None = None) -> bool:
        """Whether xregd itself (its main PID, as systemd's NotifyAccess=main) sent message since
        start number `start` (default: the current run). Messages from other processes, e.g. a
        PostgreSQL child that inherited NOTIFY_SOCKET, do not count."""
        start = self.starts if start is None else start
        with self._cond:
            return any(m == message and n == start and pid == self._main_pid for _t, n, pid, m in self.notifications)

    def foreign_notifications(self) -> list[tuple[int, str]]:
        """(pid, message) received from processes other than xregd's main process."""
        with self._cond:
            return [(pid, m) for _t, _n, pid, m in self.notifications if pid not in self._main_pids]

    def close_notify(self) -> None:
        s, self._notify_sock = self._notify_sock, None
        if s is not None:
            s.close()
        if self._notify_thread is not None:
            self._notify_thread.join(2)
        self.notify_path.unlink(missing_ok=True)

    # -- process -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait: bool = True, timeout: float | None = None) -> "Xregd":
        if not self.exe:
            raise Unavailable("XREGD is not set (meson passes the built xregd in the environment)")
        if self.running:
            raise XregdError("xregd is already running")
        self.write_config()
        self._open_notify()
        self.starts += 1
        self._expect_exit = False
        with open(self.log_path, "ab") as log:
            log.write(f"=== xregtest: start #{self.starts} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen([self.exe, "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=self.base,
                                         env=_clean_env({"NOTIFY_SOCKET": str(self.notify_path)}))
            with self._cond:
                self._main_pid = self.proc.pid
                self._main_pids.add(self.proc.pid)
        if wait:
            self.wait_ready(timeout or self.READY_TIMEOUT)
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for READY=1 from xregd's main process. With XREG_TEST_READY=echo in the
        environment (a stop-gap for a build without sd_notify), wait for a C-ECHO answer instead;
        test_association still insists on READY=1."""
        timeout = timeout or self.READY_TIMEOUT
        if os.environ.get("XREG_TEST_READY") == "echo":
            return self._wait_echo(timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.notified("READY=1"):
                if self.proc is None or self.proc.poll() is not None:
                    rc = None if self.proc is None else self.proc.returncode
                    self._record_exit(False)
                    raise XregdError(f"xregd exited with status {rc} before READY=1\n{self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
        if not self.notified("READY=1"):
            self.kill()
            raise XregdError(f"xregd sent no READY=1 within {timeout:g} s (NOTIFY_SOCKET={self.notify_path}); "
                             f"notifications: {[(pid, m) for _t, _n, pid, m in self.notifications]} "
                             f"(xregd is pid {self._main_pid})\n{self.log_tail()}")

    def _wait_echo(self, timeout: float) -> None:
        import rawscu

        def answers() -> bool:
            self.check_alive()
            try:
                return rawscu.echo("127.0.0.1", self.port, self.config["dicom"]["ae_title"], timeout=2).ok
            except (OSError, rawscu.DicomError):
                return False

        wait_until(answers, timeout, f"xregd to answer C-ECHO on port {self.port}")

    def _record_exit(self, expected: bool) -> None:
        """Remember how the current process ended (once per start)."""
        if self.proc is not None and self.proc.poll() is not None and self._recorded != self.starts:
            self._recorded = self.starts
            self.exits.append((self.proc.returncode, expected))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (negative: killed by that signal)."""
        if self.proc is None:
            raise XregdError("xregd was never started")
        if self.proc.poll() is not None:
            self._record_exit(False)
            raise XregdError(f"xregd had already exited with status {self.proc.returncode}\n{self.log_tail()}")
        self._expect_exit = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self._record_exit(False)
            raise XregdError(f"xregd did not exit within {timeout:g} s of SIGTERM\n{self.log_tail()}")
        self._record_exit(True)
        return rc

    def kill(self) -> None:
        """SIGKILL (a crash, as far as xregd can tell) and reap."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._expect_exit = True
        self.proc.kill()
        self.proc.wait(10)
        self._record_exit(True)

    def restart(self, timeout: float | None = None) -> "Xregd":
        if self.running:
            rc = self.stop()
            if rc != 0:
                raise XregdError(f"xregd exited with status {rc} on SIGTERM\n{self.log_tail()}")
        return self.start(timeout=timeout)

    def check_alive(self) -> None:
        if not self.running:
            rc = None if self.proc is None else self.proc.returncode
            self._record_exit(False)
            raise XregdError(f"xregd is not running (exit status {rc})\n{self.log_tail()}")

    # -- logs and spool ----------------------------------------------------------------------
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        lines = self.log().splitlines()
        return f"--- last {min(n, len(lines))} lines of {self.log_path} ---\n" + "\n".join(lines[-n:])

    def spool_files(self, area: str, suffix: str = "") -> list[pathlib.Path]:
        d = self.spool_dir / area
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.name.endswith(suffix))

    def close(self) -> list[str]:
        """Tear down; returns problems found (unexpected exit, unclean SIGTERM exit)."""
        problems = []
        if self.running:
            try:
                rc = self.stop()
                if rc != 0:
                    problems.append(f"xregd exited with status {rc} on SIGTERM")
            except XregdError as e:
                problems.append(str(e).splitlines()[0])
        elif self.proc is not None:
            self._record_exit(self._expect_exit)
        for rc, expected in self.exits:
            if not expected:
                problems.append(f"xregd exited unexpectedly with status {rc}")
        self.close_notify()
        return problems


# ------------------------------------------------------------------------------------------------
# DCMTK clients


@dataclasses.dataclass
class StoreResult:
    path: str
    status: int | None = None          # DIMSE status, None when no response arrived
    status_text: str = ""
    error_comment: str = ""
    sop_instance_uid: str = ""          # from the response (debug output)
    source_ts: str = ""                 # DCMTK's names, from "Converting transfer syntax: A -> B"
    network_ts: str = ""
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0x0000

    @property
    def converted(self) -> bool:
        return bool(self.source_ts) and self.source_ts != self.network_ts


STATUS_TEXT = {  # DCMTK's DU_cstoreStatusString, for -v output
    "Success": 0x0000,
    "Refused: OutOfResources": 0xA700,
    "Error: DataSetDoesNotMatchSOPClass": 0xA900,
    "Error: CannotUnderstand": 0xC000,
}


def parse_storescu_output(text: str) -> dict[str, StoreResult]:
    """Per-file results from `storescu -v` or `-d` output (stderr), keyed by path as given."""
    results: dict[str, StoreResult] = {}
    cur: StoreResult | None = None
    in_response = False
    for line in text.splitlines():
        m = re.search(r"Sending file: (.*)$", line)
        if m:
            cur = results.setdefault(m.group(1), StoreResult(m.group(1)))
            in_response = False
            continue
        m = re.search(r"Store Failed, file: (.*):$", line)
        if m:
            cur = results.setdefault(m.group(1), StoreResult(m.group(1)))
            cur.errors.append(line)
            continue
        if cur is None:
            continue
        m = re.search(r"Converting transfer syntax: (.*) -> (.*)$", line)
        if m:
            cur.source_ts, cur.network_ts = m.group(1).strip(), m.group(2).strip()
            continue
        m = re.search(r"Received Store Response(?: \((.*)\))?\s*$", line)
        if m:
            in_response = True
            if m.group(1) is not None:
                cur.status_text = m.group(1)
                if m.group(1) in STATUS_TEXT:
                    cur.status = STATUS_TEXT[m.group(1)]
                else:
                    hx = re.search(r"0x([0-9A-Fa-f]{4})", m.group(1))
                    cur.status = int(hx.group(1), 16) if hx else None
            continue
        m = re.search(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})(?::\s*(.*))?", line)
        if m:
            cur.status = int(m.group(1), 16)
            cur.status_text = (m.group(2) or "").strip()
            continue
        m = re.search(r"Error Comment\s*:\s*(.*)$", line)
        if m:
            cur.error_comment = m.group(1).strip()
            continue
        m = re.search(r"Affected SOP Instance UID\s*:\s*([0-9.]+)", line)
        if m and in_response:
            cur.sop_instance_uid = m.group(1)
            continue
        if line.startswith(("E: ", "F: ")):
            cur.errors.append(line)
    return results


@dataclasses.dataclass
class StoreRun:
    results: dict[str, StoreResult]
    returncodes: list[int]
    logs: list[pathlib.Path]
    elapsed: float

    def status(self, path: os.PathLike | str) -> int | None:
        r = self.results.get(str(path))
        return None if r is None else r.status

    def succeeded(self) -> list[str]:
        return [p for p, r in self.results.items() if r.ok]

    def acked_uids(self, uid_of: dict[str, str] | None = None) -> set[str]:
        """SOP Instance UIDs acknowledged with Success: looked up by path in uid_of, or (debug
        output only) taken from the responses' Affected SOP Instance UID."""
        if uid_of is None:
            return {self.results[p].sop_instance_uid for p in self.succeeded()}
        return {uid_of[p] for p in self.succeeded()}

    def output(self) -> str:
        return "\n".join(f"--- {p} ---\n" + p.read_text(errors="replace") for p in self.logs)

    def describe_failures(self, limit: int = 10) -> str:
        bad = [r for r in self.results.values() if not r.ok]
        lines = [f"{r.path}: status {'none' if r.status is None else f'0x{r.status:04X}'} "
                 f"{r.status_text} {r.error_comment} {' | '.join(r.errors)}" for r in bad[:limit]]
        return f"{len(bad)} of {len(self.results)} files not acknowledged; rc={self.returncodes}\n" + "\n".join(lines)


def storescu_profile(pairs: Iterable[tuple[str, str]], path: pathlib.Path, name: str = "XREGTEST") -> pathlib.Path:
    """An association profile for storescu -xf: exactly one presentation context per
    (SOP class, transfer syntax), so storescu sends each file in its own transfer syntax or not
    at all (without a profile it silently converts to a syntax the SCP accepted)."""
    pairs = sorted(set(pairs))
    if len(pairs) > 128:
        raise ValueError(f"{len(pairs)} presentation contexts: at most 128 fit in an association")
    syntaxes = sorted({ts for _s, ts in pairs})
    ts_key = {ts: f"TS{i + 1}" for i, ts in enumerate(syntaxes)}
    lines = ["[[TransferSyntaxes]]"]
    for ts in syntaxes:
        lines += [f"[{ts_key[ts]}]", f"TransferSyntax1 = {ts}"]
    lines += ["", "[[PresentationContexts]]", "[PCS]"]
    for i, (sop, ts) in enumerate(pairs):
        lines.append(f"PresentationContext{i + 1} = {sop}\\{ts_key[ts]}")
    lines += ["", "[[Profiles]]", f"[{name}]", "PresentationContexts = PCS", ""]
    path.write_text("\n".join(lines))
    return path


def _describe(files: Sequence) -> list[tuple[str, str, str]]:
    """(path, sop class, transfer syntax) for GeneratedFile objects or paths."""
    out = []
    for f in files:
        if not isinstance(f, dicomgen.GeneratedFile):
            f = dicomgen.info(f)
        out.append((str(f.path), f.sop_class_uid, f.transfer_syntax_uid))
    return out


class StorescuBatch:
    """Several storescu processes (one association each) running in the background."""

    def __init__(self, port: int, files: Sequence, *, parallel: int = 1, aec: str = AE_TITLE,
                 aet: str = CALLING_AE, workdir: pathlib.Path, no_halt: bool = True, debug: bool = True,
                 nodelay: bool = True, profile: bool = True, extra: Sequence[str] = (),
                 host: str = "127.0.0.1") -> None:
        exe = tool("storescu")
        described = _describe(files)
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        tag = f"{os.getpid()}-{next(_batch_counter)}"
        args = [exe, "-d" if debug else "-v", "-aec", aec, "-aet", aet, "-ta", "30", "-td", "60"]
        if no_halt:
            args.append("-nh")
        if profile:
            prof = storescu_profile([(s, t) for _p, s, t in described], workdir / f"storescu-{tag}.cfg")
            args += ["-xf", str(prof), "XREGTEST"]
        args += list(extra)
        env = dict(os.environ)
        if nodelay:
            env["TCP_NODELAY"] = "1"
        else:
            env.pop("TCP_NODELAY", None)
        parallel = max(1, min(parallel, len(described)))
        groups = [described[i::parallel] for i in range(parallel)]
        self.procs: list[subprocess.Popen] = []
        self.logs: list[pathlib.Path] = []
        self.t0 = time.monotonic()
        for i, group in enumerate(groups):
            log = workdir / f"storescu-{tag}-{i}.log"
            self.logs.append(log)
            with open(log, "wb") as out:
                self.procs.append(subprocess.Popen(args + [host, str(port)] + [p for p, _s, _t in group],
                                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                   stderr=out, env=env))

    def partial(self) -> dict[str, StoreResult]:
        """Results parsed from the output so far (the processes may still be running)."""
        results: dict[str, StoreResult] = {}
        for log in self.logs:
            results.update(parse_storescu_output(log.read_text(errors="replace")))
        return results

    def n_acked(self) -> int:
        return sum(1 for r in self.partial().values() if r.ok)

    def wait(self, timeout: float = 300.0) -> StoreRun:
        deadline = self.t0 + timeout
        rcs = []
        for p in self.procs:
            try:
                rcs.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                for q in self.procs:
                    q.wait(10)
                raise AssertionError(f"storescu did not finish within {timeout:g} s; output in {self.workdir}")
        elapsed = time.monotonic() - self.t0
        return StoreRun(self.partial(), rcs, self.logs, elapsed)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(10)


_batch_counter = itertools.count(1)


def storescu(port: int, files: Sequence, *, timeout: float = 300.0, **kw) -> StoreRun:
    """Send files (paths or GeneratedFile) with storescu; parallel=N splits them over N
    associations (N processes). Returns per-file results."""
    return StorescuBatch(port, files, **kw).wait(timeout)


def echoscu(port: int, aec: str = AE_TITLE, aet: str = CALLING_AE, timeout: float = 30.0,
            host: str = "127.0.0.1") -> subprocess.CompletedProcess:
    return subprocess.run([tool("echoscu"), "-v", "-aec", aec, "-aet", aet, "-to", "10", "-ta", "10",
                           host, str(port)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------
# storescp as a stand-in SCP


def storescp_profile(path: pathlib.Path, sop_classes: Iterable[str] = dicomgen.ACCEPTED_SOP_CLASSES,
                     syntaxes: Iterable[str] = dicomgen.ACCEPTED_TRANSFER_SYNTAXES,
                     name: str = "XREGTEST") -> pathlib.Path:
    """An SCP profile accepting sop_classes in any of syntaxes (storescp -xf)."""
    syntaxes = sorted(syntaxes)
    lines = ["[[TransferSyntaxes]]", "[ALL]"]
    lines += [f"TransferSyntax{i + 1} = {ts}" for i, ts in enumerate(syntaxes)]
    lines += ["", "[[PresentationContexts]]", "[PCS]"]
    classes = sorted(set(sop_classes) | {"1.2.840.10008.1.1"})  # and Verification
    lines += [f"PresentationContext{i + 1} = {sop}\\ALL" for i, sop in enumerate(classes)]
    lines += ["", "[[Profiles]]", f"[{name}]", "PresentationContexts = PCS", ""]
    path.write_text("\n".join(lines))
    return path


class Storescp:
    """DCMTK's storescp: accepts what it can parse and writes it to outdir. It does not fsync."""

    def __init__(self, base: pathlib.Path, port: int | None = None, aet: str = AE_TITLE,
                 nodelay: bool = True, extra: Sequence[str] = ()) -> None:
        self.base = pathlib.Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.outdir = self.base / "received"
        self.outdir.mkdir(exist_ok=True)
        self.port = port or free_port()
        self.aet = aet
        self.log_path = self.base / "storescp.log"
        profile = storescp_profile(self.base / "storescp.cfg")
        env = dict(os.environ)
        if nodelay:
            env["TCP_NODELAY"] = "1"
        self.args = [tool("storescp"), "-v", "-aet", aet, "-xf", str(profile), "XREGTEST", "-od", str(self.outdir),
                     "+B", *extra, str(self.port)]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Storescp":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"storescp exited: {self.log_path.read_text(errors='replace')}")
            return echoscu(self.port, self.aet).returncode == 0

        try:
            wait_until(up, 15, "storescp to answer C-ECHO", interval=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ------------------------------------------------------------------------------------------------
# xregctl and the registry


def run_xregctl(*args: str, exe: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    exe = exe or os.environ.get("XREGCTL", "")
    if not exe:
        raise Unavailable("XREGCTL is not set (meson passes the built xregctl in the environment)")
    return subprocess.run([exe, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, env=_clean_env())


def migrate(d: Xregd, exe: str | None = None) -> None:
    """xregctl migrate -c <d's config>; asserts success."""
    d.write_config()
    r = run_xregctl("migrate", "-c", str(d.config_path), exe=exe, timeout=120)
    assert r.returncode == 0, f"xregctl migrate failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"


def wait_registered(db: Database, uids: Iterable[str], timeout: float = 60.0, d: Xregd | None = None) -> set[str]:
    """Wait until every uid is in xreg.instances; returns the registered set.

    With d: fails at once if xregd died, and after 2 s of an empty spool (nothing left to
    process: the spool file goes only after COMMIT) with instances still missing - they are lost,
    waiting longer would not help.
    """
    want = set(uids)
    drained_polls = 0

    def missing_message(have: set[str]) -> str:
        missing = want - have
        return (f"{len(missing)} of {len(want)} instances never reached xreg.instances (e.g. {sorted(missing)[:3]})"
                + (("\n" + d.log_tail(30)) if d else ""))

    def done():
        nonlocal drained_polls
        drained = False
        if d is not None:
            d.check_alive()
            drained = not pending_objects(d)  # look at the spool first, then at the registry
        have = db.instance_uids()
        if want <= have:
            return have
        drained_polls = drained_polls + 1 if drained else 0
        if drained_polls >= 20:
            raise AssertionError("spool drained but " + missing_message(have))
        return None

    try:
        return wait_until(done, timeout, f"{len(want)} instances in xreg.instances")
    except AssertionError as e:
        if str(e).startswith("spool drained") or isinstance(e, XregdError):
            raise
        raise AssertionError(missing_message(db.instance_uids())) from None


def pending_objects(d: Xregd) -> list[pathlib.Path]:
    """Spooled objects not yet registered: *.dcm/*.meta anywhere in the spool except rejected/
    (kept forever) and tmp/ (partial receptions, never acknowledged)."""
    root = d.spool_dir
    if not root.is_dir():
        return []
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if rel[0] in ("rejected", "tmp") or not p.is_file():
            continue
        if p.suffix in (".dcm", ".meta"):
            out.append(p)
    return sorted(out)


# ------------------------------------------------------------------------------------------------
# misc


def dimse_status(value: object) -> int:
    """A DIMSE status from a database column: integer, or text such as 'A700' / '0xA700'."""
    if isinstance(value, int):
        return value
    s = str(value).strip().lower()
    return int(s[2:] if s.startswith("0x") else s, 16)


def meson_project_version() -> str | None:
    try:
        text = (SOURCE_ROOT / "meson.build").read_text()
    except OSError:
        return None
    m = re.search(r"project\([^)]*?version\s*:\s*'([^']+)'", text, re.S)
    return m.group(1) if m else None


def stop_stray_clusters(root: pathlib.Path) -> list[int]:
    """SIGQUIT (immediate shutdown) every postmaster whose postmaster.pid lies below root, e.g. an
    embedded cluster orphaned when its xregd was killed. Returns the pids signalled."""
    pids = []
    if not root.exists():
        return pids
    for pidfile in root.rglob("postmaster.pid"):
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)
            pids.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    return pids


def processes_mentioning(needle: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose command line contains needle."""
    out = []
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            out.append((int(d.name), cmd.strip()))
    return out
