"""Fixtures for the xregd integration tests.

Run (meson does this, see tests/meson.build):
    XREGD=build/daemon/xregd XREGCTL=build/daemon/xregctl XREG_SOURCE_ROOT=$PWD \
    XREG_SHARED_DATA=$PWD/../shared/data \
    tests/with-postgres.sh /usr/bin/python3 -m pytest -v -p no:cacheprovider tests/integration

Without XREGD (or outside with-postgres.sh) the tests skip, saying why; under CI=true they fail.
Each test gets its own database (xreg_<pid>_<n>) in the harness's cluster, its own short
temporary directory (kept when the test fails, removed otherwise) and its own xregd on a free port.
"""

from __future__ import annotations

import os
import shutil

import pytest

import dicomgen
from xregtest import CI, Database, Postgres, Unavailable, Xregd, free_port, migrate, short_tempdir, tool


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        for d in getattr(item, "_xregds", []):
            rep.sections.append((f"xregd log ({d.log_path})", d.log_tail(80)))
        wd = getattr(item, "_workdir", None)
        if wd is not None:
            rep.sections.append(("work directory (kept)", str(wd)))


def _fail_or_skip(message: str):
    if CI:
        pytest.fail(f"{message} (CI=true: a missing dependency is an error)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg() -> Postgres:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _fail_or_skip("psycopg2 missing (Debian python3-psycopg2; run /usr/bin/python3)")
    try:
        p = Postgres()
    except Unavailable as e:
        _fail_or_skip(str(e))
    yield p
    p.ensure_up()


@pytest.fixture
def db(pg: Postgres) -> Database:
    """A fresh, empty database for this test; dropped afterwards (PostgreSQL restarted first if
    the test left it stopped)."""
    pg.ensure_up()
    d = pg.create_database()
    yield d
    d.close()
    pg.ensure_up()
    pg.drop_database(d.name)


@pytest.fixture
def workdir(request):
    d = short_tempdir()
    request.node._workdir = d
    yield d
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def xregd_exe() -> str:
    exe = os.environ.get("XREGD", "")
    if not exe:
        _fail_or_skip("XREGD is not set: meson passes the built xregd (env XREGD=...); nothing to test")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"XREGD={exe} is not an executable file", pytrace=False)
    return exe


@pytest.fixture(scope="session")
def xregctl_exe() -> str:
    exe = os.environ.get("XREGCTL", "")
    if not exe:
        _fail_or_skip("XREGCTL is not set: meson passes the built xregctl (env XREGCTL=...)")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"XREGCTL={exe} is not an executable file", pytrace=False)
    return exe


@pytest.fixture(scope="session")
def dcmtk() -> None:
    """storescu and echoscu must be there (Debian dcmtk)."""
    tool("storescu")
    tool("echoscu")


@pytest.fixture
def make_xregd(request, xregd_exe, xregctl_exe, dcmtk, db, workdir):
    """make_xregd(name="xregd", migrate_first=True, start=True, **config overrides) -> Xregd.

    The instance uses this test's database and a free port; migrations are applied with
    `xregctl migrate` before the first start. All instances are stopped at teardown and the test
    errors if one of them died unexpectedly or did not exit 0 on SIGTERM.
    """
    instances: list[Xregd] = []
    request.node._xregds = instances

    def make(name: str = "xregd", *, migrate_first: bool = True, start: bool = True, **overrides) -> Xregd:
        d = Xregd(workdir / name, port=free_port(), conninfo=db.conninfo, exe=xregd_exe, **overrides)
        instances.append(d)
        if migrate_first:
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


@pytest.fixture
def xregd(make_xregd) -> Xregd:
    """A running xregd on this test's database, migrations applied."""
    return make_xregd()


@pytest.fixture
def gen(workdir):
    """gen(n, **kw) -> list[GeneratedFile] in a fresh sub-directory of the work dir."""
    counter = iter(range(1, 10**6))

    def make(n: int, **kw):
        return dicomgen.generate(workdir / f"gen{next(counter)}", n, **kw)

    return make
