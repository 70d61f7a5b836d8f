/*
 * registry/ against a real, throw-away PostgreSQL: run through tests/with-postgres.sh, which sets
 * XREG_TEST_CONNINFO (superuser, database "xreg") and XREG_TEST_PGCTL (pg_ctl for that cluster).
 *
 * Each migration test works in its own fresh database; the upsert tests share one migrated
 * database ("reg") and use fresh UIDs each. The server restart test runs last.
 */
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "xr-error.h"
#include "xr-limits.h"

#include "registry.h"
#include "xr-migrations.h"

#define ACTOR "test:unit"

static const char *base_conninfo;
static PGconn *admin; /* database "xreg": CREATE DATABASE, pg_locks */
static PGconn *regdb; /* database "reg": inspecting what the registry wrote */
static registry *reg; /* database "reg" */

/* ----------------------------------------------------------------------------------------------
 * Helpers
 */

static const char *conninfo_for(const char *db)
{
    static char buf[1024];
    snprintf(buf, sizeof(buf), "%s dbname=%s", base_conninfo, db);
    return buf;
}

static PGconn *connect_db(const char *db)
{
    PGconn *c = PQconnectdb(conninfo_for(db));
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect to \"%s\": %s", db, PQerrorMessage(c));
    return c;
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

/* db is a fixed name from this file, not outside data. */
static void create_db(const char *db)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db);
    exec_ok(admin, sql);
}

static registry *open_reg_with(const char *db, const char *extra)
{
    char conninfo[1200];
    snprintf(conninfo, sizeof(conninfo), "%s %s", conninfo_for(db), extra);
    xr_error err = XR_ERROR_INIT;
    registry *r = NULL;
    xr_code rc = registry_open(conninfo, "test-registry-db", &r, &err);
    if (rc)
        fail_msg("registry_open(\"%s\"): %s: %s", db, xr_code_name(rc), err.msg);
    assert_non_null(r);
    return r;
}

static registry *open_reg(const char *db)
{
    return open_reg_with(db, "");
}

/* The one value of a one-row, one-column query, malloc'ed; NULL for SQL NULL. */
static char *query_value(PGconn *c, const char *sql, int n_params, ...)
{
    const char *params[8];
    assert_true(n_params <= 8);
    va_list ap;
    va_start(ap, n_params);
    for (int i = 0; i < n_params; i++)
        params[i] = va_arg(ap, const char *);
    va_end(ap);
    PGresult *res = PQexecParams(c, sql, n_params, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 1)
        fail_msg("%s: %d rows: %s", sql, PQntuples(res), PQresultErrorMessage(res));
    char *v = PQgetisnull(res, 0, 0) ? NULL : strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

#define query_int(c, sql, ...) query_int_(c, sql, __VA_ARGS__)
static long long query_int_(PGconn *c, const char *sql, int n_params, const char *p1,
                            const char *p2)
{
    char *v = query_value(c, sql, n_params, p1, p2);
    if (!v)
        fail_msg("%s: NULL", sql);
    long long x = strtoll(v, NULL, 10);
    free(v);
    return x;
}

/* Compare a query's value with want (NULL: expect SQL NULL). */
static void assert_query(PGconn *c, const char *want, const char *sql, const char *p1)
{
    char *v = query_value(c, sql, p1 ? 1 : 0, p1);
    if (!want && v)
        fail_msg("%s [%s]: got \"%s\", want NULL", sql, p1 ? p1 : "", v);
    if (want && !v)
        fail_msg("%s [%s]: got NULL, want \"%s\"", sql, p1 ? p1 : "", want);
    if (want && strcmp(want, v) != 0)
        fail_msg("%s [%s]: got \"%s\", want \"%s\"", sql, p1 ? p1 : "", v, want);
    free(v);
}

static long long audit_count(void)
{
    return query_int(regdb, "SELECT count(*) FROM xreg.audit_log", 0, NULL, NULL);
}

static long long advisory_locks(void)
{
    return query_int(admin, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", 0, NULL,
                     NULL);
}

/* A complete CR instance with fresh UIDs; inst points into the struct (call sample_bind after
 * copying one). */
typedef struct sample {
    /* Room past XR_UID_MAX so that tests can build UIDs that are too long. */
    char patient_id[32];
    char study[96];
    char series[96];
    char sop[96];
    char spool[96];
    char accession[32];
    registry_instance inst;
} sample;

static unsigned sample_counter;

static void sample_bind(sample *s)
{
    s->inst.patient_id = s->patient_id;
    s->inst.study_instance_uid = s->study;
    s->inst.series_instance_uid = s->series;
    s->inst.sop_instance_uid = s->sop;
    s->inst.spool_id = s->spool;
    s->inst.accession_number = s->accession;
}

static void sample_new(sample *s)
{
    unsigned k = ++sample_counter;
    *s = (sample){0};
    snprintf(s->patient_id, sizeof(s->patient_id), "PAT%u", k);
    snprintf(s->study, sizeof(s->study), "2.25.100%u", k);
    snprintf(s->series, sizeof(s->series), "2.25.200%u", k);
    snprintf(s->sop, sizeof(s->sop), "2.25.300%u", k);
    snprintf(s->spool, sizeof(s->spool), "spool-%u", k);
    snprintf(s->accession, sizeof(s->accession), "ACC%u", k);
    s->inst = (registry_instance){
        .sop_class_uid = "1.2.840.10008.5.1.4.1.1.1",
        .transfer_syntax_uid = "1.2.840.10008.1.2.1",
        .issuer_of_patient_id = "",
        .patient_name = "DOE^JANE",
        .patient_birth_date = "19700131",
        .patient_sex = "F",
        .study_date = "20240115",
        .study_time = "101530.25",
        .study_description = "XR CHEST",
        .series_description = "PA",
        .modality = "CR",
        .body_part_examined = "CHEST",
        .view_position = "PA",
        .laterality = "",
        .manufacturer = "ACME",
        .institution_name = "General Hospital",
        .photometric_interpretation = "MONOCHROME2",
        .series_number = 1,
        .instance_number = 1,
        .rows = 2048,
        .columns = 2500,
        .number_of_frames = 0,
        .bits_allocated = 16,
        .bits_stored = 12,
        .samples_per_pixel = 1,
        .n_bytes = 10240000,
        .received_at_us = INT64_C(1700000000123456),
        .calling_ae = "CR01",
        .called_ae = "XREG",
        .peer_host = "10.0.0.5",
    };
    sample_bind(s);
}

/* Another instance of the same series. */
static void sample_sibling(sample *dst, const sample *src, unsigned i)
{
    *dst = *src;
    snprintf(dst->sop, sizeof(dst->sop), "%.80s.%u", src->sop, i);
    snprintf(dst->spool, sizeof(dst->spool), "%.80s.%u", src->spool, i);
    dst->inst.instance_number = (int32_t)i + 1;
    sample_bind(dst);
}

static xr_code upsert(const sample *s, bool *inserted, xr_error *err)
{
    return registry_instance_upsert(reg, &s->inst, ACTOR, inserted, err);
}

static void upsert_ok(const sample *s, bool want_inserted)
{
    xr_error err = XR_ERROR_INIT;
    bool inserted = !want_inserted;
    xr_code rc = upsert(s, &inserted, &err);
    if (rc)
        fail_msg("upsert \"%s\": %s: %s (%s) [%s]", s->sop, xr_code_name(rc), err.msg, err.sqlstate,
                 err.detail);
    assert_int_equal(inserted, want_inserted);
}

/* ----------------------------------------------------------------------------------------------
 * Connection
 */

static void test_open_bad_conninfo(void **state)
{
    (void)state;
    const char *bad[] = {
        "host=/tmp nonsense_option=1",
        "dbname='unterminated",
        "this is not a connection string",
        "postgresql://[::1/db",
    };
    /* Bad values in a well-formed string (port=abc, sslmode=bogus) are only checked by libpq
     * while connecting, without an error code: they come back as XR_E_TRANSIENT. */
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        xr_error err = XR_ERROR_INIT;
        registry *r = (registry *)0x1;
        xr_code rc = registry_open(bad[i], "t", &r, &err);
        if (rc != XR_E_CONFIG)
            fail_msg("\"%s\": got %s (%s), want config", bad[i], xr_code_name(rc), err.msg);
        assert_ptr_equal(r, (registry *)0x1); /* untouched on failure */
        assert_string_equal(err.msg, "invalid database connection string");
        assert_true(err.detail[0] != '\0');
    }
}

static void test_open_unreachable(void **state)
{
    (void)state;
    xr_error err = XR_ERROR_INIT;
    registry *r = NULL;
    xr_code rc =
        registry_open("host=/nonexistent-xreg-dir port=1 connect_timeout=2", "t", &r, &err);
    assert_int_equal(rc, XR_E_TRANSIENT);
    assert_null(r);
    assert_non_null(strstr(err.msg, "could not connect to the database: "));
    assert_null(strchr(err.msg, '\n'));
    assert_null(registry_close(NULL));
}

static void test_open_sets_application_name(void **state)
{
    (void)state;
    assert_query(regdb, "1",
                 "SELECT count(*)::text FROM pg_stat_activity"
                 " WHERE application_name = 'test-registry-db' AND datname = 'reg'",
                 NULL);
}

/* ----------------------------------------------------------------------------------------------
 * Migrations
 */

static void test_migrate_fresh(void **state)
{
    (void)state;
    assert_true(xr_n_migrations >= 1);
    assert_string_equal(xr_migrations[0].name, "0001_init.sql");
    assert_non_null(strstr(xr_migrations[0].sql, "CREATE SCHEMA xreg;"));

    create_db("m_fresh");
    registry *r = open_reg("m_fresh");
    PGconn *c = connect_db("m_fresh");
    xr_error err = XR_ERROR_INIT;
    unsigned applied = 999;
    xr_code rc = registry_migrate(r, xr_migrations, xr_n_migrations, &applied, &err);
    if (rc)
        fail_msg("migrate: %s: %s [%s]", xr_code_name(rc), err.msg, err.detail);
    assert_int_equal(applied, xr_n_migrations);
    assert_int_equal(query_int(c, "SELECT count(*) FROM public.schema_migrations", 0, NULL, NULL),
                     (long long)xr_n_migrations);
    assert_query(c, "64",
                 "SELECT length(sha256)::text FROM public.schema_migrations"
                 " WHERE name = '0001_init.sql'",
                 NULL);
    assert_query(c, "0", "SELECT count(*)::text FROM xreg.instances", NULL);
    assert_query(c, "0", "SELECT count(*)::text FROM xreg.studies", NULL);

    applied = 999;
    rc = registry_migrate(r, xr_migrations, xr_n_migrations, &applied, &err);
    assert_int_equal(rc, XR_OK);
    assert_int_equal(applied, 0);
    assert_int_equal(advisory_locks(), 0);

    /* A list that is not in strictly increasing name order is refused before any work. */
    const registry_migration unordered[] = {
        {"0002_b.sql", "SELECT 1"},
        {"0001_a.sql", "SELECT 1"},
    };
    rc = registry_migrate(r, unordered, 2, &applied, &err);
    assert_int_equal(rc, XR_E_INTERNAL);
    assert_string_equal(err.msg, "migration names are not strictly increasing");
    const registry_migration duplicate[] = {
        {"0001_a.sql", "SELECT 1"},
        {"0001_a.sql", "SELECT 1"},
    };
    assert_int_equal(registry_migrate(r, duplicate, 2, NULL, &err), XR_E_INTERNAL);

    PQfinish(c);
    r = registry_close(r);
    assert_null(r);
}

static void test_migrate_changed(void **state)
{
    (void)state;
    create_db("m_changed");
    registry *r = open_reg("m_changed");
    const registry_migration v1[] = {
        {"0001_a.sql", "CREATE TABLE a (x int);"},
        {"0002_b.sql", "CREATE TABLE b (x int);"},
    };
    xr_error err = XR_ERROR_INIT;
    unsigned applied = 0;
    assert_int_equal(registry_migrate(r, v1, 2, &applied, &err), XR_OK);
    assert_int_equal(applied, 2);

    /* One byte more in a released migration. */
    const registry_migration edited[] = {
        {"0001_a.sql", "CREATE TABLE a (x int);"},
        {"0002_b.sql", "CREATE TABLE b (x int); "},
    };
    applied = 77;
    xr_code rc = registry_migrate(r, edited, 2, &applied, &err);
    assert_int_equal(rc, XR_E_CONFIG);
    assert_string_equal(err.msg, "migration \"0002_b.sql\" was changed after it was applied");
    assert_non_null(strstr(err.detail, "sha256"));
    assert_int_equal(applied, 77); /* out-param untouched on failure */
    assert_int_equal(advisory_locks(), 0);

    /* The database knows a migration this binary does not. */
    rc = registry_migrate(r, v1, 1, &applied, &err);
    assert_int_equal(rc, XR_E_CONFIG);
    assert_non_null(strstr(err.msg, "migration \"0002_b.sql\" is recorded in the database but "
                                    "unknown"));
    assert_int_equal(advisory_locks(), 0);

    /* Unchanged: fine again, and a new one is applied. */
    const registry_migration v2[] = {
        v1[0],
        v1[1],
        {"0003_c.sql", "CREATE TABLE c (x int);"},
    };
    assert_int_equal(registry_migrate(r, v2, 3, &applied, &err), XR_OK);
    assert_int_equal(applied, 1);
    registry_close(r);
}

static void test_migrate_failing(void **state)
{
    (void)state;
    create_db("m_fail");
    registry *r = open_reg("m_fail");
    PGconn *c = connect_db("m_fail");
    const registry_migration list[] = {
        {"0001_ok.sql", "CREATE TABLE ok (x int);"},
        {"0002_bad.sql", "CREATE TABLE half (x int);\nSELEC 1;"},
        {"0003_never.sql", "CREATE TABLE never (x int);"},
    };
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_migrate(r, list, 3, NULL, &err);
    assert_int_equal(rc, XR_E_INTERNAL);
    assert_string_equal(err.sqlstate, "42601");
    assert_non_null(strstr(err.msg, "could not apply migration \"0002_bad.sql\": syntax error"));
    /* 0001 stays applied; 0002 was rolled back whole (its first statement too); 0003 not run. */
    assert_query(c, "0001_ok.sql", "SELECT string_agg(name, ',') FROM public.schema_migrations",
                 NULL);
    assert_query(c, "1", "SELECT count(*)::text FROM pg_tables WHERE tablename = 'ok'", NULL);
    assert_query(c, "0",
                 "SELECT count(*)::text FROM pg_tables"
                 " WHERE tablename IN ('half', 'never')",
                 NULL);
    assert_int_equal(advisory_locks(), 0);

    /* A migration that commits by itself is refused (its row would not be atomic with it). */
    const registry_migration commits[] = {
        list[0],
        {"0002_commits.sql", "CREATE TABLE early (x int); COMMIT;"},
    };
    rc = registry_migrate(r, commits, 2, NULL, &err);
    assert_int_equal(rc, XR_E_INTERNAL);
    assert_non_null(strstr(err.msg, "\"0002_commits.sql\": the migration ended the transaction"));
    assert_int_equal(advisory_locks(), 0);

    /* The handle is still usable. */
    const registry_migration fixed[] = {list[0], {"0002_good.sql", "CREATE TABLE good (x int);"}};
    assert_int_equal(registry_migrate(r, fixed, 2, NULL, &err), XR_OK);
    PQfinish(c);
    registry_close(r);
}

typedef struct migrate_thread {
    pthread_barrier_t *barrier;
    const registry_migration *list;
    size_t n;
    registry *r;
    xr_code rc;
    unsigned applied;
    xr_error err;
} migrate_thread;

static void *migrate_main(void *arg)
{
    migrate_thread *t = arg;
    pthread_barrier_wait(t->barrier);
    t->rc = registry_migrate(t->r, t->list, t->n, &t->applied, &t->err);
    return NULL;
}

static void test_migrate_concurrent(void **state)
{
    (void)state;
    create_db("m_conc");
    /* A slow first migration keeps the window wide: without the lock both would run it and one
     * would fail on CREATE TABLE or on the schema_migrations key. */
    size_t n = xr_n_migrations + 1;
    registry_migration *list = calloc(n, sizeof(*list));
    assert_non_null(list);
    list[0] = (registry_migration){"0000_slow.sql",
                                   "SELECT pg_sleep(0.5); CREATE TABLE public.slow (x int);"};
    memcpy(list + 1, xr_migrations, xr_n_migrations * sizeof(*list));

    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    migrate_thread t[2];
    pthread_t tid[2];
    for (int i = 0; i < 2; i++) {
        /* A lock never released fails the test in seconds instead of hanging it (55P03). */
        t[i] = (migrate_thread){.barrier = &barrier,
                                .list = list,
                                .n = n,
                                .r = open_reg_with("m_conc", "options='-c lock_timeout=20s'"),
                                .err = XR_ERROR_INIT};
        assert_int_equal(pthread_create(&tid[i], NULL, migrate_main, &t[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < 2; i++) {
        if (t[i].rc)
            fail_msg("thread %d: %s: %s", i, xr_code_name(t[i].rc), t[i].err.msg);
        registry_close(t[i].r);
    }
    assert_int_equal(t[0].applied + t[1].applied, n);
    assert_true(t[0].applied == 0 || t[1].applied == 0);
    PGconn *c = connect_db("m_conc");
    assert_int_equal(query_int(c, "SELECT count(*) FROM public.schema_migrations", 0, NULL, NULL),
                     (long long)n);
    PQfinish(c);
    assert_int_equal(advisory_locks(), 0);
    free(list);
}

/* ----------------------------------------------------------------------------------------------
 * Upserts
 */

static void test_upsert_new(void **state)
{
    (void)state;
    sample s;
    sample_new(&s);
    s.inst.study_date = "20230230"; /* no such day: stored as NULL, not an error */
    s.inst.series_number = -1;
    long long before = audit_count();
    upsert_ok(&s, true);

    /* One audit row per table, one transaction, our actor. */
    assert_int_equal(audit_count() - before, 4);
    char before_s[32];
    snprintf(before_s, sizeof(before_s), "%lld", before);
    char want[512];
    snprintf(want, sizeof(want),
             "patient:INSERT:%s,study:INSERT:%s,series:INSERT:%s,"
             "instance:INSERT:%s",
             s.patient_id, s.study, s.series, s.sop);
    char *got = query_value(regdb,
                            "SELECT string_agg(table_name || ':' || action || ':' || row_key, ','"
                            "  ORDER BY id) FROM xreg.audit_log WHERE id > $1::bigint",
                            1, before_s);
    assert_string_equal(got, want);
    free(got);
    assert_int_equal(query_int(regdb,
                               "SELECT count(DISTINCT txid) FROM xreg.audit_log"
                               " WHERE id > $1::bigint AND actor = $2",
                               2, before_s, ACTOR),
                     1);
    assert_int_equal(query_int(regdb,
                               "SELECT count(*) FROM xreg.audit_log"
                               " WHERE id > $1::bigint AND actor = $2 AND old_row IS NULL"
                               " AND new_row IS NOT NULL AND db_role = current_user",
                               2, before_s, ACTOR),
                     4);

    /* What the views show. */
    const char *v = "SELECT concat_ws('|', study_instance_uid, series_instance_uid, patient_id,"
                    " issuer_of_patient_id, modality, sop_class_uid, transfer_syntax_uid, rows,"
                    " columns, coalesce(number_of_frames::text, 'null'), body_part_examined,"
                    " calling_ae, called_ae, peer_host, spool_id, n_bytes, patient_birth_date,"
                    " coalesce(study_date::text, 'null'), coalesce(series_number::text, 'null'),"
                    " instance_number, bits_allocated, bits_stored, samples_per_pixel,"
                    " photometric_interpretation, coalesce(updated_at::text, 'null'),"
                    " (extract(epoch FROM received_at) * 1000000)::bigint)"
                    " FROM xreg.instances WHERE sop_instance_uid = $1";
    snprintf(want, sizeof(want),
             "%s|%s|%s||CR|1.2.840.10008.5.1.4.1.1.1|1.2.840.10008.1.2.1|2048|2500|null|CHEST|"
             "CR01|XREG|10.0.0.5|%s|10240000|1970-01-31|null|null|1|16|12|1|MONOCHROME2|null|"
             "1700000000123456",
             s.study, s.series, s.patient_id, s.spool);
    assert_query(regdb, want, v, s.sop);
    /* Optional "" is NULL, not an empty string. */
    assert_query(regdb, NULL, "SELECT laterality FROM xreg.instances WHERE sop_instance_uid = $1",
                 s.sop);
    assert_query(regdb, "1|1|CR|CHEST",
                 "SELECT concat_ws('|', n_series, n_instances, modalities, body_parts)"
                 " FROM xreg.studies WHERE study_instance_uid = $1",
                 s.study);
}

static void test_upsert_same_again(void **state)
{
    (void)state;
    sample s;
    sample_new(&s);
    upsert_ok(&s, true);
    long long before = audit_count();

    /* The same object again, received later from elsewhere: nothing changes, no audit row. */
    s.inst.received_at_us += 60 * INT64_C(1000000);
    s.inst.calling_ae = "OTHER";
    s.inst.peer_host = "10.9.9.9";
    snprintf(s.spool, sizeof(s.spool), "spool-resent");
    upsert_ok(&s, false);
    upsert_ok(&s, false);
    assert_int_equal(audit_count(), before);
    char want[256];
    snprintf(want, sizeof(want), "CR01|10.0.0.5|spool-%u|1700000000123456|null", sample_counter);
    assert_query(regdb, want,
                 "SELECT concat_ws('|', calling_ae, peer_host, spool_id,"
                 " (extract(epoch FROM received_at) * 1000000)::bigint,"
                 " coalesce(updated_at::text, 'null'))"
                 " FROM xreg.instance WHERE sop_instance_uid = $1",
                 s.sop);
    /* ret_inserted is optional. */
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(registry_instance_upsert(reg, &s.inst, ACTOR, NULL, &err), XR_OK);
    assert_int_equal(registry_instance_upsert(reg, &s.inst, ACTOR, NULL, NULL), XR_OK);
    assert_int_equal(audit_count(), before);
}

static void test_upsert_changed(void **state)
{
    (void)state;
    sample s;
    sample_new(&s);
    upsert_ok(&s, true);
    long long before = audit_count();
    char before_s[32];
    snprintf(before_s, sizeof(before_s), "%lld", before);

    s.inst.body_part_examined = "HAND";
    upsert_ok(&s, false);
    /* The instance and the series carry the body part; patient and study did not change. */
    assert_query(regdb, "series:UPDATE,instance:UPDATE",
                 "SELECT string_agg(table_name || ':' || action, ',' ORDER BY id)"
                 " FROM xreg.audit_log WHERE id > $1::bigint",
                 before_s);
    char *got = query_value(regdb,
                            "SELECT concat_ws('>', old_row->>'body_part_examined',"
                            " new_row->>'body_part_examined', actor)"
                            " FROM xreg.audit_log WHERE id > $1::bigint AND row_key = $2",
                            2, before_s, s.sop);
    assert_string_equal(got, "CHEST>HAND>" ACTOR);
    free(got);
    assert_query(regdb, "HAND",
                 "SELECT body_part_examined FROM xreg.instance WHERE sop_instance_uid = $1", s.sop);
    assert_query(regdb, "true",
                 "SELECT (updated_at IS NOT NULL)::text FROM xreg.instance"
                 " WHERE sop_instance_uid = $1",
                 s.sop);

    /* A header without the body part: the instance mirrors it, the series keeps what it had
     * and is not even touched (no audit row). */
    snprintf(before_s, sizeof(before_s), "%lld", audit_count());
    s.inst.body_part_examined = "";
    upsert_ok(&s, false);
    assert_query(regdb, "instance:UPDATE",
                 "SELECT string_agg(table_name || ':' || action, ',' ORDER BY id)"
                 " FROM xreg.audit_log WHERE id > $1::bigint",
                 before_s);
    assert_query(regdb, NULL,
                 "SELECT body_part_examined FROM xreg.instance WHERE sop_instance_uid = $1", s.sop);
    assert_query(regdb, "HAND",
                 "SELECT body_part_examined FROM xreg.series WHERE series_instance_uid = $1",
                 s.series);
    /* Still kept when another series field changes in the same header. */
    s.inst.series_description = "PA ERECT";
    upsert_ok(&s, false);
    assert_query(regdb, "HAND|PA ERECT",
                 "SELECT concat_ws('|', body_part_examined, series_description) FROM xreg.series"
                 " WHERE series_instance_uid = $1",
                 s.series);

    /* A study-level change is audited on the study only. */
    snprintf(before_s, sizeof(before_s), "%lld", audit_count());
    s.inst.body_part_examined = "HAND";
    s.inst.study_description = "XR HAND";
    upsert_ok(&s, false);
    assert_query(regdb, "study:UPDATE,instance:UPDATE",
                 "SELECT string_agg(table_name || ':' || action, ',' ORDER BY id)"
                 " FROM xreg.audit_log WHERE id > $1::bigint",
                 before_s);
}

static void test_upsert_same_series(void **state)
{
    (void)state;
    sample a, b;
    sample_new(&a);
    sample_sibling(&b, &a, 2);
    upsert_ok(&a, true);
    long long before = audit_count();
    upsert_ok(&b, true);
    assert_int_equal(audit_count() - before, 1); /* only the new instance */
    assert_query(regdb, "1|2|CR",
                 "SELECT concat_ws('|', n_series, n_instances, modalities)"
                 " FROM xreg.studies WHERE study_instance_uid = $1",
                 a.study);
    assert_query(regdb, "1|2",
                 "SELECT concat_ws('|', count(DISTINCT s.id), count(i.id)) FROM xreg.series s"
                 " JOIN xreg.instance i ON i.series_ref = s.id WHERE s.series_instance_uid = $1",
                 a.series);
}

typedef struct upsert_thread {
    pthread_barrier_t *barrier;
    sample s;
    registry *r;
    xr_code rc;
    bool inserted;
    xr_error err;
} upsert_thread;

static void *upsert_main(void *arg)
{
    upsert_thread *t = arg;
    pthread_barrier_wait(t->barrier);
    t->rc = registry_instance_upsert(t->r, &t->s.inst, ACTOR, &t->inserted, &t->err);
    return NULL;
}

static void test_upsert_concurrent(void **state)
{
    (void)state;
    enum { N_THREADS = 8, N_ROUNDS = 5 };
    static upsert_thread t[N_THREADS];
    for (int i = 0; i < N_THREADS; i++)
        t[i].r = open_reg("reg");
    for (int round = 0; round < N_ROUNDS; round++) {
        /* Instances of one new patient and study, in two new series, all at once. */
        sample base;
        sample_new(&base);
        pthread_barrier_t barrier;
        pthread_barrier_init(&barrier, NULL, N_THREADS);
        pthread_t tid[N_THREADS];
        for (int i = 0; i < N_THREADS; i++) {
            t[i].barrier = &barrier;
            t[i].err = (xr_error)XR_ERROR_INIT;
            sample_sibling(&t[i].s, &base, (unsigned)i);
            if (i % 2)
                snprintf(t[i].s.series, sizeof(t[i].s.series), "%.80s.9", base.series);
            assert_int_equal(pthread_create(&tid[i], NULL, upsert_main, &t[i]), 0);
        }
        for (int i = 0; i < N_THREADS; i++)
            pthread_join(tid[i], NULL);
        pthread_barrier_destroy(&barrier);
        for (int i = 0; i < N_THREADS; i++) {
            if (t[i].rc)
                fail_msg("round %d thread %d: %s: %s [%s]", round, i, xr_code_name(t[i].rc),
                         t[i].err.msg, t[i].err.sqlstate);
            assert_true(t[i].inserted);
        }
        assert_query(regdb, "1|2|8",
                     "SELECT concat_ws('|', count(*) OVER (), n_series, n_instances)"
                     " FROM xreg.studies WHERE patient_id = $1",
                     base.patient_id);
        /* Each row inserted once, none updated (all headers agree). */
        char series2[sizeof(base.series) + 8];
        snprintf(series2, sizeof(series2), "%.80s.9", base.series);
        char *got = query_value(regdb,
                                "SELECT string_agg(k || ':' || n, ',' ORDER BY k) FROM ("
                                " SELECT table_name || ':' || action AS k, count(*) AS n"
                                " FROM xreg.audit_log WHERE row_key IN ($1, $2, $3, $4)"
                                " GROUP BY 1) x",
                                4, base.patient_id, base.study, base.series, series2);
        assert_string_equal(got, "patient:INSERT:1,series:INSERT:2,study:INSERT:1");
        free(got);
    }
    for (int i = 0; i < N_THREADS; i++)
        registry_close(t[i].r);
}

static void test_upsert_missing_uid(void **state)
{
    (void)state;
    /* An unmigrated database: touching it would fail with 42P01, not XR_E_INPUT. */
    create_db("m_empty");
    registry *r = open_reg("m_empty");
    static const char *const names[] = {"SOP Instance UID", "SOP Class UID", "Series Instance UID",
                                        "Study Instance UID"};
    for (int which = 0; which < 4; which++) {
        for (int null_ptr = 0; null_ptr < 2; null_ptr++) {
            sample s;
            sample_new(&s);
            const char *missing = null_ptr ? NULL : "";
            switch (which) {
            case 0:
                s.inst.sop_instance_uid = missing;
                break;
            case 1:
                s.inst.sop_class_uid = missing;
                break;
            case 2:
                s.inst.series_instance_uid = missing;
                break;
            default:
                s.inst.study_instance_uid = missing;
                break;
            }
            xr_error err = XR_ERROR_INIT;
            bool inserted = true;
            xr_code rc = registry_instance_upsert(r, &s.inst, ACTOR, &inserted, &err);
            assert_int_equal(rc, XR_E_INPUT);
            char want[128];
            snprintf(want, sizeof(want), "cannot register instance: %s is missing", names[which]);
            assert_string_equal(err.msg, want);
            assert_string_equal(err.sqlstate, "");
            assert_true(inserted); /* untouched */
        }
    }

    /* UIDs: 64 characters is the limit (PS3.5 9.1), 65 is refused. */
    sample s;
    sample_new(&s);
    memset(s.sop, '1', XR_UID_MAX);
    s.sop[XR_UID_MAX] = '\0';
    memcpy(s.sop, "2.25.", 5);
    assert_int_equal(strlen(s.sop), 64);
    upsert_ok(&s, true);
    char too_long[XR_UID_MAX + 2];
    memset(too_long, '1', sizeof(too_long) - 1);
    too_long[sizeof(too_long) - 1] = '\0';
    s.inst.sop_instance_uid = too_long;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(registry_instance_upsert(r, &s.inst, ACTOR, NULL, &err), XR_E_INPUT);
    assert_string_equal(err.msg, "cannot register instance: SOP Instance UID is 65 characters "
                                 "long but must be at most 64");

    /* Out-of-range numbers and times. */
    sample_new(&s);
    s.inst.number_of_frames = UINT32_MAX;
    assert_int_equal(registry_instance_upsert(r, &s.inst, ACTOR, NULL, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "Number of Frames is 4294967295 but must be in"));
    sample_new(&s);
    s.inst.received_at_us = -1;
    assert_int_equal(registry_instance_upsert(r, &s.inst, ACTOR, NULL, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "reception time is -1 us"));

    /* The control: a valid instance does reach this database and fails there. */
    sample_new(&s);
    xr_code rc = registry_instance_upsert(r, &s.inst, ACTOR, NULL, &err);
    assert_int_equal(rc, XR_E_INTERNAL);
    assert_string_equal(err.sqlstate, "42P01");
    assert_non_null(strstr(err.msg, "could not register instance \""));
    registry_close(r);
}

static void test_upsert_bad_data_rolls_back(void **state)
{
    (void)state;
    sample s;
    sample_new(&s);
    s.inst.study_description = "bad \xff\xfe bytes"; /* not UTF-8 */
    long long before = audit_count();
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_instance_upsert(reg, &s.inst, ACTOR, NULL, &err);
    assert_int_equal(rc, XR_E_INPUT);
    assert_string_equal(err.sqlstate, "22021");
    assert_non_null(strstr(err.msg, "could not register instance \""));
    /* The patient row inserted before the failing study statement was rolled back with it. */
    assert_int_equal(audit_count(), before);
    assert_int_equal(query_int(regdb, "SELECT count(*) FROM xreg.patient WHERE patient_id = $1", 1,
                               s.patient_id, NULL),
                     0);
    /* The same handle works afterwards. */
    s.inst.study_description = "fine";
    upsert_ok(&s, true);
}

static void test_dates(void **state)
{
    (void)state;
    static const struct {
        const char *da;
        const char *want;
    } cases[] = {
        {"19700131", "1970-01-31"},   {"20240229", "2024-02-29"},
        {"20000229", "2000-02-29"},   {"19000228", "1900-02-28"},
        {"1970.01.31", "1970-01-31"}, {"00010101", "0001-01-01"},
        {"99991231", "9999-12-31"},   {"20230229", NULL},
        {"19000229", NULL},           {"19701301", NULL},
        {"19700100", NULL},           {"19700431", NULL},
        {"00000101", NULL},           {"1970013", NULL},
        {"197001311", NULL},          {"1970-01-31", NULL},
        {"abcdefgh", NULL},           {"", NULL},
        {"1970 131", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sample s;
        sample_new(&s);
        s.inst.patient_birth_date = cases[i].da;
        upsert_ok(&s, true);
        char *got = query_value(regdb,
                                "SELECT birth_date::text FROM xreg.patient"
                                " WHERE patient_id = $1",
                                1, s.patient_id);
        if ((cases[i].want == NULL) != (got == NULL) || (got && strcmp(got, cases[i].want) != 0))
            fail_msg("DA \"%s\": got %s, want %s", cases[i].da, got ? got : "NULL",
                     cases[i].want ? cases[i].want : "NULL");
        free(got);
    }
}

static void test_anonymous_patient(void **state)
{
    (void)state;
    /* An empty Patient ID is a key like any other: two studies share the anonymous patient. */
    sample a, b;
    sample_new(&a);
    sample_new(&b);
    a.inst.patient_id = "";
    b.inst.patient_id = "";
    a.inst.issuer_of_patient_id = "ANON-TEST";
    b.inst.issuer_of_patient_id = "ANON-TEST";
    upsert_ok(&a, true);
    upsert_ok(&b, true);
    assert_query(regdb, "1|2",
                 "SELECT concat_ws('|', count(DISTINCT p.id), count(st.id))"
                 " FROM xreg.patient p JOIN xreg.study st ON st.patient_ref = p.id"
                 " WHERE p.patient_id = '' AND p.issuer_of_patient_id = $1",
                 "ANON-TEST");
    assert_query(regdb, "1",
                 "SELECT count(*)::text FROM xreg.audit_log"
                 " WHERE table_name = 'patient' AND row_key = '^^^' || $1",
                 "ANON-TEST");
}

static void test_audit_append_only(void **state)
{
    (void)state;
    sample s;
    sample_new(&s);
    upsert_ok(&s, true);
    long long before = audit_count();
    const char *sql[] = {
        "UPDATE xreg.audit_log SET actor = 'forged'",
        "DELETE FROM xreg.audit_log",
        "TRUNCATE xreg.audit_log",
    };
    const char *op[] = {"UPDATE", "DELETE", "TRUNCATE"};
    for (size_t i = 0; i < 3; i++) {
        PGresult *res = PQexec(regdb, sql[i]);
        assert_int_equal(PQresultStatus(res), PGRES_FATAL_ERROR);
        assert_string_equal(PQresultErrorField(res, PG_DIAG_SQLSTATE), "42501");
        assert_string_equal(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY),
                            "xreg.audit_log is append-only");
        assert_non_null(strstr(PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL), op[i]));
        PQclear(res);
    }
    assert_int_equal(audit_count(), before);
    assert_int_equal(query_int(regdb, "SELECT count(*) FROM xreg.audit_log WHERE actor = 'forged'",
                               0, NULL, NULL),
                     0);
}

static void test_rejection_once(void **state)
{
    (void)state;
    registry_rejection rej = {
        .spool_id = "rej-0001",
        .received_at_us = INT64_C(1700000000000001),
        .calling_ae = "CR01",
        .called_ae = "XREG",
        .peer_host = "10.0.0.5",
        .sop_class_uid = "1.2.840.10008.5.1.4.1.1.1",
        .sop_instance_uid = "",
        .dimse_status = 0xA700,
        .reason = "disk budget exhausted",
        .path = "/var/lib/xreg/spool/rejected/rej-0001",
    };
    long long before = audit_count();
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(registry_rejection_record(reg, &rej, "dicom:CR01@10.0.0.5", &err), XR_OK);
    rej.reason = "a second attempt must not change the first record";
    assert_int_equal(registry_rejection_record(reg, &rej, "dicom:CR01@10.0.0.5", &err), XR_OK);
    assert_int_equal(audit_count() - before, 1);
    assert_query(regdb, "1|A700|42752|disk budget exhausted|null",
                 "SELECT concat_ws('|', count(*) OVER (), dimse_status_hex, dimse_status, reason,"
                 " coalesce(sop_instance_uid, 'null'))"
                 " FROM xreg.rejection WHERE spool_id = $1",
                 rej.spool_id);
    assert_query(regdb, "rejection|INSERT|dicom:CR01@10.0.0.5",
                 "SELECT concat_ws('|', table_name, action, actor) FROM xreg.audit_log"
                 " WHERE row_key = $1",
                 rej.spool_id);

    rej.spool_id = "";
    assert_int_equal(registry_rejection_record(reg, &rej, ACTOR, &err), XR_E_INPUT);
    assert_string_equal(err.msg, "cannot record rejection: spool id is missing");
    assert_int_equal(audit_count() - before, 1);
}

/* ----------------------------------------------------------------------------------------------
 * Server stop and start (last: it breaks every connection)
 */

static void pgctl(const char *action)
{
    const char *pgctl_cmd = getenv("XREG_TEST_PGCTL");
    assert_non_null(pgctl_cmd);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "%s %s >/dev/null", pgctl_cmd, action);
    if (system(cmd) != 0)
        fail_msg("\"%s\" failed", cmd);
}

static void test_server_restart(void **state)
{
    (void)state;
    sample s;
    sample_new(&s);
    upsert_ok(&s, true);

    pgctl("stop -m fast");
    sample_new(&s);
    xr_error err = XR_ERROR_INIT;
    xr_code rc = upsert(&s, NULL, &err);
    assert_int_equal(rc, XR_E_TRANSIENT);
    assert_non_null(strstr(err.msg, "could not register instance \""));
    assert_int_equal(registry_ensure_connected(reg, &err), XR_E_TRANSIENT);
    assert_non_null(strstr(err.msg, "could not reconnect to the database"));
    registry_rejection rej = {.spool_id = "rej-down", .reason = "test", .dimse_status = 0xC000};
    assert_int_equal(registry_rejection_record(reg, &rej, ACTOR, &err), XR_E_TRANSIENT);
    registry *r = NULL;
    assert_int_equal(registry_open(conninfo_for("reg"), "t", &r, &err), XR_E_TRANSIENT);
    assert_null(r);

    /* Back up: the same handle reconnects on its next call. */
    pgctl("start");
    upsert_ok(&s, true);
    assert_int_equal(registry_ensure_connected(reg, &err), XR_OK);

    /* Restarted between two calls: the stale connection fails its first command and the call
     * reconnects and succeeds by itself. */
    pgctl("stop -m fast");
    pgctl("start");
    sample_new(&s);
    upsert_ok(&s, true);
    pgctl("restart -m fast");
    assert_int_equal(registry_rejection_record(reg, &rej, ACTOR, &err), XR_OK);

    PQreset(regdb);
    PQreset(admin);
    assert_int_equal(PQstatus(regdb), CONNECTION_OK);
    assert_query(regdb, "1", "SELECT count(*)::text FROM xreg.instance WHERE sop_instance_uid = $1",
                 s.sop);
    assert_query(regdb, "1", "SELECT count(*)::text FROM xreg.rejection WHERE spool_id = $1",
                 "rej-down");
}

/* ----------------------------------------------------------------------------------------------
 */

static int group_setup(void **state)
{
    (void)state;
    admin = connect_db("xreg");
    create_db("reg");
    regdb = connect_db("reg");
    reg = open_reg("reg");
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_migrate(reg, xr_migrations, xr_n_migrations, NULL, &err);
    if (rc) {
        fprintf(stderr, "migrate: %s: %s [%s]\n", xr_code_name(rc), err.msg, err.detail);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    reg = registry_close(reg);
    PQfinish(regdb);
    PQfinish(admin);
    return 0;
}

int main(void)
{
    base_conninfo = getenv("XREG_TEST_CONNINFO");
    if (!base_conninfo) {
        fprintf(stderr, "XREG_TEST_CONNINFO is not set: run through tests/with-postgres.sh\n");
        const char *ci = getenv("CI");
        return ci && strcmp(ci, "true") == 0 ? 1 : 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_bad_conninfo),
        cmocka_unit_test(test_open_unreachable),
        cmocka_unit_test(test_open_sets_application_name),
        cmocka_unit_test(test_migrate_fresh),
        cmocka_unit_test(test_migrate_changed),
        cmocka_unit_test(test_migrate_failing),
        cmocka_unit_test(test_migrate_concurrent),
        cmocka_unit_test(test_upsert_new),
        cmocka_unit_test(test_upsert_same_again),
        cmocka_unit_test(test_upsert_changed),
        cmocka_unit_test(test_upsert_same_series),
        cmocka_unit_test(test_upsert_concurrent),
        cmocka_unit_test(test_upsert_missing_uid),
        cmocka_unit_test(test_upsert_bad_data_rolls_back),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_anonymous_patient),
        cmocka_unit_test(test_audit_append_only),
        cmocka_unit_test(test_rejection_once),
        cmocka_unit_test(test_server_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
