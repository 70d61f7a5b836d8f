/*
 * Registry write benchmark (meson benchmark "registry", under tests/with-postgres.sh):
 * instance + prediction upserts per second with the audit triggers on and off, the audit
 * table's size per 10,000 instances, and the speed of the C chain verification.
 *
 *     meson test -C build --benchmark --suite bench registry -v
 *     XREG_BENCH_N=20000 XREG_BENCH_WORKERS=1,4,8 tests/with-postgres.sh build/tests/bench-registry
 *
 * Each instance is one registry_instance_upsert_predictions call: patient, study, series and
 * instance rows, three predictions (body part, implant, fracture) and the study summary, in one
 * transaction. 10 instances per study, 2 studies per patient. "Triggers off" disables the audit
 * row triggers (as a superuser could); the writers still take the chain lock first, so the
 * difference is the cost of writing and chaining the audit rows.
 */
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "registry.h"
#include "xr-migrations.h"

static const char *base;
static unsigned n_instances = 2000;

static const char *const bp_labels[] = {"chest", "knee", "hand", "skull", "spine",
                                        "shoulder", "elbow", "wrist", "pelvis_hip"};
static const char *const yn[] = {"no", "yes"};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const xr_error *err)
{
    fprintf(stderr, "bench-registry: %s: %s [%s]\n", what, err->msg, err->detail);
    exit(1);
}

static PGconn *admin_conn(const char *db)
{
    char ci[1024];
    snprintf(ci, sizeof(ci), "%s dbname=%s", base, db);
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "bench-registry: %s", PQerrorMessage(c));
        exit(1);
    }
    return c;
}

static void exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "bench-registry: %s: %s", sql, PQresultErrorMessage(r));
        exit(1);
    }
    PQclear(r);
}

static long long value(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        fprintf(stderr, "bench-registry: %s: %s", sql, PQresultErrorMessage(r));
        exit(1);
    }
    long long v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

static registry *open_db(const char *db)
{
    char ci[1024];
    snprintf(ci, sizeof(ci), "%s dbname=%s", base, db);
    registry *r = NULL;
    xr_error err = XR_ERROR_INIT;
    if (registry_open(ci, "bench-registry", &r, &err))
        die("open", &err);
    return r;
}

typedef struct job {
    const char *db;
    unsigned first, step;
    int64_t models[3];
    double elapsed;
} job;

static void *worker(void *arg)
{
    job *j = arg;
    registry *r = open_db(j->db);
    for (unsigned k = j->first; k < n_instances; k += j->step) {
        char pid[32], study[64], series[64], sop[64], spool[32];
        snprintf(pid, sizeof(pid), "BENCH%u", k / 20);
        snprintf(study, sizeof(study), "2.25.1%u", k / 10);
        snprintf(series, sizeof(series), "2.25.1%u.1", k / 10);
        snprintf(sop, sizeof(sop), "2.25.1%u.1.%u", k / 10, k);
        snprintf(spool, sizeof(spool), "bench-%u", k);
        registry_instance inst = {
            .sop_instance_uid = sop, .sop_class_uid = "1.2.840.10008.5.1.4.1.1.1",
            .series_instance_uid = series, .study_instance_uid = study,
            .transfer_syntax_uid = "1.2.840.10008.1.2.1", .patient_id = pid,
            .patient_name = "BENCH^PATIENT", .patient_birth_date = "19700101",
            .patient_sex = "F", .study_date = "20240101", .accession_number = "ACC",
            .study_description = "XR", .modality = "CR", .body_part_examined = "CHEST",
            .photometric_interpretation = "MONOCHROME2", .series_number = 1,
            .instance_number = (int32_t)k, .rows = 2048, .columns = 2048,
            .bits_allocated = 16, .bits_stored = 12, .samples_per_pixel = 1,
            .n_bytes = 8 << 20, .calling_ae = "CR01", .called_ae = "XREG",
            .peer_host = "10.0.0.5", .spool_id = spool};
        float bp[9];
        for (int i = 0; i < 9; i++)
            bp[i] = 0.01f;
        bp[k % 9] = 0.92f;
        float im[2] = {0.97f, 0.03f}, fx[2] = {0.88f, 0.12f};
        registry_prediction p[3] = {
            {.model_id = j->models[0], .probabilities = bp, .n_probabilities = 9,
             .preprocessing = "224x224 letterbox mean/std imagenet"},
            {.model_id = j->models[1], .probabilities = im, .n_probabilities = 2},
            {.model_id = j->models[2], .probabilities = fx, .n_probabilities = 2},
        };
        char actor[64];
        snprintf(actor, sizeof(actor), "dicom:CR01@10.0.0.5");
        xr_error err = XR_ERROR_INIT;
        if (registry_instance_upsert_predictions(r, &inst, p, 3, actor, NULL, &err))
            die("upsert", &err);
    }
    registry_close(r);
    return NULL;
}

static void run(const char *db, bool triggers, unsigned n_workers)
{
    PGconn *a = admin_conn("xreg");
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", db);
    exec(a, sql);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db);
    exec(a, sql);
    PQfinish(a);
    registry *r = open_db(db);
    xr_error err = XR_ERROR_INIT;
    if (registry_migrate(r, xr_migrations, xr_n_migrations, NULL, &err))
        die("migrate", &err);
    job j = {.db = db};
    registry_model m[3] = {
        {.name = "bodypart", .sha256 = "1111111111111111111111111111111111111111111111111111111111111111",
         .task = "body_part", .labels = bp_labels, .n_labels = 9},
        {.name = "implant", .sha256 = "2222222222222222222222222222222222222222222222222222222222222222",
         .task = "implant", .labels = yn, .n_labels = 2},
        {.name = "fracture", .sha256 = "3333333333333333333333333333333333333333333333333333333333333333",
         .task = "fracture", .labels = yn, .n_labels = 2},
    };
    for (int i = 0; i < 3; i++)
        if (registry_model_upsert(r, &m[i], "bench", &j.models[i], &err))
            die("model", &err);
    PGconn *c = admin_conn(db);
    if (!triggers) {
        static const char *const t[] = {"patient", "study", "series", "instance", "prediction",
                                        "study_summary"};
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
            snprintf(sql, sizeof(sql), "ALTER TABLE xreg.%s DISABLE TRIGGER %s_audit", t[i], t[i]);
            exec(c, sql);
        }
    }
    long long audit_before = value(c, "SELECT count(*) FROM xreg.audit_log");
    long long bytes_before = value(c, "SELECT pg_total_relation_size('xreg.audit_log')");

    pthread_t tid[64];
    job jobs[64];
    double t0 = now_s();
    for (unsigned w = 0; w < n_workers; w++) {
        jobs[w] = j;
        jobs[w].first = w;
        jobs[w].step = n_workers;
        pthread_create(&tid[w], NULL, worker, &jobs[w]);
    }
    for (unsigned w = 0; w < n_workers; w++)
        pthread_join(tid[w], NULL);
    double dt = now_s() - t0;

    exec(c, "CHECKPOINT");
    long long audit_rows = value(c, "SELECT count(*) FROM xreg.audit_log") - audit_before;
    long long bytes = value(c, "SELECT pg_total_relation_size('xreg.audit_log')") - bytes_before;
    long long n_pred = value(c, "SELECT count(*) FROM xreg.prediction");
    if (n_pred != 3LL * n_instances) {
        fprintf(stderr, "bench-registry: %lld predictions, want %u\n", n_pred, 3 * n_instances);
        exit(1);
    }
    printf("triggers %-3s workers %u: %u instances (+%lld predictions) in %.2f s = %.0f "
           "instances/s, %.0f upserts/s (instance+3 predictions+summary each)",
           triggers ? "on" : "off", n_workers, n_instances, n_pred, dt, n_instances / dt,
           4.0 * n_instances / dt);
    if (triggers) {
        printf("; audit %lld rows, %.1f MB per 10,000 instances (%.0f bytes/row)",
               audit_rows, (double)bytes * 10000.0 / n_instances / 1e6,
               audit_rows ? (double)bytes / (double)audit_rows : 0.0);
        registry_audit_report rep;
        double v0 = now_s();
        if (registry_audit_verify(r, NULL, &rep, &err))
            die("verify", &err);
        double vt = now_s() - v0;
        if (!rep.ok) {
            fprintf(stderr, "bench-registry: chain broken: %s\n", rep.problem);
            exit(1);
        }
        printf("; verify %" PRId64 " rows in %.2f s (%.0f rows/s)", rep.n_rows, vt,
               (double)rep.n_rows / vt);
    }
    printf("\n");
    fflush(stdout);
    PQfinish(c);
    registry_close(r);
}

int main(void)
{
    base = getenv("XREG_TEST_CONNINFO");
    if (!base) {
        fprintf(stderr, "XREG_TEST_CONNINFO is not set: run through tests/with-postgres.sh\n");
        return 77;
    }
    const char *n = getenv("XREG_BENCH_N");
    if (n && atoi(n) > 0)
        n_instances = (unsigned)atoi(n);
    const char *ws = getenv("XREG_BENCH_WORKERS");
    char list[64];
    snprintf(list, sizeof(list), "%s", ws && *ws ? ws : "1,4");
    printf("bench-registry: PostgreSQL from tests/with-postgres.sh (fsync off), %u instances per "
           "run\n", n_instances);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        unsigned w = (unsigned)atoi(tok);
        if (w < 1 || w > 64)
            continue;
        run("bench_on", true, w);
        run("bench_off", false, w);
    }
    return 0;
}
