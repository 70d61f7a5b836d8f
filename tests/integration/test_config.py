"""xregctl check-config, --version, and xregd refusing a bad config."""

from __future__ import annotations

import re
import subprocess

import pytest

from xregtest import SOURCE_ROOT, _clean_env, meson_project_version, need, run_xregctl

# A valid config, one key per line so that the tests know each key's line and column.
BASE = """\
state_dir: /tmp/xreg-check-config/state
dicom:
  ae_title: XREG
  bind: "127.0.0.1"
  port: 11112
  max_associations: 16
  max_pdu_bytes: 65536
  acse_timeout_s: 30
  dimse_timeout_s: 60
  max_object_bytes: 2GiB
spool:
  dir: ""
  max_bytes: 10GiB
database:
  conninfo: "host=/nonexistent dbname=xreg"
  embedded_user: postgres
  retry_initial_ms: 500
  retry_max_ms: 30000
pipeline:
  workers: 2
log:
  level: info
"""


def _find(lines: list[str], key_path: str) -> int:
    """Index of the line holding key_path ("dicom.port" or a top-level "spool") in lines."""
    section, _, leaf = key_path.rpartition(".")
    in_section = not section
    for i, l in enumerate(lines):
        if section and re.match(rf"{re.escape(section)}:\s*$", l):
            in_section = True
            continue
        if in_section and re.match(rf"{'  ' if section else ''}{re.escape(leaf)}:", l):
            return i
    raise KeyError(key_path)


def edit(op: str, target: str | None, new_line: str) -> tuple[str, int, int, int]:
    """BASE changed by one line. op: "replace" the line of target, "insert" after it, "append" at
    the end, "section" (replace target's whole section by new_line). Returns (text, line, key
    column, value column) of new_line, 1-based."""
    lines = BASE.splitlines()
    if op == "append":
        idx = len(lines)
        lines.append(new_line)
    else:
        idx = _find(lines, target)
        if op == "insert":
            idx += 1
            lines.insert(idx, new_line)
        elif op == "replace":
            lines[idx] = new_line
        elif op == "section":
            end = idx + 1
            while end < len(lines) and lines[end].startswith("  "):
                end += 1
            lines[idx:end] = [new_line]
        else:
            raise ValueError(op)
    key_col = len(new_line) - len(new_line.lstrip()) + 1
    colon = new_line.index(":")
    rest = new_line[colon + 1:]
    value_col = colon + 2 + (len(rest) - len(rest.lstrip()))
    return "\n".join(lines) + "\n", idx + 1, key_col, value_col


@pytest.fixture
def check(tmp_path, xregctl_exe):
    def run(text: str, name: str = "xregd.yaml"):
        path = tmp_path / name
        path.write_text(text)
        r = run_xregctl("check-config", "-c", str(path), exe=xregctl_exe)
        return path, r

    return run


def test_versions(xregd_exe, xregctl_exe):
    version = meson_project_version()
    for exe in (xregd_exe, xregctl_exe):
        r = subprocess.run([exe, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=10, env=_clean_env())
        assert r.returncode == 0, f"{exe} --version: {r.returncode}\n{r.stdout}"
        if version:
            assert version in r.stdout, f"{exe} --version does not print {version}: {r.stdout!r}"


def test_shipped_config_is_valid(xregctl_exe):
    path = SOURCE_ROOT / "etc" / "xregd.yaml"
    need(path.is_file(), f"{path} not found (set XREG_SOURCE_ROOT)")
    r = run_xregctl("check-config", "-c", str(path), exe=xregctl_exe)
    assert r.returncode == 0, f"check-config {path}: {r.returncode}\n{r.stdout}{r.stderr}"


def test_base_config_of_these_tests_is_valid(check):
    _path, r = check(BASE)
    assert r.returncode == 0, r.stdout + r.stderr


BAD = [
    # id, key path the message must name, edit op, edit target, new line
    ("unknown-key", "dicom.colour", "insert", "dicom.port", "  colour: blue"),
    ("unknown-top-level-key", "colour", "append", None, "colour: blue"),
    ("wrong-type-number", "pipeline.workers", "replace", "pipeline.workers", "  workers: many"),
    ("wrong-type-mapping", "spool", "section", "spool", "spool: 12"),
    ("port-out-of-range", "dicom.port", "replace", "dicom.port", "  port: 70000"),
    ("port-one-past-max", "dicom.port", "replace", "dicom.port", "  port: 65536"),
    ("port-zero", "dicom.port", "replace", "dicom.port", "  port: 0"),
    ("pdu-one-below-min", "dicom.max_pdu_bytes", "replace", "dicom.max_pdu_bytes", "  max_pdu_bytes: 4095"),
    ("pdu-one-past-max", "dicom.max_pdu_bytes", "replace", "dicom.max_pdu_bytes", "  max_pdu_bytes: 131073"),
    ("bad-size", "spool.max_bytes", "replace", "spool.max_bytes", "  max_bytes: 10 parsecs"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_invalid_config_is_reported_with_line_column_and_key(case, check):
    _id, key, op, target, new_line = case
    text, line, key_col, value_col = edit(op, target, new_line)
    path, r = check(text)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"check-config accepted:\n{text}\n{out}"
    m = re.search(rf"{re.escape(str(path))}:(\d+):(\d+): {re.escape(key)}: \S", out)
    assert m, f"no '{path}:LINE:COL: {key}: message' in:\n{out}"
    assert int(m.group(1)) == line, f"line {m.group(1)}, expected {line}:\n{out}"
    assert int(m.group(2)) in (key_col, value_col), \
        f"column {m.group(2)}, expected {key_col} (key) or {value_col} (value):\n{out}"


@pytest.mark.parametrize("key,line_text", [
    ("dicom.port", "  port: 65535"),
    ("dicom.port", "  port: 1"),
    ("dicom.max_pdu_bytes", "  max_pdu_bytes: 4096"),
    ("dicom.max_pdu_bytes", "  max_pdu_bytes: 131072"),
    ("spool.max_bytes", "  max_bytes: 200KiB"),
    ("spool.max_bytes", "  max_bytes: 1048576"),
], ids=["port-65535", "port-1", "pdu-4096", "pdu-131072", "size-KiB", "size-plain"])
def test_values_at_the_limits_are_accepted(key, line_text, check):
    text, *_ = edit("replace", key, line_text)
    _path, r = check(text)
    assert r.returncode == 0, f"{line_text.strip()} refused:\n{r.stdout}{r.stderr}"


def test_xregd_refuses_to_start_with_an_invalid_config(tmp_path, xregd_exe):
    text, line, *_ = edit("replace", "dicom.port", "  port: 70000")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = subprocess.run([xregd_exe, "-c", str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30, env=_clean_env())
    assert r.returncode != 0
    assert re.search(rf"{re.escape(str(path))}:{line}:\d+: dicom\.port: \S", r.stderr), r.stderr
