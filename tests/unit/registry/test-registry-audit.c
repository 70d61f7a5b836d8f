/*
 * registry/ after migration 0002, against a real throw-away PostgreSQL (tests/with-postgres.sh):
 * models and predictions (idempotency, input errors, the study summary), 8 concurrent writers
 * on one study, the audit hash chain and its verification against a superuser's tampering, the
 * chaining of rows written before 0002, and the three roles doing their job and nothing more.
 *
 * Each tamper test works in its own database; the others share database "aud".
 */
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
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

#include "registry.h"
#include "xr-migrations.h"

#define ACTOR "test:audit"
#define SHA_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define SHA_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

static const char *base_conninfo;
static PGconn *admin; /* database "xreg" */
static PGconn *db;    /* database "aud", superuser */
static registry *reg; /* database "aud", superuser */
static int64_t bodypart_model, fracture_model;

static const char *const bodypart_labels[] = {"chest", "knee", "hand", "skull"};
static const char *const fracture_labels[] = {"no", "yes"};

/* ---------------------------------------------------------------------------------------------- */

static const char *conninfo_for(const char *dbname, const char *user)
{
    static char buf[1024];
    snprintf(buf, sizeof(buf), "%s dbname=%s%s%s", base_conninfo, dbname, user ? " user=" : "",
             user ? user : "");
    return buf;
}

static PGconn *connect_as(const char *dbname, const char *user)
{
    PGconn *c = PQconnectdb(conninfo_for(dbname, user));
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("cannot connect to \"%s\" as %s: %s", dbname, user ? user : "superuser",
                 PQerrorMessage(c));
    return c;
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
}

/* Run sql and expect it to fail with sqlstate. */
static void exec_fails(PGconn *c, const char *sql, const char *sqlstate)
{
    PGresult *res = PQexec(c, sql);
    const char *got = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (PQresultStatus(res) != PGRES_FATAL_ERROR || !got || strcmp(got, sqlstate) != 0)
        fail_msg("%s: want SQLSTATE %s, got status %s, SQLSTATE %s: %s", sql, sqlstate,
                 PQresStatus(PQresultStatus(res)), got ? got : "none",
                 PQresultErrorMessage(res));
    PQclear(res);
}

static char *query_value(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 1)
        fail_msg("%s: %d rows: %s", sql, PQntuples(res), PQresultErrorMessage(res));
    char *v = PQgetisnull(res, 0, 0) ? NULL : strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    return v;
}

static void assert_query(PGconn *c, const char *want, const char *sql)
{
    char *v = query_value(c, sql);
    if ((want == NULL) != (v == NULL) || (want && strcmp(want, v) != 0))
        fail_msg("%s: got %s, want %s", sql, v ? v : "NULL", want ? want : "NULL");
    free(v);
}

static long long query_int(PGconn *c, const char *sql)
{
    char *v = query_value(c, sql);
    assert_non_null(v);
    long long x = strtoll(v, NULL, 10);
    free(v);
    return x;
}

static void create_db(const char *name)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    exec_ok(admin, sql);
}

static registry *open_reg(const char *dbname, const char *user)
{
    registry *r = NULL;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_open(conninfo_for(dbname, user), "test-registry-audit", &r, &err);
    if (rc)
        fail_msg("registry_open: %s: %s", xr_code_name(rc), err.msg);
    return r;
}

static void migrate_ok(registry *r)
{
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_migrate(r, xr_migrations, xr_n_migrations, NULL, &err);
    if (rc)
        fail_msg("migrate: %s: %s [%s]", xr_code_name(rc), err.msg, err.detail);
}

static void verify(registry *r, const registry_audit_anchor *anchor, registry_audit_report *rep)
{
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_audit_verify(r, anchor, rep, &err);
    if (rc)
        fail_msg("registry_audit_verify: %s: %s [%s]", xr_code_name(rc), err.msg, err.detail);
}

static void assert_chain_valid(registry *r)
{
    registry_audit_report rep;
    verify(r, NULL, &rep);
    if (!rep.ok)
        fail_msg("audit chain broken at seq %" PRId64 " id %" PRId64 ": %s", rep.broken_seq,
                 rep.broken_id, rep.problem);
    assert_true(rep.n_rows > 0);
    assert_int_equal(rep.head_seq, rep.n_rows);
    assert_int_equal(strlen(rep.head_hash), 64);
}

/* An instance with fresh UIDs: k selects them; patient and study are shared by a group. */
typedef struct sample {
    char patient_id[32], study[80], series[80], sop[80], spool[80];
    registry_instance inst;
} sample;

static unsigned counter;

static void sample_new(sample *s, unsigned group, unsigned k, const char *body_part)
{
    *s = (sample){0};
    snprintf(s->patient_id, sizeof(s->patient_id), "AUDPAT%u", group);
    snprintf(s->study, sizeof(s->study), "2.25.7%u", group);
    snprintf(s->series, sizeof(s->series), "2.25.7%u.1", group);
    snprintf(s->sop, sizeof(s->sop), "2.25.7%u.1.%u", group, k);
    snprintf(s->spool, sizeof(s->spool), "aud-%u-%u", group, k);
    s->inst = (registry_instance){
        .sop_instance_uid = s->sop,
        .sop_class_uid = "1.2.840.10008.5.1.4.1.1.1",
        .series_instance_uid = s->series,
        .study_instance_uid = s->study,
        .patient_id = s->patient_id,
        .patient_name = "DOE^JOHN",
        .study_date = "20240301",
        .modality = "CR",
        .body_part_examined = body_part,
        .series_number = 1,
        .instance_number = (int32_t)k,
        .rows = 100,
        .columns = 100,
        .n_bytes = 1000,
        .calling_ae = "CR01",
        .peer_host = "10.0.0.5",
        .spool_id = s->spool,
    };
}

static void upsert_ok(registry *r, const sample *s, const registry_prediction *p, size_t n)
{
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_instance_upsert_predictions(r, &s->inst, p, n, ACTOR, NULL, &err);
    if (rc)
        fail_msg("upsert \"%s\": %s: %s (%s) [%s]", s->sop, xr_code_name(rc), err.msg,
                 err.sqlstate, err.detail);
}

static long long audit_count(PGconn *c)
{
    return query_int(c, "SELECT count(*) FROM xreg.audit_log");
}

static int64_t register_model(registry *r, const char *name, const char *sha, const char *task,
                              const char *const *labels, size_t n, const char *positive)
{
    registry_model m = {.name = name,
                        .sha256 = sha,
                        .task = task,
                        .labels = labels,
                        .n_labels = n,
                        .positive_label = positive,
                        .version = "1",
                        .metadata_json = "{\"xreg.task\": \"x\"}"};
    int64_t id = 0;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_model_upsert(r, &m, ACTOR, &id, &err);
    if (rc)
        fail_msg("model upsert: %s: %s", xr_code_name(rc), err.msg);
    assert_true(id > 0);
    return id;
}

/* ----------------------------------------------------------------------------------------------
 * Models and predictions
 */

static void test_model_upsert(void **state)
{
    (void)state;
    long long before = audit_count(db);
    int64_t again = register_model(reg, "bp", SHA_A, REGISTRY_TASK_BODY_PART, bodypart_labels, 4,
                                   NULL);
    assert_int_equal(again, bodypart_model);
    assert_int_equal(audit_count(db), before); /* nothing changed, nothing audited */
    assert_query(db, "{chest,knee,hand,skull}|1|x",
                 "SELECT concat_ws('|', labels, version, metadata->>'xreg.task') FROM xreg.model"
                 " WHERE name = 'bp'");
    assert_query(db, "yes", "SELECT positive_label FROM xreg.model WHERE name = 'fx'");

    /* Input errors, each before the database. */
    static const char *const one[] = {"a"};
    static const char *const dup[] = {"a", "a"};
    static const char *const unclear[] = {"left", "right"};
    static const char *const quoted[] = {"has \"quote\"", "back\\slash", "comma,inside"};
    struct {
        registry_model m;
        const char *msg;
    } bad[] = {
        {{.name = "", .sha256 = SHA_A, .task = "body_part", .labels = bodypart_labels,
          .n_labels = 4},
         "model name is missing"},
        {{.name = "x", .sha256 = "ABC", .task = "body_part", .labels = bodypart_labels,
          .n_labels = 4},
         "sha256 \"ABC\" is not 64 lower-case hex digits"},
        {{.name = "x", .sha256 = SHA_A, .task = "age", .labels = bodypart_labels, .n_labels = 4},
         "unrecognized task \"age\""},
        {{.name = "x", .sha256 = SHA_A, .task = "body_part", .labels = one, .n_labels = 1},
         "model has 1 labels but must have 2 to"},
        {{.name = "x", .sha256 = SHA_A, .task = "body_part", .labels = dup, .n_labels = 2},
         "label \"a\" appears twice"},
        {{.name = "x", .sha256 = SHA_A, .task = "implant", .labels = unclear, .n_labels = 2},
         "cannot tell which label of implant model \"x\" means present"},
        {{.name = "x", .sha256 = SHA_A, .task = "implant", .labels = unclear, .n_labels = 2,
          .positive_label = "up"},
         "positive label \"up\" is not one of the labels"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        xr_error err = XR_ERROR_INIT;
        xr_code rc = registry_model_upsert(reg, &bad[i].m, ACTOR, NULL, &err);
        assert_int_equal(rc, XR_E_INPUT);
        if (!strstr(err.msg, bad[i].msg))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.msg, bad[i].msg);
    }
    /* Labels with characters an array literal must escape survive intact. */
    register_model(reg, "quoted", SHA_B, "body_part", quoted, 3, NULL);
    assert_query(db, "has \"quote\"|back\\slash|comma,inside",
                 "SELECT array_to_string(labels, '|') FROM xreg.model WHERE name = 'quoted'");
    /* Metadata that is not JSON is the database's 22P02. */
    registry_model m = {.name = "badjson", .sha256 = SHA_B, .task = "body_part",
                        .labels = bodypart_labels, .n_labels = 4, .metadata_json = "{nope"};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(registry_model_upsert(reg, &m, ACTOR, NULL, &err), XR_E_INPUT);
    assert_string_equal(err.sqlstate, "22P02");
}

static void test_prediction_idempotent(void **state)
{
    (void)state;
    sample s;
    sample_new(&s, 1, 1, "CHEST");
    float bp[] = {0.05f, 0.9f, 0.03f, 0.02f};
    float fx[] = {0.2f, 0.8f};
    registry_prediction p[] = {
        {.model_id = bodypart_model, .probabilities = bp, .n_probabilities = 4,
         .preprocessing = "224x224 letterbox"},
        {.model_id = fracture_model, .probabilities = fx, .n_probabilities = 2},
    };
    long long before = audit_count(db);
    upsert_ok(reg, &s, p, 2);
    /* patient, study, series, instance, 2 predictions, the study summary */
    assert_int_equal(audit_count(db) - before, 7);
    assert_query(db, "knee|KNEE|0.9|CHEST",
                 "SELECT concat_ws('|', label, body_part, confidence, header_body_part)"
                 " FROM xreg.predictions WHERE sop_instance_uid = '2.25.71.1.1'"
                 " AND task = 'body_part'");
    assert_query(db, "{\"no\": 0.2, \"yes\": 0.8}",
                 "SELECT probabilities::text FROM xreg.predictions"
                 " WHERE sop_instance_uid = '2.25.71.1.1' AND task = 'fracture'");
    assert_query(db, "KNEE|t|0.8|1",
                 "SELECT concat_ws('|', predicted_body_parts, any_fracture, fracture_confidence,"
                 " n_instances_predicted) FROM xreg.studies WHERE study_instance_uid = '2.25.71'");
    assert_query(db, "KNEE|knee|0.9|t|0.8",
                 "SELECT concat_ws('|', predicted_body_part, predicted_body_part_label,"
                 " body_part_confidence, predicted_fracture, fracture_confidence)"
                 " FROM xreg.instances WHERE sop_instance_uid = '2.25.71.1.1'");
    /* Header says CHEST, the model says knee: a mismatch, and in the review queue. */
    assert_query(db, "CHEST|KNEE",
                 "SELECT concat_ws('|', header_body_part, body_part) FROM xreg.body_part_mismatch"
                 " WHERE sop_instance_uid = '2.25.71.1.1'");
    assert_query(db, "disagrees with header",
                 "SELECT reason FROM xreg.review_queue WHERE sop_instance_uid = '2.25.71.1.1'"
                 " AND task = 'body_part'");

    /* The same again (at-least-once processing): nothing written. */
    before = audit_count(db);
    upsert_ok(reg, &s, p, 2);
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(registry_predictions_record(reg, s.sop, p, 2, ACTOR, &err), XR_OK);
    assert_int_equal(audit_count(db), before);

    /* A changed result: one audited UPDATE of the prediction and of the summary. */
    fx[0] = 0.7f;
    fx[1] = 0.3f;
    assert_int_equal(registry_predictions_record(reg, s.sop, p + 1, 1, ACTOR, &err), XR_OK);
    assert_query(db, "prediction:UPDATE,study_summary:UPDATE",
                 "SELECT string_agg(table_name || ':' || action, ',' ORDER BY seq)"
                 " FROM xreg.audit_log WHERE seq > (SELECT max(seq) - 2 FROM xreg.audit_log)");
    assert_query(db, "f|0.7",
                 "SELECT concat_ws('|', any_fracture, fracture_confidence) FROM xreg.studies"
                 " WHERE study_instance_uid = '2.25.71'");
    assert_query(db, "1", "SELECT count(*) FROM xreg.prediction p JOIN xreg.instance i"
                          " ON i.id = p.instance_ref WHERE i.sop_instance_uid = '2.25.71.1.1'"
                          " AND p.model_ref = " "(SELECT id FROM xreg.model WHERE name = 'fx')");
    assert_chain_valid(reg);
}

static void test_prediction_errors(void **state)
{
    (void)state;
    sample s;
    sample_new(&s, 2, 1, "KNEE");
    float three[] = {0.1f, 0.2f, 0.7f};
    float nan4[] = {0.1f, NAN, 0.2f, 0.3f};
    float big[] = {0.1f, 1.5f};
    registry_prediction p = {.model_id = bodypart_model, .probabilities = three,
                             .n_probabilities = 3};
    long long before = audit_count(db);
    xr_error err = XR_ERROR_INIT;
    /* Wrong count: the database refuses, the whole transaction (instance too) rolls back. */
    assert_int_equal(registry_instance_upsert_predictions(reg, &s.inst, &p, 1, ACTOR, NULL, &err),
                     XR_E_INPUT);
    assert_string_equal(err.sqlstate, "22023");
    assert_non_null(strstr(err.msg, "has 4 labels but 3 probabilities were given"));
    assert_int_equal(audit_count(db), before);
    assert_int_equal(query_int(db, "SELECT count(*) FROM xreg.instance"
                                   " WHERE sop_instance_uid = '2.25.72.1.1'"),
                     0);
    /* NaN and out of range: refused before the database. */
    p.probabilities = nan4;
    p.n_probabilities = 4;
    assert_int_equal(registry_instance_upsert_predictions(reg, &s.inst, &p, 1, ACTOR, NULL, &err),
                     XR_E_INPUT);
    assert_non_null(strstr(err.msg, "probability 1 is nan but must be in [0, 1]"));
    p = (registry_prediction){.model_id = fracture_model, .probabilities = big,
                              .n_probabilities = 2};
    assert_int_equal(registry_predictions_record(reg, s.sop, &p, 1, ACTOR, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "probability 1 is 1.5"));
    /* Unknown instance and unknown model. */
    float ok2[] = {0.5f, 0.5f};
    p = (registry_prediction){.model_id = fracture_model, .probabilities = ok2,
                              .n_probabilities = 2};
    assert_int_equal(registry_predictions_record(reg, "2.25.999", &p, 1, ACTOR, &err), XR_E_INPUT);
    assert_string_equal(err.sqlstate, "23503");
    assert_non_null(strstr(err.msg, "instance \"2.25.999\" is not registered"));
    p.model_id = 999999;
    upsert_ok(reg, &s, NULL, 0);
    assert_int_equal(registry_predictions_record(reg, s.sop, &p, 1, ACTOR, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "model 999999 is not registered"));
    /* A tie picks the first label. */
    p.model_id = fracture_model;
    assert_int_equal(registry_predictions_record(reg, s.sop, &p, 1, ACTOR, &err), XR_OK);
    assert_query(db, "no|0.5",
                 "SELECT concat_ws('|', label, confidence) FROM xreg.predictions"
                 " WHERE sop_instance_uid = '2.25.72.1.1'");
    assert_chain_valid(reg);
}

/* ----------------------------------------------------------------------------------------------
 * Eight writers on one study
 */

#define N_WORKERS 8
#define PER_WORKER 12

typedef struct worker_arg {
    pthread_barrier_t *barrier;
    registry *r;
    unsigned index;
    xr_code rc;
    xr_error err;
} worker_arg;

static void *worker_main(void *arg)
{
    worker_arg *w = arg;
    pthread_barrier_wait(w->barrier);
    for (unsigned k = 0; k < PER_WORKER && w->rc == XR_OK; k++) {
        sample s;
        sample_new(&s, 50, w->index * 100 + k, "HAND");
        float d = 0.005f * (float)(k % 10);
        float bp[] = {0.1f, 0.1f - d, 0.7f + d, 0.1f};
        float fx[] = {0.9f, 0.1f};
        registry_prediction p[] = {
            {.model_id = bodypart_model, .probabilities = bp, .n_probabilities = 4},
            {.model_id = fracture_model, .probabilities = fx, .n_probabilities = 2},
        };
        w->rc = registry_instance_upsert_predictions(w->r, &s.inst, p, 2, ACTOR, NULL, &w->err);
        /* Every third one twice: the duplicate must change nothing. */
        if (w->rc == XR_OK && k % 3 == 0)
            w->rc = registry_instance_upsert_predictions(w->r, &s.inst, p, 2, ACTOR, NULL,
                                                         &w->err);
    }
    return NULL;
}

static void test_concurrent_writers(void **state)
{
    (void)state;
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, N_WORKERS);
    worker_arg w[N_WORKERS];
    pthread_t tid[N_WORKERS];
    for (unsigned i = 0; i < N_WORKERS; i++) {
        w[i] = (worker_arg){.barrier = &barrier, .r = open_reg("aud", NULL), .index = i,
                            .err = XR_ERROR_INIT};
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    }
    for (unsigned i = 0; i < N_WORKERS; i++)
        pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&barrier);
    for (unsigned i = 0; i < N_WORKERS; i++) {
        if (w[i].rc)
            fail_msg("worker %u: %s: %s [%s]", i, xr_code_name(w[i].rc), w[i].err.msg,
                     w[i].err.sqlstate);
        registry_close(w[i].r);
    }
    char want[256];
    snprintf(want, sizeof(want), "1|1|%d|%d|HAND|f", N_WORKERS * PER_WORKER,
             N_WORKERS * PER_WORKER);
    assert_query(db, want,
                 "SELECT concat_ws('|', count(*) OVER (), n_series, n_instances,"
                 " n_instances_predicted, predicted_body_parts, any_fracture)"
                 " FROM xreg.studies WHERE study_instance_uid = '2.25.750'");
    assert_query(db, "1", "SELECT count(*) FROM xreg.patient WHERE patient_id = 'AUDPAT50'");
    snprintf(want, sizeof(want), "%d", 2 * N_WORKERS * PER_WORKER);
    assert_query(db, want,
                 "SELECT count(*) FROM xreg.predictions WHERE study_instance_uid = '2.25.750'");
    /* Each row inserted once; the summary inserted once and updated as instances came. */
    snprintf(want, sizeof(want), "instance:INSERT:%d,patient:INSERT:1,prediction:INSERT:%d,"
             "series:INSERT:1,study:INSERT:1",
             N_WORKERS * PER_WORKER, 2 * N_WORKERS * PER_WORKER);
    assert_query(db, want,
                 "SELECT string_agg(k || ':' || n, ',' ORDER BY k) FROM ("
                 " SELECT table_name || ':' || action AS k, count(*) AS n FROM xreg.audit_log a"
                 " WHERE table_name <> 'study_summary' AND (row_key LIKE '2.25.750%'"
                 "  OR row_key = 'AUDPAT50' OR (table_name = 'prediction' AND new_row->>"
                 "  'instance_ref' IN (SELECT i.id::text FROM xreg.instance i"
                 "  WHERE i.sop_instance_uid LIKE '2.25.750.1.%'))) GROUP BY 1) x");
    /* The chain lock serializes writers: seq order is id order for these rows. */
    assert_query(db, "0",
                 "SELECT count(*) FROM (SELECT id, lag(id) OVER (ORDER BY seq) AS prev"
                 " FROM xreg.audit_log) x WHERE prev > id");
    assert_chain_valid(reg);
}

/* By hand in psql: many audit rows in one transaction, a rollback, and a REPEATABLE READ
 * transaction whose snapshot predates another writer's commit. */
static void test_hand_written_transactions(void **state)
{
    (void)state;
    exec_ok(db, "BEGIN;"
                "INSERT INTO xreg.settings (key, value)"
                " SELECT 'hand.' || g, g::text FROM generate_series(1, 300) g;"
                "UPDATE xreg.settings SET value = value || '!' WHERE key LIKE 'hand.%';"
                "DELETE FROM xreg.settings WHERE key LIKE 'hand.%';"
                "COMMIT");
    assert_query(db, "300|300|300",
                 "SELECT concat_ws('|', count(*) FILTER (WHERE action = 'INSERT'),"
                 " count(*) FILTER (WHERE action = 'UPDATE'),"
                 " count(*) FILTER (WHERE action = 'DELETE')) FROM xreg.audit_log"
                 " WHERE table_name = 'settings' AND row_key LIKE 'hand.%'");
    assert_query(db, "t", "SELECT (SELECT seq FROM xreg.audit_chain_head) ="
                          " (SELECT max(seq) FROM xreg.audit_log)");
    /* psql rows have no actor, but the role and the application. */
    assert_query(db, "postgres|postgres|null|null",
                 "SELECT DISTINCT concat_ws('|', db_role, login_role, coalesce(actor, 'null'),"
                 " coalesce(application_name, 'null')) FROM xreg.audit_log"
                 " WHERE row_key = 'hand.1'");
    exec_ok(db, "BEGIN; INSERT INTO xreg.settings (key, value) VALUES ('gone', '1'); ROLLBACK");
    assert_chain_valid(reg);

    PGconn *a = connect_as("aud", NULL);
    exec_ok(a, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1");
    exec_ok(db, "INSERT INTO xreg.settings (key, value) VALUES ('rr.b', '1')");
    exec_fails(a, "INSERT INTO xreg.settings (key, value) VALUES ('rr.a', '1')", "40001");
    exec_ok(a, "ROLLBACK");
    PQfinish(a);
    exec_ok(db, "DELETE FROM xreg.settings WHERE key LIKE 'rr.%'");
    assert_chain_valid(reg);
}

/* A psql session holding the chain (an open transaction that changed a registry row) delays
 * xregd's writes by at most the lock timeout, then they fail as transient (retried later). */
static void test_chain_held_by_psql(void **state)
{
    (void)state;
    PGconn *a = connect_as("aud", NULL);
    exec_ok(a, "BEGIN; UPDATE xreg.settings SET value = value WHERE key = "
               "'review.confidence_threshold'");
    sample s;
    sample_new(&s, 70, 1, "KNEE");
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_instance_upsert(reg, &s.inst, ACTOR, NULL, &err);
    assert_int_equal(rc, XR_E_TRANSIENT);
    assert_string_equal(err.sqlstate, "55P03");
    exec_ok(a, "COMMIT");
    PQfinish(a);
    upsert_ok(reg, &s, NULL, 0); /* the retry goes through */
    assert_chain_valid(reg);
}

/* ----------------------------------------------------------------------------------------------
 * Tampering by the superuser
 */

/* A fresh database with a valid chain of some rows; returns a registry handle on it. */
static registry *tamper_setup(const char *name, PGconn **ret_conn)
{
    create_db(name);
    registry *r = open_reg(name, NULL);
    migrate_ok(r);
    for (unsigned k = 1; k <= 4; k++) {
        sample s;
        sample_new(&s, 90, k, "CHEST");
        upsert_ok(r, &s, NULL, 0);
    }
    assert_chain_valid(r);
    *ret_conn = connect_as(name, NULL);
    return r;
}

static void tamper(PGconn *c, const char *sql)
{
    /* What a superuser can do: set the append-only triggers aside. */
    exec_ok(c, "ALTER TABLE xreg.audit_log DISABLE TRIGGER USER");
    exec_ok(c, sql);
    exec_ok(c, "ALTER TABLE xreg.audit_log ENABLE TRIGGER USER");
}

static void expect_broken(registry *r, const registry_audit_anchor *anchor, int64_t seq,
                          const char *problem)
{
    registry_audit_report rep;
    verify(r, anchor, &rep);
    if (rep.ok)
        fail_msg("tampering not detected (want \"%s\" at seq %" PRId64 ")", problem, seq);
    if (rep.broken_seq != seq || !strstr(rep.problem, problem))
        fail_msg("broken at seq %" PRId64 ": \"%s\"; want seq %" PRId64 ": \"%s\"",
                 rep.broken_seq, rep.problem, seq, problem);
}

static void test_tamper_edited_row(void **state)
{
    (void)state;
    PGconn *c;
    registry *r = tamper_setup("t_edit", &c);
    tamper(c, "UPDATE xreg.audit_log SET new_row = jsonb_set(new_row, '{patient_name}',"
              " '\"SOMEONE^ELSE\"') WHERE seq = 1");
    expect_broken(r, NULL, 1, "content does not match its hash");
    registry_audit_report rep;
    verify(r, NULL, &rep);
    assert_true(rep.broken_id > 0);
    assert_non_null(strstr(rep.problem, "table patient, key AUDPAT90"));
    PQfinish(c);
    registry_close(r);
}

static void test_tamper_deleted_row(void **state)
{
    (void)state;
    PGconn *c;
    registry *r = tamper_setup("t_delete", &c);
    tamper(c, "DELETE FROM xreg.audit_log WHERE seq = 3");
    expect_broken(r, NULL, 4, "rows with seq 3 to 3 are missing");
    /* Renumbering the rest to hide the gap breaks the hash links instead. */
    tamper(c, "UPDATE xreg.audit_log SET seq = seq - 1 WHERE seq > 3");
    expect_broken(r, NULL, 3, "prev_hash does not match");
    PQfinish(c);
    registry_close(r);
}

static void test_tamper_reordered(void **state)
{
    (void)state;
    PGconn *c;
    registry *r = tamper_setup("t_reorder", &c);
    char *a = query_value(c, "SELECT id FROM xreg.audit_log WHERE seq = 2");
    char *b = query_value(c, "SELECT id FROM xreg.audit_log WHERE seq = 3");
    char sql[512];
    exec_ok(c, "ALTER TABLE xreg.audit_log ALTER COLUMN id SET GENERATED BY DEFAULT");
    snprintf(sql, sizeof(sql),
             "UPDATE xreg.audit_log SET id = -1 WHERE id = %s;"
             "UPDATE xreg.audit_log SET id = %s WHERE id = %s;"
             "UPDATE xreg.audit_log SET id = %s WHERE id = -1",
             a, a, b, b);
    tamper(c, sql);
    char want[128];
    snprintf(want, sizeof(want), "now has id %s but was chained with id %s", b, a);
    expect_broken(r, NULL, 2, want);
    /* Swapping positions instead (seq) breaks the link at the first of them. */
    tamper(c, "UPDATE xreg.audit_log SET seq = -1 WHERE seq = 2;"
              "UPDATE xreg.audit_log SET seq = 2 WHERE seq = 3;"
              "UPDATE xreg.audit_log SET seq = 3 WHERE seq = -1");
    expect_broken(r, NULL, 2, "prev_hash does not match");
    free(a);
    free(b);
    PQfinish(c);
    registry_close(r);
}

static void test_tamper_truncated_tail(void **state)
{
    (void)state;
    PGconn *c;
    registry *r = tamper_setup("t_tail", &c);
    /* The anchor an operator keeps outside the database (xregctl audit verify --anchor). */
    registry_audit_report rep;
    verify(r, NULL, &rep);
    registry_audit_anchor anchor = {.seq = rep.head_seq};
    memcpy(anchor.hash, rep.head_hash, sizeof(anchor.hash));
    long long n = rep.n_rows;

    /* Cut the tail: the chain head still points past the end. */
    tamper(c, "DELETE FROM xreg.audit_log WHERE seq > (SELECT max(seq) - 3 FROM xreg.audit_log)");
    expect_broken(r, NULL, n, "the chain head records seq");
    /* Re-append through the normal path: the new rows chain from the old head. */
    sample s;
    sample_new(&s, 91, 1, "KNEE");
    upsert_ok(r, &s, NULL, 0);
    expect_broken(r, NULL, n + 1, "are missing (deleted)");

    /* A careful superuser also rewinds the head and re-chains: only the anchor tells. */
    exec_ok(c, "DROP DATABASE IF EXISTS t_tail2");
    PQfinish(c);
    registry_close(r);
    r = tamper_setup("t_tail2", &c);
    verify(r, NULL, &rep);
    anchor.seq = rep.head_seq;
    memcpy(anchor.hash, rep.head_hash, sizeof(anchor.hash));
    tamper(c, "DELETE FROM xreg.audit_log WHERE seq > (SELECT max(seq) - 3 FROM xreg.audit_log);"
              "UPDATE xreg.audit_chain_head h SET seq = a.seq, hash = a.hash, last_id = a.id"
              " FROM (SELECT * FROM xreg.audit_log ORDER BY seq DESC LIMIT 1) a");
    expect_broken(r, &anchor, anchor.seq, "before the anchored seq");
    upsert_ok(r, &s, NULL, 0); /* re-append 4 rows: the chain is whole again... */
    assert_chain_valid(r);
    expect_broken(r, &anchor, anchor.seq, "the chain was rewritten"); /* ...but not the anchor */
    PQfinish(c);
    registry_close(r);
}

static void test_chain_covers_rows_before_0002(void **state)
{
    (void)state;
    create_db("pre0002");
    registry *r = open_reg("pre0002", NULL);
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(registry_migrate(r, xr_migrations, 1, NULL, &err), XR_OK);
    PGconn *c = connect_as("pre0002", NULL);
    exec_ok(c, "INSERT INTO xreg.patient (patient_id) VALUES ('OLD1'), ('OLD2');"
               "UPDATE xreg.patient SET sex = 'F' WHERE patient_id = 'OLD1'");
    assert_int_equal(audit_count(c), 3);
    migrate_ok(r);
    assert_query(c, "1,2,3", "SELECT string_agg(seq::text, ',' ORDER BY id) FROM xreg.audit_log");
    assert_chain_valid(r);
    sample s;
    sample_new(&s, 92, 1, "SKULL");
    upsert_ok(r, &s, NULL, 0);
    registry_audit_report rep;
    verify(r, NULL, &rep);
    assert_true(rep.ok);
    assert_int_equal(rep.n_rows, 7);
    /* Rows written before 0002 are covered too: editing one is detected. */
    tamper(c, "UPDATE xreg.audit_log SET actor = 'x' WHERE seq = 2");
    expect_broken(r, NULL, 2, "content does not match");
    PQfinish(c);
    registry_close(r);
}

/* ----------------------------------------------------------------------------------------------
 * Roles: each can do its job and nothing more
 */

static void test_role_writer(void **state)
{
    (void)state;
    registry *w = open_reg("aud", "t_writer");
    PGconn *c = connect_as("aud", "t_writer");
    /* Its job: migrate (nothing to do), register models, instances and predictions. */
    unsigned applied = 99;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(registry_migrate(w, xr_migrations, xr_n_migrations, &applied, &err), XR_OK);
    assert_int_equal(applied, 0);
    int64_t id = register_model(w, "bp", SHA_A, "body_part", bodypart_labels, 4, NULL);
    assert_int_equal(id, bodypart_model);
    sample s;
    sample_new(&s, 60, 1, "CHEST");
    float bp[] = {0.9f, 0.05f, 0.03f, 0.02f};
    registry_prediction p = {.model_id = id, .probabilities = bp, .n_probabilities = 4};
    upsert_ok(w, &s, &p, 1);
    registry_rejection rej = {.spool_id = "writer-rej", .reason = "test", .dimse_status = 0xC000};
    assert_int_equal(registry_rejection_record(w, &rej, ACTOR, &err), XR_OK);
    assert_query(db, "t_writer|t_writer|test:audit",
                 "SELECT DISTINCT concat_ws('|', db_role, login_role, actor) FROM xreg.audit_log"
                 " WHERE row_key = '2.25.760.1.1'");
    /* Nothing more. */
    const char *refused[] = {
        "DELETE FROM xreg.instance WHERE sop_instance_uid = '2.25.760.1.1'",
        "DELETE FROM xreg.prediction",
        "SELECT count(*) FROM xreg.audit_log",
        "INSERT INTO xreg.audit_log (action, table_name) VALUES ('INSERT', 'forged')",
        "UPDATE xreg.audit_log SET actor = 'x'",
        "DELETE FROM xreg.audit_log",
        "TRUNCATE xreg.audit_log",
        "UPDATE xreg.audit_chain_head SET seq = 0",
        "INSERT INTO xreg.human_label (instance_ref, task, value, reason, reviewer)"
        " VALUES (1, 'implant', 'present', 'x', 'x')",
        "SELECT * FROM xreg.record_label('2.25.760.1.1', NULL, 'body_part', 'knee', 'x')",
        "UPDATE xreg.settings SET value = '0'",
        "CREATE TABLE xreg.evil (x int)",
        "CREATE TABLE public.evil (x int)",
        "ALTER TABLE xreg.audit_log DISABLE TRIGGER USER",
        "TRUNCATE xreg.instance",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        exec_fails(c, refused[i], "42501");
    PQfinish(c);
    registry_close(w);
}

static void test_role_reader(void **state)
{
    (void)state;
    PGconn *c = connect_as("aud", "t_reader");
    const char *views[] = {"instances", "studies", "predictions", "labels", "models",
                           "review_queue", "body_part_mismatch", "daily_counts", "rejections",
                           "audit_trail"};
    for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++) {
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM xreg.%s", views[i]);
        exec_ok(c, sql);
    }
    assert_true(query_int(c, "SELECT count(*) FROM xreg.studies") > 0);
    const char *refused[] = {
        "SELECT * FROM xreg.instance",
        "SELECT * FROM xreg.patient",
        "SELECT * FROM xreg.audit_log",
        "INSERT INTO xreg.patient (patient_id) VALUES ('x')",
        "UPDATE xreg.settings SET value = '0'",
        "SELECT * FROM xreg.record_label('2.25.760.1.1', NULL, 'body_part', 'knee', 'x')",
        "SELECT xreg.record_prediction('2.25.760.1.1', 1, '{0.5,0.5}', NULL)",
        "SELECT xreg.audit_serialize()",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        exec_fails(c, refused[i], "42501");
    PQfinish(c);
}

static void test_role_reviewer(void **state)
{
    (void)state;
    PGconn *c = connect_as("aud", "t_reviewer");
    assert_true(query_int(c, "SELECT count(*) FROM xreg.review_queue") > 0);
    /* Its job: correct the knee that was a chest (2.25.71.1.1, header CHEST). */
    exec_ok(c, "SELECT set_config('xreg.actor', 'cli:alice', false)");
    assert_query(c, "knee|prediction",
                 "SELECT concat_ws('|', replaced_value, replaced_source) FROM xreg.record_label("
                 "'2.25.71.1.1', NULL, 'body_part', 'CHEST', 'the film shows a chest')");
    assert_query(c, "chest|CHEST|t_reviewer|cli:alice|knee|t",
                 "SELECT concat_ws('|', value, body_part, reviewer, actor, replaced_value,"
                 " is_current) FROM xreg.labels WHERE sop_instance_uid = '2.25.71.1.1'");
    assert_query(c, "0", "SELECT count(*) FROM xreg.review_queue"
                         " WHERE sop_instance_uid = '2.25.71.1.1' AND task = 'body_part'");
    assert_query(c, "0", "SELECT count(*) FROM xreg.body_part_mismatch"
                         " WHERE sop_instance_uid = '2.25.71.1.1'");
    assert_query(c, "CHEST|CHEST|human",
                 "SELECT concat_ws('|', predicted_body_parts, verified_body_part,"
                 " body_part_findings->0->>'source') FROM xreg.studies s JOIN xreg.instances i"
                 " USING (study_instance_uid) WHERE sop_instance_uid = '2.25.71.1.1'");
    /* A second correction replaces the first, which stays as history. */
    assert_query(c, "chest|human",
                 "SELECT concat_ws('|', replaced_value, replaced_source) FROM xreg.record_label("
                 "'2.25.71.1.1', NULL, 'body_part', 'skull', 'second look')");
    assert_query(c, "2|1", "SELECT concat_ws('|', count(*), count(*) FILTER (WHERE is_current))"
                           " FROM xreg.labels WHERE sop_instance_uid = '2.25.71.1.1'");
    /* A study-level label. */
    assert_query(c, "t|prediction", /* the fracture model said no (test_prediction_idempotent) */
                 "SELECT concat_ws('|', replaced_value = 'absent', replaced_source) FROM"
                 " xreg.record_label(NULL, '2.25.71', 'fracture', 'yes', 'callus on the film')");
    assert_query(c, "t|1", "SELECT concat_ws('|', any_fracture, fracture_confidence)"
                           " FROM xreg.studies WHERE study_instance_uid = '2.25.71'");
    /* Audited as the reviewer, through the SECURITY DEFINER function. */
    assert_query(db, "t_reviewer|t_reviewer|cli:alice",
                 "SELECT DISTINCT concat_ws('|', db_role, login_role, actor) FROM xreg.audit_log"
                 " WHERE table_name = 'human_label'");
    /* Clear errors for bad labels. */
    exec_fails(c, "SELECT * FROM xreg.record_label('2.25.71.1.1', NULL, 'body_part', 'tail', 'x')",
               "22023");
    exec_fails(c, "SELECT * FROM xreg.record_label('2.25.71.1.1', NULL, 'fracture', 'maybe', 'x')",
               "22023");
    exec_fails(c, "SELECT * FROM xreg.record_label('2.25.71.1.1', NULL, 'fracture', 'yes', '')",
               "22023");
    exec_fails(c, "SELECT * FROM xreg.record_label('2.25.404', NULL, 'fracture', 'yes', 'x')",
               "P0002");
    /* Nothing more. */
    const char *refused[] = {
        "INSERT INTO xreg.human_label (instance_ref, task, value, reason, reviewer)"
        " VALUES (1, 'implant', 'present', 'x', 'x')",
        "UPDATE xreg.human_label SET value = 'absent'",
        "DELETE FROM xreg.human_label",
        "UPDATE xreg.prediction SET label = 'x'",
        "SELECT * FROM xreg.audit_log",
        "SELECT xreg.study_summary_refresh(1)",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        exec_fails(c, refused[i], "42501");
    PQfinish(c);
    assert_chain_valid(reg);
}

static void test_writer_cannot_migrate(void **state)
{
    (void)state;
    /* A fresh database: the writer may not create the schema, and is told what to do. */
    create_db("w_fresh");
    registry *w = open_reg("w_fresh", "t_writer");
    xr_error err = XR_ERROR_INIT;
    xr_code rc = registry_migrate(w, xr_migrations, xr_n_migrations, NULL, &err);
    assert_int_equal(rc, XR_E_CONFIG);
    assert_string_equal(err.sqlstate, "42501");
    registry_close(w);
}

/* ---------------------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    admin = connect_as("xreg", NULL);
    create_db("aud");
    db = connect_as("aud", NULL);
    reg = open_reg("aud", NULL);
    migrate_ok(reg);
    /* Login roles of the deployment: each a member of one group role. */
    exec_ok(admin, "CREATE ROLE t_writer LOGIN IN ROLE xreg_writer;"
                   "CREATE ROLE t_reader LOGIN IN ROLE xreg_reader;"
                   "CREATE ROLE t_reviewer LOGIN IN ROLE xreg_reviewer");
    /* PostgreSQL 15 lets nobody but the owner create in public; the connect privilege on the
     * test databases is PUBLIC's default. */
    bodypart_model =
        register_model(reg, "bp", SHA_A, REGISTRY_TASK_BODY_PART, bodypart_labels, 4, NULL);
    fracture_model =
        register_model(reg, "fx", SHA_A, REGISTRY_TASK_FRACTURE, fracture_labels, 2, NULL);
    (void)counter;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    reg = registry_close(reg);
    PQfinish(db);
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
    /* with-postgres.sh puts user=postgres in the connection string; the role tests append
     * their own user, which libpq takes (the last keyword wins). */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_upsert),
        cmocka_unit_test(test_prediction_idempotent),
        cmocka_unit_test(test_prediction_errors),
        cmocka_unit_test(test_concurrent_writers),
        cmocka_unit_test(test_hand_written_transactions),
        cmocka_unit_test(test_chain_held_by_psql),
        cmocka_unit_test(test_tamper_edited_row),
        cmocka_unit_test(test_tamper_deleted_row),
        cmocka_unit_test(test_tamper_reordered),
        cmocka_unit_test(test_tamper_truncated_tail),
        cmocka_unit_test(test_chain_covers_rows_before_0002),
        cmocka_unit_test(test_role_writer),
        cmocka_unit_test(test_role_reader),
        cmocka_unit_test(test_role_reviewer),
        cmocka_unit_test(test_writer_cannot_migrate),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
