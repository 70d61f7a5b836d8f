"""Association level: C-ECHO, called AE title, readiness/stop protocol, association limit."""

from __future__ import annotations

import re

import pytest

import rawscu
from xregtest import echoscu, wait_until


def test_echo_to_our_ae_title_succeeds(xregd):
    r = echoscu(xregd.port)
    assert r.returncode == 0, f"echoscu -aec XREG failed:\n{r.stdout}"
    assert rawscu.echo("127.0.0.1", xregd.port, "XREG").status == 0x0000


def test_wrong_called_ae_title_is_rejected(xregd):
    r = echoscu(xregd.port, aec="NOT-XREG")
    assert r.returncode != 0, f"echoscu to called AE NOT-XREG succeeded:\n{r.stdout}"
    assert re.search(r"Association Rejected", r.stdout, re.I), r.stdout
    with pytest.raises(rawscu.AssociationRejected) as e:
        rawscu.echo("127.0.0.1", xregd.port, "NOT-XREG")
    # PS3.8 9.3.4: rejected-permanent, by the service user, called AE title not recognized.
    assert (e.value.result, e.value.source, e.value.reason) == (1, 1, 7), str(e.value)
    # and the SCP still serves the right title afterwards
    assert echoscu(xregd.port).returncode == 0


def test_ready_notification_log_format_and_clean_stop(xregd):
    assert xregd.notified("READY=1")
    assert echoscu(xregd.port).returncode == 0, "READY=1 was sent but the SCP does not answer"
    rc = xregd.stop()
    assert rc == 0, f"xregd exited with {rc} on SIGTERM\n{xregd.log_tail()}"
    assert xregd.notified("STOPPING=1"), f"no STOPPING=1 after SIGTERM: {xregd.notifications}"
    lines = [l for l in xregd.log().splitlines() if l.strip() and not l.startswith("=== xregtest")]
    assert lines, "xregd logged nothing at level info"
    unprefixed = [l for l in lines if not re.match(r"<[0-7]>", l)]
    assert not unprefixed, "log lines without an sd-daemon <N> prefix:\n" + "\n".join(unprefixed[:10])
    assert echoscu(xregd.port).returncode != 0, "something still answers on the port after xregd exited"


def test_associations_past_the_limit_are_rejected_transient(make_xregd):
    d = make_xregd(dicom={"max_associations": 2})
    ctx = [(rawscu.VERIFICATION, [rawscu.IMPLICIT_LE])]
    held = [rawscu.Association.connect("127.0.0.1", d.port, "XREG", ctx, calling_ae="HOLD1"),
            rawscu.Association.connect("127.0.0.1", d.port, "XREG", ctx, calling_ae="HOLD2")]
    try:
        for a in held:
            assert a.c_echo().status == 0x0000
        with pytest.raises(rawscu.AssociationRejected) as e:
            rawscu.Association.connect("127.0.0.1", d.port, "XREG", ctx, calling_ae="THIRD").abort()
        assert e.value.result == 2, f"third association: {e.value} (expected rejected-transient)"
    finally:
        held[0].release()

    def third_accepted() -> bool:
        try:
            return rawscu.echo("127.0.0.1", d.port, "XREG", calling_ae="THIRD").status == 0x0000
        except rawscu.AssociationRejected:
            return False

    try:
        wait_until(third_accepted, 10, "a new association once one of the two ended")
    finally:
        held[1].release()
