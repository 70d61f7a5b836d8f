"""The operations endpoint: Prometheus metrics that count what happened, health and readiness
that follow the database, and `xregctl status` reading the running daemon."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.request

from xregtest import CALLING_AE, storescu, wait_registered, wait_until


def get(d, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{d.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of one series, e.g. sample(t, "xreg_instances_registered_total", 'result="new"')."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.group(1))
    return None


def xregctl(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.environ["XREGCTL"], "-c", str(d.config_path), *args],
                          capture_output=True, text=True, timeout=30)


def test_metrics_count_what_happened(xregd, db, gen, workdir):
    files = gen(12, n_patients=2)
    run = storescu(xregd.port, files, parallel=2, workdir=workdir / "scu")
    assert len(run.succeeded()) == 12, run.describe_failures()
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, xregd)

    status, ctype, text = get(xregd, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert sample(text, "xreg_instances_received_total", 'outcome="stored",reason=""') == 12
    wait_until(lambda: sample(get(xregd, "/metrics")[2], "xreg_instances_registered_total",
                              'result="new"') == 12, 30, "12 registrations counted")
    assert sample(text, "xreg_associations_total", f'calling_ae="{CALLING_AE}"') == 2
    assert sample(text, "xreg_stage_seconds_count", 'stage="spool"') == 12
    assert sample(text, "xreg_spool_objects") is not None
    assert "# TYPE xreg_inference_seconds histogram" in text

    # the same objects again: received and stored again, registered as already known
    storescu(xregd.port, files[:3], workdir=workdir / "scu2")
    wait_until(lambda: sample(get(xregd, "/metrics")[2], "xreg_instances_registered_total",
                              'result="known"') == 3, 30, "3 re-registrations counted")


def test_health_readiness_and_status_follow_the_database(xregd, db, pg, gen, workdir):
    assert get(xregd, "/healthz")[:1] == (200,)
    assert get(xregd, "/readyz")[0] == 200
    files = gen(3)
    storescu(xregd.port, files, workdir=workdir / "scu")
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, xregd)

    r = xregctl(xregd, "status")
    assert r.returncode == 0, r.stderr
    assert "ready" in r.stdout and "3 stored" in r.stdout and "3 registered" in r.stdout, r.stdout
    r = xregctl(xregd, "status", "--json")
    assert r.returncode == 0 and '"stored":3' in r.stdout, r.stdout

    pg.stop()
    try:
        status, _, body = get(xregd, "/readyz")
        assert status == 503 and "registry database unreachable" in body, body
        assert get(xregd, "/healthz")[0] == 200, "alive even while the database is down"
    finally:
        pg.ensure_up()
    wait_until(lambda: get(xregd, "/readyz")[0] == 200, 30, "ready again")

    assert get(xregd, "/nope")[0] == 404
    xregd.stop()
    r = xregctl(xregd, "status")
    assert r.returncode == 3 and "could not reach xregd" in r.stderr, (r.returncode, r.stderr)
