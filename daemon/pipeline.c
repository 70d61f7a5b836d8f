/*
 * Pipeline workers (see pipeline.h for the DESIGN notes).
 */
#include "pipeline.h"

#include <errno.h>
#include <stdarg.h>
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
#include "xr-limits.h"
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
    /* the current model set and the reloadable decode settings, under models_lock */
    pthread_mutex_t models_lock;
    model_set *models;
    dicom_pixel_limits pixel_limits;
    dicom_frame_policy frame_policy;
    _Atomic int64_t batch_wait_ms;
};

/* Per worker and task: prepared inputs for the batch and the run buffers. */
typedef struct task_buf {
    float *inputs;    /* n_inputs x input_floats */
    size_t cap_inputs;
    size_t n_inputs;
    unsigned *owner;  /* job index of each input */
    float *chunk_in;  /* max_batch x input_floats */
    float *chunk_out; /* max_batch x n_labels */
} task_buf;

typedef struct worker {
    pipeline *pl;
    unsigned index;
    pthread_t thread;
    bool started;
    registry *reg;
    _Atomic int state;           /* worker_state */
    _Atomic int64_t state_since_ms; /* CLOCK_MONOTONIC when state was entered */
    _Atomic int64_t sleep_until_ms;
    /* classification: the set this worker's sessions belong to (one reference) */
    model_set *ms;
    classifier_session *sess[CLASSIFIER_TASK_MAX];
    struct task_buf buf[CLASSIFIER_TASK_MAX];
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

void pipeline_set_models(pipeline *pl, model_set *ms)
{
    model_set_ref(ms);
    pthread_mutex_lock(&pl->models_lock);
    model_set *old = pl->models;
    pl->models = ms;
    pthread_mutex_unlock(&pl->models_lock);
    model_set_unref(old); /* freed once no worker holds it either */
}

model_set *pipeline_models(pipeline *pl)
{
    pthread_mutex_lock(&pl->models_lock);
    model_set *ms = model_set_ref(pl->models);
    pthread_mutex_unlock(&pl->models_lock);
    return ms;
}

void pipeline_set_batch_wait(pipeline *pl, int64_t batch_wait_ms)
{
    atomic_store(&pl->batch_wait_ms, batch_wait_ms);
}

void pipeline_set_pixels(pipeline *pl, const dicom_pixel_limits *limits,
                         dicom_frame_policy policy)
{
    pthread_mutex_lock(&pl->models_lock);
    pl->pixel_limits = *limits;
    pl->frame_policy = policy;
    pthread_mutex_unlock(&pl->models_lock);
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

/* ---- one batch -------------------------------------------------------------------------------
 * A job is one spooled item of the batch. Incoming objects go through job_prepare (reception
 * record, header), classify_batch (pixels, models) and job_register (one transaction each);
 * rejections through process_rejection.
 */

typedef enum job_state {
    JOB_REGISTER, /* prepared: register it */
    JOB_FINISHED, /* nothing more to do (vanished, set aside, registered) */
} job_state;

typedef struct job {
    spool_item item;
    job_state state;
    spool_meta meta;
    dicom_header h;
    char path[PATH_MAX];
    /* classification results, per task */
    bool has_pred[CLASSIFIER_TASK_MAX];
    bool failed[CLASSIFIER_TASK_MAX];
    float *probs[CLASSIFIER_TASK_MAX]; /* n_labels, averaged over frames; malloc'ed */
    uint32_t n_frames;                 /* frames prepared for the models (0: none) */
    /* why something could not be classified (the first problem wins) */
    bool has_issue;
    const char *issue_task; /* REGISTRY_TASK_* or NULL */
    const char *issue_code;
    char issue_reason[XR_ERROR_MSG_BYTES + 64];
} job;

static void job_issue(job *j, const char *task, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void job_issue(job *j, const char *task, const char *code, const char *fmt, ...)
{
    if (j->has_issue)
        return;
    j->has_issue = true;
    j->issue_task = task;
    j->issue_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->issue_reason, sizeof(j->issue_reason), fmt, ap);
    va_end(ap);
}

static void job_done(job *j)
{
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++) {
        free(j->probs[t]);
        j->probs[t] = NULL;
    }
}

/* Reception record and header; FINISHED when the object vanished or was set aside. */
static void job_prepare(worker *w, job *j)
{
    spool *sp = w->pl->sp;
    xr_error e = XR_ERROR_INIT, *err = &e;
    char reason[XR_ERROR_MSG_BYTES + 64];
    const spool_item *item = &j->item;
    spool_item_path(sp, item, j->path, sizeof(j->path));

    xr_code rc = spool_meta_read(sp, item, &j->meta, NULL, NULL, 0, err);
    if (rc) {
        /* The object is what matters; the reception record only adds who sent it and when. */
        xr_log_write(XR_LOG_WARNING, "[%s] %s; registering without the reception record",
                     item->id, err->msg);
        j->meta = (spool_meta){0};
        struct stat st;
        if (stat(j->path, &st) == 0)
            j->meta.received_at_us = (int64_t)st.st_mtim.tv_sec * 1000000 +
                                     st.st_mtim.tv_nsec / 1000;
        xr_error_clear(err);
    }

    double t0 = xr_mono_s();
    rc = dicom_header_read(j->path, &j->h, err);
    if (w->pl->p.stage_seconds)
        metrics_histogram_observe(w->pl->p.stage_seconds, "parse", xr_mono_s() - t0);
    j->state = JOB_FINISHED;
    if (rc == XR_E_IO && err->sys_errno == ENOENT) {
        xr_log_write(XR_LOG_WARNING, "[%s] spooled object vanished (%s), ignoring", item->id,
                     err->msg);
        spool_done(sp, item);
        return;
    }
    if (rc) {
        snprintf(reason, sizeof(reason), "stored object no longer parses: %.*s",
                 (int)(sizeof(reason) - 40), err->msg);
        set_aside(w, item, &j->meta, "corrupt", reason);
        return;
    }
    dicom_header *h = &j->h;
    if (!h->sop_instance_uid[0] || !h->study_instance_uid[0] || !h->series_instance_uid[0] ||
        !h->sop_class_uid[0]) {
        snprintf(reason, sizeof(reason),
                 "stored object lacks SOP Class, SOP Instance, Study or Series Instance UID");
        set_aside(w, item, &j->meta, "corrupt", reason);
        return;
    }
    if (h->n_repairs)
        xr_log_write(XR_LOG_NOTICE, "[%s] %s: %u malformed header values repaired: %s", item->id,
                     h->sop_instance_uid, h->n_repairs, h->repairs);
    size_t n_bad = header_sanitize(h);
    if (n_bad)
        xr_log_write(XR_LOG_NOTICE, "[%s] %zu bytes of text were not valid UTF-8 and were "
                     "replaced with '?'", item->id, n_bad);
    /* Before anything reaches the registry (rows, audit log): identifiers as configured. */
    pseudonymizer_apply(w->pl->p.pseudo, h);
    j->state = JOB_REGISTER;
}

/* The reason code of a pixel decoding failure (xreg.classification_issue.reason_code). */
static const char *decode_reason_code(xr_code rc, const char *msg)
{
    switch (rc) {
    case XR_E_UNSUPPORTED:
        return "unsupported";
    case XR_E_LIMIT:
        return "limit";
    case XR_E_INPUT:
        return strstr(msg, "no Pixel Data") ? "no_pixels" : "decode_error";
    default:
        return "decode_error";
    }
}

/* Make the worker's sessions match the pipeline's current model set. */
static void worker_sync_models(worker *w)
{
    pipeline *pl = w->pl;
    pthread_mutex_lock(&pl->models_lock);
    model_set *cur = pl->models;
    bool same = cur == w->ms;
    if (!same)
        model_set_ref(cur);
    pthread_mutex_unlock(&pl->models_lock);
    if (same)
        return;
    /* Sessions go before the classifiers they were made from. */
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++)
        w->sess[t] = classifier_session_free(w->sess[t]);
    w->ms = model_set_unref(w->ms);
    w->ms = cur;
    if (!cur)
        return;
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++) {
        if (!cur->slot[t].c)
            continue;
        xr_error err = XR_ERROR_INIT;
        if (classifier_session_new(cur->slot[t].c, (int)pl->p.threads_per_worker, &w->sess[t],
                                   &err))
            /* Objects are still registered, each with this as its classification issue. */
            xr_log_write(XR_LOG_ERR, "worker %u: cannot run the %s model: %s", w->index,
                         classifier_task_name((classifier_task)t), err.msg);
    }
}

static bool task_buf_reserve(task_buf *b, size_t n_inputs, size_t input_floats)
{
    if (n_inputs <= b->cap_inputs)
        return true;
    size_t cap = b->cap_inputs ? b->cap_inputs * 2 : 8;
    while (cap < n_inputs)
        cap *= 2;
    float *in = realloc(b->inputs, cap * input_floats * sizeof(float));
    if (!in)
        return false;
    b->inputs = in;
    unsigned *own = realloc(b->owner, cap * sizeof(unsigned));
    if (!own)
        return false;
    b->owner = own;
    b->cap_inputs = cap;
    return true;
}

static void task_buf_free(task_buf *b)
{
    free(b->inputs);
    free(b->owner);
    free(b->chunk_in);
    free(b->chunk_out);
    *b = (task_buf){0};
}

/* Decode one job's pixels and prepare its frames for every model with a session. */
static void job_decode_prepare(worker *w, job *j, unsigned ji)
{
    pipeline *pl = w->pl;
    model_set *ms = w->ms;
    dicom_pixel_limits lim;
    dicom_frame_policy policy;
    pthread_mutex_lock(&pl->models_lock);
    lim = pl->pixel_limits;
    policy = pl->frame_policy;
    pthread_mutex_unlock(&pl->models_lock);

    dicom_image img = {0};
    xr_error err = XR_ERROR_INIT;
    double t0 = xr_mono_s();
    xr_code rc = dicom_image_read(j->path, policy, &lim, &img, &err);
    if (pl->p.stage_seconds)
        metrics_histogram_observe(pl->p.stage_seconds, "decode", xr_mono_s() - t0);
    if (rc) {
        const char *code = decode_reason_code(rc, err.msg);
        job_issue(j, NULL, code, "pixels not decoded: %s", err.msg);
        return;
    }
    j->n_frames = img.n_frames;
    size_t frame = (size_t)img.rows * img.columns;
    t0 = xr_mono_s();
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++) {
        const model_slot *s = &ms->slot[t];
        if (!s->c)
            continue;
        const char *task = classifier_task_name((classifier_task)t);
        if (!w->sess[t]) {
            j->failed[t] = true;
            job_issue(j, task, "model_error", "the %s model could not be started", task);
            continue;
        }
        /* Without a body-part model the header decides whether the fracture model applies, so
         * inputs it will not use are not even prepared. */
        if (t == CLASSIFIER_TASK_FRACTURE && !ms->slot[CLASSIFIER_TASK_BODY_PART].c &&
            !model_set_fracture_applies(ms, j->h.body_part_examined))
            continue;
        task_buf *b = &w->buf[t];
        size_t nf = classifier_input_floats(s->c);
        if (!task_buf_reserve(b, b->n_inputs + img.n_frames, nf)) {
            j->failed[t] = true;
            job_issue(j, task, "model_error", "out of memory preparing %u frames for the %s "
                      "model", img.n_frames, task);
            continue;
        }
        /* Models sharing a preprocessing (same fingerprint) share the prepared input. */
        int same = -1;
        for (int u = 0; u < t && same < 0; u++)
            if (ms->slot[u].c && w->sess[u] && !j->failed[u] && w->buf[u].n_inputs >= img.n_frames &&
                w->buf[u].owner[w->buf[u].n_inputs - 1] == ji &&
                strcmp(ms->slot[u].meta->preproc_fingerprint, s->meta->preproc_fingerprint) == 0)
                same = u;
        size_t start = b->n_inputs;
        bool ok = true;
        for (uint32_t f = 0; f < img.n_frames && ok; f++) {
            float *dst = b->inputs + (start + f) * nf;
            if (same >= 0) {
                const task_buf *o = &w->buf[same];
                memcpy(dst, o->inputs + (o->n_inputs - img.n_frames + f) * nf,
                       nf * sizeof(float));
            } else if (classifier_prepare_gray(w->sess[t], img.pixels + f * frame, img.columns,
                                               img.rows, dst, &err)) {
                j->failed[t] = true;
                job_issue(j, task, "model_error", "preparing the image for the %s model: %s", task,
                          err.msg);
                ok = false;
            }
            b->owner[start + f] = ji;
        }
        if (ok)
            b->n_inputs = start + img.n_frames;
    }
    if (pl->p.stage_seconds)
        metrics_histogram_observe(pl->p.stage_seconds, "preprocess", xr_mono_s() - t0);
    dicom_image_done(&img);
}

/*
 * Run task t over its prepared inputs whose owner passes keep (NULL: all), in chunks of the
 * model's max_batch, and average each job's frames into job->probs[t].
 */
static void run_task(worker *w, job *jobs, int t, const bool *keep)
{
    pipeline *pl = w->pl;
    const model_slot *s = &w->ms->slot[t];
    task_buf *b = &w->buf[t];
    const char *task = classifier_task_name((classifier_task)t);
    size_t nf = classifier_input_floats(s->c), nl = s->meta->n_labels;
    uint32_t max_batch = s->meta->max_batch ? s->meta->max_batch : 1;
    if (!b->chunk_in) {
        b->chunk_in = malloc((size_t)max_batch * nf * sizeof(float));
        b->chunk_out = malloc((size_t)max_batch * nl * sizeof(float));
        if (!b->chunk_in || !b->chunk_out) {
            free(b->chunk_in);
            free(b->chunk_out);
            b->chunk_in = b->chunk_out = NULL;
            for (size_t i = 0; i < b->n_inputs; i++) {
                job *j = &jobs[b->owner[i]];
                j->failed[t] = true;
                job_issue(j, task, "model_error", "out of memory running the %s model", task);
            }
            return;
        }
    }
    size_t i = 0;
    while (i < b->n_inputs) {
        /* gather up to max_batch kept inputs */
        size_t idx[XR_BATCH_MAX];
        uint32_t n = 0;
        for (; i < b->n_inputs && n < max_batch && n < XR_BATCH_MAX; i++) {
            if (keep && !keep[b->owner[i]])
                continue;
            if (jobs[b->owner[i]].failed[t])
                continue;
            memcpy(b->chunk_in + (size_t)n * nf, b->inputs + i * nf, nf * sizeof(float));
            idx[n++] = i;
        }
        if (n == 0)
            break;
        xr_error err = XR_ERROR_INIT;
        double t0 = xr_mono_s();
        xr_code rc = classifier_run(w->sess[t], n, b->chunk_in, b->chunk_out, &err);
        double dt = xr_mono_s() - t0;
        worker_set_state(w, WORKER_BUSY); /* progress, for the watchdog */
        if (pl->p.inference_seconds)
            metrics_histogram_observe(pl->p.inference_seconds, s->meta->name, dt);
        if (rc) {
            for (uint32_t k = 0; k < n; k++) {
                job *j = &jobs[b->owner[idx[k]]];
                j->failed[t] = true;
                job_issue(j, task, "model_error", "the %s model failed: %s", task, err.msg);
            }
            xr_log_write(XR_LOG_ERR, "worker %u: the %s model failed on %u images: %s", w->index,
                         task, n, err.msg);
            continue;
        }
        if (pl->p.inferences_total)
            metrics_counter_add(pl->p.inferences_total, s->meta->name, NULL, n);
        for (uint32_t k = 0; k < n; k++) {
            job *j = &jobs[b->owner[idx[k]]];
            if (!j->probs[t]) {
                j->probs[t] = calloc(nl, sizeof(float));
                if (!j->probs[t]) {
                    j->failed[t] = true;
                    job_issue(j, task, "model_error", "out of memory");
                    continue;
                }
            }
            /* mean over the object's frames */
            for (size_t l = 0; l < nl; l++)
                j->probs[t][l] += b->chunk_out[(size_t)k * nl + l] / (float)j->n_frames;
            j->has_pred[t] = true;
        }
    }
}

/* The argmax label's DICOM term of a job's body-part prediction, or NULL. */
static const char *job_body_part_term(const model_set *ms, const job *j)
{
    const model_slot *s = &ms->slot[CLASSIFIER_TASK_BODY_PART];
    if (!s->c || !j->has_pred[CLASSIFIER_TASK_BODY_PART] || j->failed[CLASSIFIER_TASK_BODY_PART])
        return NULL;
    size_t best = 0;
    for (size_t l = 1; l < s->meta->n_labels; l++)
        if (j->probs[CLASSIFIER_TASK_BODY_PART][l] > j->probs[CLASSIFIER_TASK_BODY_PART][best])
            best = l;
    return s->meta->dicom_terms ? s->meta->dicom_terms[best] : NULL;
}

static void classify_batch(worker *w, job *jobs, unsigned n_jobs)
{
    model_set *ms = w->ms;
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++)
        w->buf[t].n_inputs = 0;
    for (unsigned i = 0; i < n_jobs; i++)
        if (jobs[i].state == JOB_REGISTER) {
            job_decode_prepare(w, &jobs[i], i);
            worker_set_state(w, WORKER_BUSY);
        }
    if (ms->slot[CLASSIFIER_TASK_BODY_PART].c)
        run_task(w, jobs, CLASSIFIER_TASK_BODY_PART, NULL);
    if (ms->slot[CLASSIFIER_TASK_IMPLANT].c)
        run_task(w, jobs, CLASSIFIER_TASK_IMPLANT, NULL);
    if (ms->slot[CLASSIFIER_TASK_FRACTURE].c) {
        bool keep[XR_BATCH_MAX] = {0};
        bool any = false;
        for (unsigned i = 0; i < n_jobs && i < XR_BATCH_MAX; i++) {
            if (jobs[i].state != JOB_REGISTER || !jobs[i].n_frames)
                continue;
            const char *term = ms->slot[CLASSIFIER_TASK_BODY_PART].c
                                   ? job_body_part_term(ms, &jobs[i])
                                   : jobs[i].h.body_part_examined;
            keep[i] = model_set_fracture_applies(ms, term);
            any = any || keep[i];
        }
        if (any)
            run_task(w, jobs, CLASSIFIER_TASK_FRACTURE, keep);
    }
    /* Clamp the averaged probabilities into [0,1] against float rounding. */
    for (unsigned i = 0; i < n_jobs; i++)
        for (int t = 0; t < CLASSIFIER_TASK_MAX; t++)
            if (jobs[i].probs[t])
                for (size_t l = 0; l < ms->slot[t].meta->n_labels; l++)
                    jobs[i].probs[t][l] = jobs[i].probs[t][l] < 0.0f   ? 0.0f
                                          : jobs[i].probs[t][l] > 1.0f ? 1.0f
                                                                        : jobs[i].probs[t][l];
}

/* Register the models this job's predictions came from (once per set and model). */
static xr_code ensure_model_ids(worker *w, const job *j, const char *actor, xr_error *err)
{
    model_set *ms = w->ms;
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++) {
        model_slot *s = &ms->slot[t];
        if (!j->has_pred[t] || j->failed[t] || atomic_load(&s->registry_id))
            continue;
        const classifier_meta *m = s->meta;
        registry_model rm = {
            .name = m->name,
            .sha256 = m->sha256,
            .task = classifier_task_name(m->task),
            .labels = m->labels,
            .n_labels = m->n_labels,
            .positive_label = m->positive_label,
            .version = m->version,
            .metadata_json = s->metadata_json,
        };
        int64_t id = 0;
        xr_code rc = registry_model_upsert(w->reg, &rm, actor, &id, err);
        if (rc) {
            xr_error_prefix(err, "registering model \"%s\": ", m->name);
            return rc;
        }
        atomic_store(&s->registry_id, id);
        xr_log_write(XR_LOG_INFO, "model \"%s\" (sha256 %.12s) is xreg.model %" PRId64, m->name,
                     m->sha256, id);
    }
    return XR_OK;
}

static xr_code job_register(worker *w, job *j, xr_error *err)
{
    spool *sp = w->pl->sp;
    char actor[128], reason[XR_ERROR_MSG_BYTES + 64];
    const spool_item *item = &j->item;
    dicom_header *h = &j->h;
    const spool_meta *meta = &j->meta;
    registry_instance inst = {
        .sop_instance_uid = h->sop_instance_uid,
        .sop_class_uid = h->sop_class_uid,
        .series_instance_uid = h->series_instance_uid,
        .study_instance_uid = h->study_instance_uid,
        .transfer_syntax_uid = h->transfer_syntax_uid[0] ? h->transfer_syntax_uid
                                                         : meta->transfer_syntax_uid,
        .patient_id = h->patient_id,
        .issuer_of_patient_id = h->issuer_of_patient_id,
        .patient_name = h->patient_name,
        .patient_birth_date = h->patient_birth_date,
        .patient_sex = h->patient_sex,
        .study_date = h->study_date,
        .study_time = h->study_time,
        .accession_number = h->accession_number,
        .study_description = h->study_description,
        .series_description = h->series_description,
        .modality = h->modality,
        .body_part_examined = h->body_part_examined,
        .view_position = h->view_position,
        .laterality = h->laterality,
        .manufacturer = h->manufacturer,
        .institution_name = h->institution_name,
        .photometric_interpretation = h->photometric_interpretation,
        .series_number = h->series_number,
        .instance_number = h->instance_number,
        .rows = h->rows,
        .columns = h->columns,
        .number_of_frames = h->number_of_frames,
        .bits_allocated = h->bits_allocated,
        .bits_stored = h->bits_stored,
        .samples_per_pixel = h->samples_per_pixel,
        .n_bytes = item->n_bytes,
        .received_at_us = meta->received_at_us,
        .calling_ae = meta->calling_ae,
        .called_ae = meta->called_ae,
        .peer_host = meta->peer_host,
        .spool_id = item->id,
    };
    actor_of(meta, actor, sizeof(actor));
    registry_prediction preds[CLASSIFIER_TASK_MAX];
    size_t n_preds = 0;
    model_set *ms = w->ms;
    if (ms && ms->n_loaded) {
        xr_code rc = ensure_model_ids(w, j, actor, err);
        if (rc)
            return rc;
        for (int t = 0; t < CLASSIFIER_TASK_MAX; t++) {
            if (!j->has_pred[t] || j->failed[t])
                continue;
            const model_slot *s = &ms->slot[t];
            preds[n_preds++] = (registry_prediction){
                .model_id = atomic_load(&s->registry_id),
                .probabilities = j->probs[t],
                .n_probabilities = s->meta->n_labels,
                .preprocessing = s->meta->preproc_fingerprint,
                .threshold = t == CLASSIFIER_TASK_BODY_PART ? 0.0 : s->threshold,
            };
        }
    }
    registry_classify_issue issue = {
        .task = j->issue_task,
        .reason_code = j->issue_code,
        .reason = j->issue_reason,
    };
    bool inserted = false;
    double t0 = xr_mono_s();
    xr_code rc = registry_instance_upsert_classified(w->reg, &inst, preds, n_preds,
                                                     j->has_issue ? &issue : NULL, actor,
                                                     &inserted, err);
    if (rc == XR_OK) {
        pipeline *pl = w->pl;
        if (pl->p.stage_seconds)
            metrics_histogram_observe(pl->p.stage_seconds, "register", xr_mono_s() - t0);
        if (pl->p.registered_total)
            metrics_counter_add(pl->p.registered_total, inserted ? "new" : "known", NULL, 1);
        if (j->has_issue && pl->p.classify_failures_total)
            metrics_counter_add(pl->p.classify_failures_total, j->issue_code,
                                j->issue_task ? j->issue_task : "all", 1);
        stats_ok(pl, true);
        if (ms && ms->n_loaded) {
            pthread_mutex_lock(&pl->stats_lock);
            if (j->has_issue)
                pl->stats.n_unclassified++;
            else
                pl->stats.n_classified++;
            pthread_mutex_unlock(&pl->stats_lock);
        }
        spool_done(sp, item);
        if (j->has_issue)
            xr_log_write(XR_LOG_WARNING, "[%s] registered %s (%s) without %s classification: %s",
                         item->id, h->sop_instance_uid, inserted ? "new" : "already known",
                         j->issue_task ? j->issue_task : "any", j->issue_reason);
        else
            xr_log_write(XR_LOG_INFO, "[%s] registered %s (%s%s%zu predictions)", item->id,
                         h->sop_instance_uid, inserted ? "new" : "already known",
                         n_preds ? ", " : "", n_preds);
        j->state = JOB_FINISHED;
        return XR_OK;
    }
    if (rc == XR_E_INPUT) {
        /* The database refuses this object's data for good: keep it aside, go on. */
        snprintf(reason, sizeof(reason), "registry refused the object: %s", err->msg);
        set_aside(w, item, meta, "registry_refused", reason);
        if (w->pl->p.db_errors_total)
            metrics_counter_add(w->pl->p.db_errors_total, "permanent", NULL, 1);
        j->state = JOB_FINISHED;
        return XR_OK;
    }
    return rc;
}

/*
 * Run fn on one item until it succeeds, retrying transient (and server-side) errors with
 * backoff. false: shutting down while waiting (the item stays in the spool).
 */
static bool worker_until_done(worker *w, const char *item_id, xr_code (*fn)(worker *, void *,
                                                                            xr_error *),
                              void *arg, int64_t *backoff_ms)
{
    pipeline *pl = w->pl;
    for (;;) {
        xr_error err = XR_ERROR_INIT;
        xr_code rc = worker_connect(w, &err);
        if (rc == XR_OK)
            rc = fn(w, arg, &err);
        if (rc == XR_OK) {
            if (*backoff_ms)
                xr_log_write(XR_LOG_NOTICE, "worker %u: registry reachable again", w->index);
            *backoff_ms = 0;
            return true;
        }
        stats_error(pl, &err, err.sqlstate[0] || rc == XR_E_TRANSIENT);
        if (pl->p.db_errors_total)
            metrics_counter_add(pl->p.db_errors_total,
                                rc == XR_E_TRANSIENT ? "transient" : "permanent", NULL, 1);
        if (pl->p.db_retries_total)
            metrics_counter_add(pl->p.db_retries_total, NULL, NULL, 1);
        int64_t initial = atomic_load(&pl->retry_initial_ms);
        int64_t max = atomic_load(&pl->retry_max_ms);
        *backoff_ms = *backoff_ms ? *backoff_ms * 2 : initial;
        if (*backoff_ms > max)
            *backoff_ms = max;
        /* Anything but a transient error here is a schema or server problem, not the
         * object's fault: keep the object and retry rather than lose it. */
        xr_log_write(rc == XR_E_TRANSIENT ? XR_LOG_WARNING : XR_LOG_ERR,
                     "[%s] worker %u: %s%s%s%s, retrying in %" PRId64 " ms", item_id, w->index,
                     err.msg, err.sqlstate[0] ? " (SQLSTATE " : "", err.sqlstate,
                     err.sqlstate[0] ? ")" : "", *backoff_ms);
        atomic_store(&w->sleep_until_ms, mono_ms() + *backoff_ms);
        worker_set_state(w, WORKER_SLEEPING);
        if (!spool_sleep(pl->sp, *backoff_ms))
            return false;
        worker_set_state(w, WORKER_BUSY);
    }
}

static xr_code do_rejection(worker *w, void *arg, xr_error *err)
{
    return process_rejection(w, &((job *)arg)->item, err);
}

static xr_code do_register(worker *w, void *arg, xr_error *err)
{
    return job_register(w, arg, err);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pipeline *pl = w->pl;
    char name[16];
    snprintf(name, sizeof(name), "xreg-worker-%u", w->index);
    pthread_setname_np(pthread_self(), name);

    unsigned batch_max = pl->p.batch_max ? pl->p.batch_max : 1;
    if (batch_max > XR_BATCH_MAX)
        batch_max = XR_BATCH_MAX;
    spool_item items[XR_BATCH_MAX];
    job *jobs = calloc(batch_max, sizeof(*jobs));
    if (!jobs) {
        xr_log_write(XR_LOG_ERR, "worker %u: out of memory; this worker stops", w->index);
        return NULL;
    }
    int64_t backoff_ms = 0;
    worker_set_state(w, WORKER_IDLE);
    for (;;) {
        /* Without models there is nothing to batch: one object at a time, no waiting, as
         * registration alone has always run. */
        worker_sync_models(w);
        bool classify = w->ms && w->ms->n_loaded;
        size_t n = spool_next_batch(pl->sp, items, classify ? batch_max : 1,
                                    classify ? atomic_load(&pl->batch_wait_ms) : 0);
        if (n == 0)
            break;
        worker_set_state(w, WORKER_BUSY);
        /* A reload during the wait applies to this batch already. */
        worker_sync_models(w);
        classify = w->ms && w->ms->n_loaded;
        for (size_t i = 0; i < n; i++) {
            jobs[i] = (job){.item = items[i], .state = JOB_FINISHED};
            if (items[i].kind == SPOOL_KIND_INCOMING)
                job_prepare(w, &jobs[i]);
        }
        if (classify)
            classify_batch(w, jobs, (unsigned)n);
        bool stopping = false;
        for (size_t i = 0; i < n && !stopping; i++) {
            job *j = &jobs[i];
            if (j->item.kind == SPOOL_KIND_REJECTED)
                stopping = !worker_until_done(w, j->item.id, do_rejection, j, &backoff_ms);
            else if (j->state == JOB_REGISTER)
                stopping = !worker_until_done(w, j->item.id, do_register, j, &backoff_ms);
        }
        for (size_t i = 0; i < n; i++)
            job_done(&jobs[i]);
        worker_set_state(w, WORKER_IDLE);
        if (stopping)
            break; /* shutting down: the objects not done stay in the spool */
    }
    free(jobs);
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++) {
        w->sess[t] = classifier_session_free(w->sess[t]);
        task_buf_free(&w->buf[t]);
    }
    w->ms = model_set_unref(w->ms);
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
    pthread_mutex_init(&pl->models_lock, NULL);
    pl->models = model_set_ref(params->models);
    pl->p.models = NULL;
    pl->pixel_limits = params->pixel_limits;
    pl->frame_policy = params->frame_policy;
    if (pl->p.threads_per_worker == 0)
        pl->p.threads_per_worker = 1;
    atomic_store(&pl->batch_wait_ms, params->batch_wait_ms);
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
    pl->models = model_set_unref(pl->models);
    pthread_mutex_destroy(&pl->models_lock);
    free(pl->workers);
    free(pl->conninfo);
    free(pl);
    return NULL;
}
