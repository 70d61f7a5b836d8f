"""SIGHUP with a broken configuration file: invalid YAML, a value out of range, a file that cannot be
read (a directory in its place, a dangling symlink; chmod 000 too when not running as root, since
root reads it anyway). Each time xregd logs an error naming the problem, stays up on the previous
configuration (C-ECHO and C-STORE on the old port and AE title), and a later valid reload
(log.level: debug) is applied."""

from __future__ import annotations

import os
import re
import signal


from faultkit import LogWatch
from xregtest import echoscu, storescu, to_yaml, wait_registered


def still_serving(d, db, gen, workdir, tag: str) -> None:
    d.check_alive()
    r = echoscu(d.port)
    assert r.returncode == 0, f"after {tag}: C-ECHO to {d.config['dicom']['ae_title']} on port {d.port} failed:\n{r.stdout}"
    files = gen(2, n_patients=1)
    run = storescu(d.port, files, workdir=workdir / f"scu-{tag}")
    assert len(run.succeeded()) == 2, f"after {tag}: " + run.describe_failures()
    wait_registered(db, {f.sop_instance_uid for f in files}, 30, d)


def hup_and_expect_error(d, log: LogWatch, pattern: str, what: str) -> str:
    log.mark()
    os.kill(d.pid, signal.SIGHUP)
    line = log.wait(r"reload failed", 15, f"the reload error for {what}")
    assert re.search(pattern, line), f"{what}: the error does not name the problem: {line!r}"
    assert line.startswith("<3>"), f"{what}: a failed reload is logged at error level: {line!r}"
    assert not log.lines(r"configuration reloaded"), f"{what}: xregd says it reloaded a broken file"
    return line


def test_bad_config_on_reload(make_xregd, db, gen, workdir, summary):
    d = make_xregd()
    cfg = d.config_path
    good_text = cfg.read_text()
    log = LogWatch(d)
    errors = []

    # 1. Not YAML: an unclosed flow sequence. The error names file:line:column.
    cfg.write_text(good_text + "dicom_extra: [1, 2\n")
    errors.append(hup_and_expect_error(d, log, re.escape(str(cfg)) + r":\d+:\d+: invalid YAML", "invalid YAML"))
    still_serving(d, db, gen, workdir, "invalid-yaml")

    # 2. Valid YAML, a value out of range, on a reloadable key too: the whole file is refused.
    bad = dict(d.config, dicom=dict(d.config["dicom"], port=70000), log={"level": "debug"})
    cfg.write_text(to_yaml(bad) + "\n")
    errors.append(hup_and_expect_error(d, log, r":\d+:\d+: dicom\.port: 70000 is out of range", "port 70000"))
    still_serving(d, db, gen, workdir, "out-of-range")
    assert not log.lines(r"^<7>"), "log.level: debug from a refused file was applied"

    # 3. Unreadable: chmod 000 only stops a non-root reader.
    if os.geteuid() != 0:
        cfg.write_text(good_text)
        cfg.chmod(0)
        try:
            errors.append(hup_and_expect_error(d, log, r"[Pp]ermission denied", "chmod 000"))
        finally:
            cfg.chmod(0o644)
        still_serving(d, db, gen, workdir, "chmod-000")

    # 4. A directory where the file was.
    cfg.unlink()
    cfg.mkdir()
    errors.append(hup_and_expect_error(d, log, re.escape(str(cfg)) + r".*([Ii]s a directory|not a regular file)",
                                       "a directory"))
    still_serving(d, db, gen, workdir, "directory")
    cfg.rmdir()

    # 5. A dangling symlink (a configuration-management tool that has not yet written the target).
    cfg.symlink_to(d.base / "not-there.yaml")
    errors.append(hup_and_expect_error(d, log, re.escape(str(cfg)) + r".*[Nn]o such file", "a dangling symlink"))
    still_serving(d, db, gen, workdir, "dangling-symlink")
    cfg.unlink()

    # 6. A valid file again, with log.level: debug: applied.
    d.config["log"]["level"] = "debug"
    d.write_config()
    log.mark()
    os.kill(d.pid, signal.SIGHUP)
    log.wait(r"configuration reloaded", 15, "'configuration reloaded' after a valid reload")
    assert not log.lines(r"reload failed")
    assert echoscu(d.port).returncode == 0
    log.wait(r"^<7>", 15, "a debug-level line once log.level is debug")
    still_serving(d, db, gen, workdir, "valid")
    shown = [e.split("keeping the running configuration: ", 1)[-1].replace(str(d.base) + "/", "") for e in errors]
    summary(f"bad config on reload: {len(errors)} broken files refused, xregd kept serving: " + " | ".join(shown))
