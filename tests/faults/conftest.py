"""Fixtures for the fault-injection suite: the integration suite's, reused as they are.

Run (meson does this, one test per file; see the report in tests/faults/README.md):
    XREGD=build/daemon/xregd XREGCTL=build/daemon/xregctl XREG_SOURCE_ROOT=$PWD \
    tests/with-postgres.sh /usr/bin/python3 -m pytest -v -p no:cacheprovider tests/faults

How the fixtures get here: tests/integration/conftest.py is not a parent of this folder, so pytest
does not load it for tests/faults. It is loaded here under its own module name
(xreg_integration_conftest) and its fixtures and report hook are bound into this conftest's
namespace, where pytest finds them (fixtures are discovered by scanning a conftest's attributes).
That works whether tests/faults runs alone, one file at a time, or together with
tests/integration in one session (each folder's conftest then applies to its own tests only).
`pytest_plugins` is not used: pytest refuses it in a conftest that is not at the top of the run.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

_INTEGRATION = pathlib.Path(__file__).resolve().parent.parent / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))


def _load_integration_conftest():
    name = "xreg_integration_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _INTEGRATION / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_ic = _load_integration_conftest()

# The integration fixtures (pg, db, workdir, make_xregd, xregd, gen, ...) and the hook that puts
# xregd's log into the report of a failed test.
pytest_runtest_makereport = _ic.pytest_runtest_makereport
pg = _ic.pg
db = _ic.db
workdir = _ic.workdir
xregd_exe = _ic.xregd_exe
xregctl_exe = _ic.xregctl_exe
dcmtk = _ic.dcmtk
make_xregd = _ic.make_xregd
xregd = _ic.xregd
gen = _ic.gen

# One-line results (kill cycles, load) that must be visible without -s: collected by the
# `summary` fixture and printed in a section of pytest's terminal summary.
_SUMMARY: list[str] = []


@pytest.fixture
def summary():
    """summary(line): print line now (seen with -s) and again in the run's terminal summary."""

    def add(line: str) -> None:
        print(line, flush=True)
        _SUMMARY.append(line)

    return add


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY:
        terminalreporter.section("xreg fault-injection results")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
