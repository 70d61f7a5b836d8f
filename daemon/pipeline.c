/*
 * Pipeline workers (see pipeline.h for the DESIGN notes).
 */
#include "pipeline.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dicom.h"
#include "pseudonym.h"
#include "xr-log.h"
#include "xr-migrations.h"
#include "xr-time.h"
#include "xr-utf8.h"

typedef enum worker_state {
    WORKER_IDLE,
    WORKER_BUSY,
    WORKER_SLEEPING,
} worker_state;

struct pipeline {
    pipeline_params p; /* metric families */
    pthread_mutex_t stats_lock;
    pipeline_stats stats;
    spool *sp;
    char *conninfo;
    _Atomic int64_t retry_initial_ms;
    _Atomic int64_t retry_max_ms;
    pthread_mutex_t migrate_lock;
    _Atomic bool migrated; /* set once, under migrate_lock */
    unsigned n_workers;
    struct worker *workers;
};

typedef struct worker {
    pipeline *pl;
    unsigned index;
    pthread_t thread;
    bool started;
    registry *reg;
    _Atomic int state;           /* worker_state */
    _Atomic int64_t state_since_ms; /* CLOCK_MONOTONIC when state was entered */
    _Atomic int64_t sleep_until_ms;
} worker;

static int64_t mono_ms(void)
{
    return xr_mono_us() / 1000;
}

static void worker_set_state(worker *w, worker_state st)
{
    atomic_store(&w->state_since_ms, mono_ms());
    atomic_store(&w->state, (int)st);
}

static void stats_ok(pipeline *pl, bool registered)
{
    pthread_mutex_lock(&pl->stats_lock);
    pl->stats.db_ok = true;
    if (registered)
        pl->stats.n_registered++;
    pthread_mutex_unlock(&pl->stats_lock);
}

static void stats_error(pipeline *pl, const xr_error *err, bool db)
{
    pthread_mutex_lock(&pl->stats_lock);
    if (db)
        pl->stats.db_ok = false;
    pl->stats.n_retries++;
    pl->stats.last_error_at_us = xr_now_us();
    snprintf(pl->stats.last_error, sizeof(pl->stats.last_error), "%s", err->msg);
    pthread_mutex_unlock(&pl->stats_lock);
}

void pipeline_get_stats(pipeline *pl, pipeline_stats *ret)
{
    pthread_mutex_lock(&pl->stats_lock);
    *ret = pl->stats;
    pthread_mutex_unlock(&pl->stats_lock);
}

bool pipeline_is_progressing(pipeline *pl, int64_t stall_ms)
{
    int64_t now = mono_ms();
    for (unsigned i = 0; i < pl->n_workers; i++) {
        worker *w = &pl->workers[i];
        switch ((worker_state)atomic_load(&w->state)) {
        case WORKER_IDLE:
            break;
        case WORKER_BUSY:
            if (now - atomic_load(&w->state_since_ms) > stall_ms)
                return false;
            break;
        case WORKER_SLEEPING:
            /* A backoff it chose itself, plus slack for the wake-up. */
            if (now > atomic_load(&w->sleep_until_ms) + stall_ms)
                return false;
            break;
        }
    }
    return true;
}

xr_code pipeline_migrate(registry *reg, unsigned *ret_applied, xr_error *err)
{
    return registry_migrate(reg, xr_migrations, xr_n_migrations, ret_applied, err);
}

void pipeline_set_retry(pipeline *pl, int64_t initial_ms, int64_t max_ms)
{
    atomic_store(&pl->retry_initial_ms, initial_ms);
    atomic_store(&pl->retry_max_ms, max_ms);
}

static xr_code worker_connect(worker *w, xr_error *err)
{
    pipeline *pl = w->pl;
    if (!w->reg) {
        char app[64];
        snprintf(app, sizeof(app), "xregd worker %u", w->index);
        xr_code rc = registry_open(pl->conninfo, app, &w->reg, err);
        if (rc)
            return rc;
    } else {
        xr_code rc = registry_ensure_connected(w->reg, err);
        if (rc)
            return rc;
    }
    /* Checked without the lock first: after the first success this is every object's path. */
    if (atomic_load(&pl->migrated))
        return XR_OK;
    pthread_mutex_lock(&pl->migrate_lock);
    xr_code rc = XR_OK;
    if (!pl->migrated) {
        unsigned applied = 0;
        rc = pipeline_migrate(w->reg, &applied, err);
        if (rc == XR_OK) {
            pl->migrated = true;
            xr_log_write(XR_LOG_INFO, "registry schema up to date (%u migrations applied now)",
                         applied);
        }
    }
    pthread_mutex_unlock(&pl->migrate_lock);
    return rc;
}

static void actor_of(const spool_meta *m, char *buf, size_t n)
{
    snprintf(buf, n, "dicom:%s@%s", m->calling_ae, m->peer_host);
}

/* Move an acknowledged object aside and count it. */
static void set_aside(worker *w, const spool_item *item, const spool_meta *meta,
                      const char *metric_reason, const char *reason)
{
    xr_log_write(XR_LOG_ERR, "[%s] %s; moved to rejected/", item->id, reason);
    spool_fail(w->pl->sp, item, meta, reason);
    if (w->pl->p.failed_total)
        metrics_counter_add(w->pl->p.failed_total, metric_reason, NULL, 1);
    pthread_mutex_lock(&w->pl->stats_lock);
    w->pl->stats.n_set_aside++;
    pthread_mutex_unlock(&w->pl->stats_lock);
}

static xr_code process_rejection(worker *w, const spool_item *item, xr_error *err)
{
    spool *sp = w->pl->sp;
    spool_meta meta;
    uint16_t status = 0;
    char reason[1024], path[PATH_MAX], actor[128];
    xr_code rc = spool_meta_read(sp, item, &meta, &status, reason, sizeof(reason), err);
    if (rc) {
        /* The reason file itself is unreadable: record what we know. */
        xr_log_write(XR_LOG_WARNING, "[%s] %s, recording the rejection without it", item->id,
                     err->msg);
        meta = (spool_meta){0};
        snprintf(reason, sizeof(reason), "rejection record unreadable");
    }
    actor_of(&meta, actor, sizeof(actor));
    registry_rejection rej = {
        .spool_id = item->id,
        .received_at_us = meta.received_at_us,
        .calling_ae = meta.calling_ae,
        .called_ae = meta.called_ae,
        .peer_host = meta.peer_host,
        .sop_class_uid = meta.sop_class_uid,
        .sop_instance_uid = meta.sop_instance_uid,
        .dimse_status = status,
        .reason = reason,
        .path = spool_item_path(sp, item, path, sizeof(path)),
    };
    rc = registry_rejection_record(w->reg, &rej, actor, err);
    if (rc == XR_OK) {
        stats_ok(w->pl, false);
        xr_log_write(XR_LOG_INFO, "[%s] rejection recorded", item->id);
    }
    return rc;
}

/* The database takes UTF-8 only: text dicom/ could not convert must not make the object
 * unregistrable. Returns how many bytes were replaced. */
static size_t header_sanitize(dicom_header *h)
{
    char *fields[] = {
        h->patient_id,        h->issuer_of_patient_id, h->patient_name,
        h->patient_sex,       h->study_time,           h->accession_number,
        h->study_description, h->series_description,   h->modality,
        h->body_part_examined, h->view_position,       h->laterality,
        h->manufacturer,      h->institution_name,     h->photometric_interpretation,
        h->patient_birth_date, h->study_date,
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        n += xr_utf8_sanitize(fields[i]);
    return n;
}

static xr_code process_instance(worker *w, const spool_item *item, xr_error *err)
{
    spool *sp = w->pl->sp;
    char path[PATH_MAX], actor[128], reason[XR_ERROR_MSG_BYTES + 64];
    spool_meta meta;
    spool_item_path(sp, item, path, sizeof(path));

    xr_code rc = spool_meta_read(sp, item, &meta, NULL, NULL, 0, err);
    if (rc) {
        /* The object is what matters; the reception record only adds who sent it and when. */
        xr_log_write(XR_LOG_WARNING, "[%s] %s; registering without the reception record",
                     item->id, err->msg);
        meta = (spool_meta){0};
        struct stat st;
        if (stat(path, &st) == 0)
            meta.received_at_us = (int64_t)st.st_mtim.tv_sec * 1000000 +
                                  st.st_mtim.tv_nsec / 1000;
        xr_error_clear(err);
    }

    dicom_header h;
    double t0 = xr_mono_s();
    rc = dicom_header_read(path, &h, err);
    if (w->pl->p.stage_seconds)
        metrics_histogram_observe(w->pl->p.stage_seconds, "parse", xr_mono_s() - t0);
    if (rc == XR_E_IO && err->sys_errno == ENOENT) {
        xr_log_write(XR_LOG_WARNING, "[%s] spooled object vanished (%s), ignoring", item->id,
                     err->msg);
        spool_done(sp, item);
        return XR_OK;
    }
    if (rc) {
        snprintf(reason, sizeof(reason), "stored object no longer parses: %s", err->msg);
        set_aside(w, item, &meta, "corrupt", reason);
        return XR_OK;
    }
    if (!h.sop_instance_uid[0] || !h.study_instance_uid[0] || !h.series_instance_uid[0] ||
        !h.sop_class_uid[0]) {
        snprintf(reason, sizeof(reason),
                 "stored object lacks SOP Class, SOP Instance, Study or Series Instance UID");
        set_aside(w, item, &meta, "corrupt", reason);
        return XR_OK;
    }
    if (h.n_repairs)
        xr_log_write(XR_LOG_NOTICE, "[%s] %s: %u malformed header values repaired: %s", item->id,
                     h.sop_instance_uid, h.n_repairs, h.repairs);
    size_t n_bad = header_sanitize(&h);
    if (n_bad)
        xr_log_write(XR_LOG_NOTICE, "[%s] %zu bytes of text were not valid UTF-8 and were "
                     "replaced with '?'", item->id, n_bad);
    /* Before anything reaches the registry (rows, audit log): identifiers as configured. */
    pseudonymizer_apply(w->pl->p.pseudo, &h);
    registry_instance inst = {
        .sop_instance_uid = h.sop_instance_uid,
        .sop_class_uid = h.sop_class_uid,
        .series_instance_uid = h.series_instance_uid,
        .study_instance_uid = h.study_instance_uid,
        .transfer_syntax_uid = h.transfer_syntax_uid[0] ? h.transfer_syntax_uid
                                                        : meta.transfer_syntax_uid,
        .patient_id = h.patient_id,
        .issuer_of_patient_id = h.issuer_of_patient_id,
        .patient_name = h.patient_name,
        .patient_birth_date = h.patient_birth_date,
        .patient_sex = h.patient_sex,
        .study_date = h.study_date,
        .study_time = h.study_time,
        .accession_number = h.accession_number,
        .study_description = h.study_description,
        .series_description = h.series_description,
        .modality = h.modality,
        .body_part_examined = h.body_part_examined,
        .view_position = h.view_position,
        .laterality = h.laterality,
        .manufacturer = h.manufacturer,
        .institution_name = h.institution_name,
        .photometric_interpretation = h.photometric_interpretation,
        .series_number = h.series_number,
        .instance_number = h.instance_number,
        .rows = h.rows,
        .columns = h.columns,
        .number_of_frames = h.number_of_frames,
        .bits_allocated = h.bits_allocated,
        .bits_stored = h.bits_stored,
        .samples_per_pixel = h.samples_per_pixel,
        .n_bytes = item->n_bytes,
        .received_at_us = meta.received_at_us,
        .calling_ae = meta.calling_ae,
        .called_ae = meta.called_ae,
        .peer_host = meta.peer_host,
        .spool_id = item->id,
    };
    actor_of(&meta, actor, sizeof(actor));
    bool inserted = false;
    t0 = xr_mono_s();
    rc = registry_instance_upsert(w->reg, &inst, actor, &inserted, err);
    if (rc == XR_OK) {
        if (w->pl->p.stage_seconds)
            metrics_histogram_observe(w->pl->p.stage_seconds, "register", xr_mono_s() - t0);
        if (w->pl->p.registered_total)
            metrics_counter_add(w->pl->p.registered_total, inserted ? "new" : "known", NULL, 1);
        stats_ok(w->pl, true);
        spool_done(sp, item);
        xr_log_write(XR_LOG_INFO, "[%s] registered %s (%s)", item->id, h.sop_instance_uid,
                     inserted ? "new" : "already known");
        return XR_OK;
    }
    if (rc == XR_E_INPUT) {
        /* The database refuses this object's data for good: keep it aside, go on. */
        snprintf(reason, sizeof(reason), "registry refused the object: %s", err->msg);
        set_aside(w, item, &meta, "registry_refused", reason);
        if (w->pl->p.db_errors_total)
            metrics_counter_add(w->pl->p.db_errors_total, "permanent", NULL, 1);
        return XR_OK;
    }
    return rc;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pipeline *pl = w->pl;
    char name[16];
    snprintf(name, sizeof(name), "xreg-worker-%u", w->index);
    pthread_setname_np(pthread_self(), name);

    spool_item item;
    int64_t backoff_ms = 0;
    worker_set_state(w, WORKER_IDLE);
    while (spool_next(pl->sp, &item)) {
        worker_set_state(w, WORKER_BUSY);
        for (;;) {
            xr_error err = XR_ERROR_INIT;
            xr_code rc = worker_connect(w, &err);
            if (rc == XR_OK)
                rc = item.kind == SPOOL_KIND_REJECTED ? process_rejection(w, &item, &err)
                                                      : process_instance(w, &item, &err);
            if (rc == XR_OK) {
                if (backoff_ms)
                    xr_log_write(XR_LOG_NOTICE, "worker %u: registry reachable again", w->index);
                backoff_ms = 0;
                break;
            }
            stats_error(pl, &err, err.sqlstate[0] || rc == XR_E_TRANSIENT);
            if (pl->p.db_errors_total)
                metrics_counter_add(pl->p.db_errors_total,
                                    rc == XR_E_TRANSIENT ? "transient" : "permanent", NULL, 1);
            if (pl->p.db_retries_total)
                metrics_counter_add(pl->p.db_retries_total, NULL, NULL, 1);
            int64_t initial = atomic_load(&pl->retry_initial_ms);
            int64_t max = atomic_load(&pl->retry_max_ms);
            backoff_ms = backoff_ms ? backoff_ms * 2 : initial;
            if (backoff_ms > max)
                backoff_ms = max;
            /* Anything but a transient error here is a schema or server problem, not the
             * object's fault: keep the object and retry rather than lose it. */
            xr_log_write(rc == XR_E_TRANSIENT ? XR_LOG_WARNING : XR_LOG_ERR,
                         "[%s] worker %u: %s%s%s%s, retrying in %" PRId64 " ms", item.id,
                         w->index, err.msg, err.sqlstate[0] ? " (SQLSTATE " : "",
                         err.sqlstate, err.sqlstate[0] ? ")" : "", backoff_ms);
            atomic_store(&w->sleep_until_ms, mono_ms() + backoff_ms);
            worker_set_state(w, WORKER_SLEEPING);
            if (!spool_sleep(pl->sp, backoff_ms))
                goto out; /* shutting down: the object stays in the spool */
            worker_set_state(w, WORKER_BUSY);
        }
        worker_set_state(w, WORKER_IDLE);
    }
out:
    w->reg = registry_close(w->reg);
    return NULL;
}

xr_code pipeline_start(const pipeline_params *params, pipeline **ret_pl, xr_error *err)
{
    pipeline *pl = calloc(1, sizeof(*pl));
    if (!pl)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    pl->p = *params;
    pl->p.conninfo = NULL;
    pthread_mutex_init(&pl->stats_lock, NULL);
    pl->stats.db_ok = params->migrated;
    pl->sp = params->sp;
    pl->migrated = params->migrated;
    pthread_mutex_init(&pl->migrate_lock, NULL);
    pipeline_set_retry(pl, params->retry_initial_ms, params->retry_max_ms);
    pl->conninfo = strdup(params->conninfo);
    pl->workers = calloc(params->n_workers, sizeof(*pl->workers));
    if (!pl->conninfo || !pl->workers) {
        pipeline_stop(pl);
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    }
    pl->n_workers = params->n_workers;
    for (unsigned i = 0; i < pl->n_workers; i++) {
        worker *w = &pl->workers[i];
        w->pl = pl;
        w->index = i + 1;
        int e = pthread_create(&w->thread, NULL, worker_main, w);
        if (e) {
            spool_shutdown(pl->sp);
            pipeline_stop(pl);
            return xr_error_errno(err, e, "could not start worker thread %u", i + 1);
        }
        w->started = true;
    }
    *ret_pl = pl;
    return XR_OK;
}

pipeline *pipeline_stop(pipeline *pl)
{
    if (!pl)
        return NULL;
    for (unsigned i = 0; i < pl->n_workers; i++)
        if (pl->workers[i].started)
            pthread_join(pl->workers[i].thread, NULL);
    pthread_mutex_destroy(&pl->migrate_lock);
    pthread_mutex_destroy(&pl->stats_lock);
    free(pl->workers);
    free(pl->conninfo);
    free(pl);
    return NULL;
}
