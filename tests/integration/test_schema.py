"""Migrations (xregctl migrate) and the audit trail's guarantees."""

from __future__ import annotations

import psycopg2
import pytest

from xregtest import CALLING_AE, SOURCE_ROOT, migrate, storescu, wait_registered


def test_migrate_records_every_migration_once(make_xregd, db, xregctl_exe):
    d = make_xregd(start=False)  # xregctl migrate ran once
    first = db.query("SELECT * FROM public.schema_migrations ORDER BY 1")
    assert first, "public.schema_migrations is empty after xregctl migrate"
    names = [r[0] for r in db.query("SELECT name FROM public.schema_migrations ORDER BY name")]
    shipped = sorted(p.name for p in (SOURCE_ROOT / "migrations").glob("*.sql"))
    if shipped:
        assert names == shipped, "schema_migrations does not list exactly the migrations/*.sql files"
    for rel in ("xreg.patient", "xreg.study", "xreg.series", "xreg.instance", "xreg.rejection", "xreg.audit_log",
                "xreg.instances", "xreg.studies"):
        assert db.relation_exists(rel), f"{rel} missing after migrate"
    migrate(d, xregctl_exe)
    assert db.query("SELECT * FROM public.schema_migrations ORDER BY 1") == first, "a second migrate changed it"


def test_audit_log_cannot_be_altered(xregd, db, gen, workdir):
    files = gen(2, n_patients=1)
    run = storescu(xregd.port, files, workdir=workdir / "scu")
    assert len(run.succeeded()) == 2, run.describe_failures()
    wait_registered(db, {f.sop_instance_uid for f in files}, 60, xregd)

    rows = db.query("SELECT db_role, actor, old_row, new_row FROM xreg.audit_log "
                    "WHERE table_name = 'instance' AND action = 'INSERT'")
    assert len(rows) == 2
    for db_role, actor, old_row, new_row in rows:
        assert db_role, "audit row without db_role"
        assert actor and CALLING_AE in actor, f"actor {actor!r} does not name the calling AE {CALLING_AE}"
        assert old_row is None and new_row is not None
        assert new_row.get("sop_instance_uid") in {f.sop_instance_uid for f in files}, new_row
    before = db.query("SELECT * FROM xreg.audit_log ORDER BY id")
    for sql in ("UPDATE xreg.audit_log SET actor = 'someone else'",
                "DELETE FROM xreg.audit_log",
                "TRUNCATE xreg.audit_log"):
        with pytest.raises(psycopg2.Error):
            db.execute(sql)
    assert db.query("SELECT * FROM xreg.audit_log ORDER BY id") == before
