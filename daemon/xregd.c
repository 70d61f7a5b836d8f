/*
 * xregd: the xreg daemon. DICOM storage SCP -> durable spool -> pipeline workers -> registry.
 *
 * DESIGN (threads)
 * - main: loads the configuration, recovers the spool, migrates, starts the others, then runs an
 *   epoll loop over a signalfd (SIGHUP reloads, SIGTERM/SIGINT stop) and a timerfd (STATUS=
 *   updates, WATCHDOG=1 while the pipeline makes progress). Signal work happens in the loop, not
 *   in handlers.
 * - "xreg-scp": dicom_scp_run; dicom/ runs one thread per association. Association threads only
 *   receive, fsync into the spool and acknowledge (on_store below); they never decode or touch
 *   the database.
 * - "xreg-worker-N": pipeline workers (pipeline.h).
 * - the metrics HTTP server's thread (metrics.h): reads counters and calls status_text/json.
 * Stop order: stop accepting, wait for associations in flight (at most dicom.stop_timeout_s),
 * wake the workers (each finishes its current object), join, stop the embedded PostgreSQL if we
 * started it. Objects not yet registered stay in the spool for the next start.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "xr-json.h"
#include "config.h"
#include "dicom.h"
#include "log.h"
#include "metrics.h"
#include "models.h"
#include "pgembed.h"
#include "pseudonym.h"
#include "pipeline.h"
#include "registry.h"
#include "spool.h"
#include "xr-config.h"
#include "xr-fs.h"
#include "xr-time.h"

/* Metric families; created in main before any thread starts. */
typedef struct daemon_metrics {
    metrics *m;
    metrics_counter *assoc_total;     /* calling_ae */
    metrics_counter *assoc_rejected;  /* calling_ae */
    metrics_counter *instances_total; /* outcome, reason */
    metrics_histogram *stage_seconds; /* stage */
    metrics_histogram *inference_seconds; /* model */
    metrics_counter *inferences_total;    /* model */
    metrics_counter *classify_failures_total; /* reason, task */
    metrics_counter *registered_total;
    metrics_counter *failed_total;
    metrics_counter *db_errors_total;
    metrics_counter *db_retries_total;
} daemon_metrics;

typedef struct daemon_ctx {
    spool *sp;
    dicom_scp *scp;
    pipeline *pl;
    xregd_config *cfg;
    daemon_metrics dm;
    const char *conninfo; /* for the readiness probe */
    int64_t started_us;
    _Atomic uint64_t n_stored;
    _Atomic uint64_t n_rejected;
    _Atomic uint64_t n_refused; /* A700 */
    _Atomic bool ready;
    _Atomic int64_t stop_timeout_s;
    pthread_mutex_t scp_lock; /* run() returned: scp_done, scp_cond */
    pthread_cond_t scp_cond;
    bool scp_done;
    /* Model reload off the main loop: a thread loads the new set, then writes reload_efd. */
    int reload_efd;
    bool reload_running;  /* main thread only */
    bool reload_pending;  /* a SIGHUP arrived while loading: reload again after */
    pthread_t reload_thread;
    xregd_config *reload_cfg; /* owned by the thread while it runs */
    model_set *reload_result;
    xr_error reload_err;
    double reload_seconds;
} daemon_ctx;

#define ASSOC_FMT "[assoc %" PRIu64 " \"%s\"@%s]"
#define ASSOC_ARGS(a) (a)->id, (a)->calling_ae, (a)->peer_host

static void on_assoc(void *userdata, const dicom_assoc_info *a, dicom_assoc_event ev,
                     const char *text)
{
    daemon_ctx *ctx = userdata;
    switch (ev) {
    case DICOM_ASSOC_ACCEPTED:
        metrics_counter_add(ctx->dm.assoc_total, a->calling_ae, NULL, 1);
        log_info(ASSOC_FMT " association accepted (called \"%s\", %s presentation contexts)",
                 ASSOC_ARGS(a), a->called_ae, text ? text : "?");
        break;
    case DICOM_ASSOC_REJECTED:
        metrics_counter_add(ctx->dm.assoc_rejected, a->calling_ae, NULL, 1);
        log_notice(ASSOC_FMT " association rejected: %s (called \"%s\")", ASSOC_ARGS(a),
                   text ? text : "no reason given", a->called_ae);
        break;
    case DICOM_ASSOC_RELEASED:
        log_info(ASSOC_FMT " association released", ASSOC_ARGS(a));
        break;
    case DICOM_ASSOC_ABORTED:
        log_notice(ASSOC_FMT " association aborted%s%s", ASSOC_ARGS(a), text ? ": " : "",
                   text ? text : "");
        break;
    case DICOM_ASSOC_ECHO:
        log_info(ASSOC_FMT " C-ECHO answered", ASSOC_ARGS(a));
        break;
    case DICOM_ASSOC_EVENT_MAX:
        break;
    }
}

static void meta_from_request(const dicom_store_request *req, spool_meta *m)
{
    *m = (spool_meta){.received_at_us = xr_now_us(), .assoc_id = req->assoc->id};
    snprintf(m->calling_ae, sizeof(m->calling_ae), "%s", req->assoc->calling_ae);
    snprintf(m->called_ae, sizeof(m->called_ae), "%s", req->assoc->called_ae);
    snprintf(m->peer_host, sizeof(m->peer_host), "%s", req->assoc->peer_host);
    snprintf(m->sop_class_uid, sizeof(m->sop_class_uid), "%s", req->sop_class_uid);
    snprintf(m->sop_instance_uid, sizeof(m->sop_instance_uid), "%s", req->sop_instance_uid);
    snprintf(m->transfer_syntax_uid, sizeof(m->transfer_syntax_uid), "%s",
             req->transfer_syntax_uid);
}

/* Keep a refused object with its reason; the status goes back to the peer. */
static uint16_t reject(daemon_ctx *ctx, const dicom_store_request *req, const spool_meta *meta,
                       uint16_t status, const char *metric_reason, const char *reason,
                       const char *comment_text, char *comment, size_t comment_bytes)
{
    char id[SPOOL_ID_BYTES];
    xr_error err = XR_ERROR_INIT;
    atomic_fetch_add(&ctx->n_rejected, 1);
    metrics_counter_add(ctx->dm.instances_total, "rejected", metric_reason, 1);
    snprintf(comment, comment_bytes, "%s", comment_text);
    if (spool_reject(ctx->sp, req->path, meta, status, reason, id, &err)) {
        log_error(ASSOC_FMT " C-STORE %s refused (status %04X: %s) and could not be kept: %s",
                  ASSOC_ARGS(req->assoc), req->sop_instance_uid, status, reason, err.msg);
        return status;
    }
    log_warning(ASSOC_FMT " C-STORE %s refused with status %04X: %s; kept as rejected/%s.dcm",
                ASSOC_ARGS(req->assoc), req->sop_instance_uid, status, reason, id);
    return status;
}

static uint16_t on_store(void *userdata, const dicom_store_request *req, char *comment,
                         size_t comment_bytes)
{
    daemon_ctx *ctx = userdata;
    double t0 = xr_mono_s();
    spool_meta meta;
    meta_from_request(req, &meta);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    char reason[XR_ERROR_MSG_BYTES + 128];

    if (dicom_header_read(req->path, &h, &err)) {
        snprintf(reason, sizeof(reason), "data set does not parse: %s", err.msg);
        return reject(ctx, req, &meta, DICOM_STATUS_CANNOT_UNDERSTAND, "unparseable", reason,
                      "data set could not be parsed", comment, comment_bytes);
    }
    const char *missing = !h.sop_instance_uid[0]      ? "SOP Instance UID (0008,0018)"
                          : !h.study_instance_uid[0]  ? "Study Instance UID (0020,000D)"
                          : !h.series_instance_uid[0] ? "Series Instance UID (0020,000E)"
                          : !h.sop_class_uid[0]       ? "SOP Class UID (0008,0016)"
                                                      : NULL;
    if (missing) {
        snprintf(reason, sizeof(reason), "data set lacks %s", missing);
        return reject(ctx, req, &meta, DICOM_STATUS_DATASET_MISMATCH, "missing_uid", reason,
                      reason, comment, comment_bytes);
    }
    if (strcmp(h.sop_instance_uid, req->sop_instance_uid) != 0) {
        snprintf(reason, sizeof(reason),
                 "SOP Instance UID in the data set (%s) differs from the command's (%s)",
                 h.sop_instance_uid, req->sop_instance_uid);
        return reject(ctx, req, &meta, DICOM_STATUS_DATASET_MISMATCH, "uid_mismatch", reason,
                      "SOP Instance UID differs between command and data set", comment,
                      comment_bytes);
    }
    if (strcmp(h.sop_class_uid, req->sop_class_uid) != 0) {
        snprintf(reason, sizeof(reason),
                 "SOP Class UID in the data set (%s) differs from the command's (%s)",
                 h.sop_class_uid, req->sop_class_uid);
        return reject(ctx, req, &meta, DICOM_STATUS_DATASET_MISMATCH, "uid_mismatch", reason,
                      "SOP Class UID differs between command and data set", comment,
                      comment_bytes);
    }

    char id[SPOOL_ID_BYTES];
    xr_code rc = spool_commit(ctx->sp, req->path, req->n_bytes, &meta, id, &err);
    if (rc) {
        atomic_fetch_add(&ctx->n_refused, 1);
        metrics_counter_add(ctx->dm.instances_total, "refused",
                            rc == XR_E_LIMIT ? "spool_full" : "io_error", 1);
        log_warning(ASSOC_FMT " C-STORE %s refused with status A700: %s", ASSOC_ARGS(req->assoc),
                    req->sop_instance_uid, err.msg);
        snprintf(comment, comment_bytes, "%s",
                 rc == XR_E_LIMIT ? "spool full, retry later" : "could not store, retry later");
        return DICOM_STATUS_OUT_OF_RESOURCES;
    }
    atomic_fetch_add(&ctx->n_stored, 1);
    metrics_counter_add(ctx->dm.instances_total, "stored", "", 1);
    metrics_histogram_observe(ctx->dm.stage_seconds, "spool", xr_mono_s() - t0);
    log_info(ASSOC_FMT " stored %s (%s, %" PRIu64 " bytes, %s) as %s", ASSOC_ARGS(req->assoc),
             req->sop_instance_uid,
             dicom_uid_name(req->sop_class_uid) ? dicom_uid_name(req->sop_class_uid)
                                                : req->sop_class_uid,
             req->n_bytes,
             dicom_uid_name(req->transfer_syntax_uid) ? dicom_uid_name(req->transfer_syntax_uid)
                                                      : req->transfer_syntax_uid,
             id);
    return DICOM_STATUS_SUCCESS;
}

static void on_store_failed(void *userdata, const dicom_assoc_info *a,
                            const char *sop_instance_uid, const xr_error *why)
{
    daemon_ctx *ctx = userdata;
    atomic_fetch_add(&ctx->n_refused, 1);
    metrics_counter_add(ctx->dm.instances_total, "refused", "receive_failed", 1);
    log_warning(ASSOC_FMT " C-STORE %s could not be received: %s", ASSOC_ARGS(a),
                sop_instance_uid ? sop_instance_uid : "(unknown)", why->msg);
}

static void *scp_main(void *arg)
{
    daemon_ctx *ctx = arg;
    pthread_setname_np(pthread_self(), "xreg-scp");
    xr_error err = XR_ERROR_INIT;
    if (dicom_scp_run(ctx->scp, &err)) {
        log_error("DICOM service stopped: %s", err.msg);
        /* Without a listener nothing can arrive: ask main to stop so systemd restarts us. */
        kill(getpid(), SIGTERM);
    }
    pthread_mutex_lock(&ctx->scp_lock);
    ctx->scp_done = true;
    pthread_cond_signal(&ctx->scp_cond);
    pthread_mutex_unlock(&ctx->scp_lock);
    return NULL;
}

/* ---- metrics, health and status ------------------------------------------------------------ */

static double gauge_spool_objects(void *userdata)
{
    return (double)spool_depth(((daemon_ctx *)userdata)->sp);
}

static double gauge_spool_bytes(void *userdata)
{
    return (double)spool_bytes(((daemon_ctx *)userdata)->sp);
}

static double gauge_spool_oldest_age(void *userdata)
{
    int64_t oldest = spool_oldest_us(((daemon_ctx *)userdata)->sp);
    return oldest ? (double)(xr_now_us() - oldest) / 1e6 : 0.0;
}

static double gauge_assoc_active(void *userdata)
{
    daemon_ctx *ctx = userdata;
    return ctx->scp ? (double)dicom_scp_active(ctx->scp) : 0.0;
}

static double gauge_start_time(void *userdata)
{
    return (double)((daemon_ctx *)userdata)->started_us / 1e6;
}

static xr_code metrics_setup(daemon_ctx *ctx, xr_error *err)
{
    daemon_metrics *dm = &ctx->dm;
    const double *b = metrics_latency_buckets;
    size_t nb = metrics_n_latency_buckets;
    dm->m = metrics_new();
    if (!dm->m ||
        !(dm->assoc_total = metrics_counter_new(dm->m, "xreg_associations_total",
                                                "DICOM associations accepted", "calling_ae",
                                                NULL)) ||
        !(dm->assoc_rejected = metrics_counter_new(dm->m, "xreg_associations_rejected_total",
                                                   "DICOM associations rejected at negotiation",
                                                   "calling_ae", NULL)) ||
        !metrics_gauge_fn_new(dm->m, "xreg_associations_active",
                              "DICOM associations in progress", gauge_assoc_active, ctx) ||
        !(dm->instances_total = metrics_counter_new(
              dm->m, "xreg_instances_received_total",
              "C-STORE requests by outcome (stored, rejected: kept in rejected/, refused: A700) "
              "and reason",
              "outcome", "reason")) ||
        !(dm->registered_total = metrics_counter_new(
              dm->m, "xreg_instances_registered_total",
              "Spooled objects written to the registry (new, or already known)", "result",
              NULL)) ||
        !(dm->failed_total = metrics_counter_new(
              dm->m, "xreg_instances_set_aside_total",
              "Acknowledged objects moved to rejected/ by the pipeline", "reason", NULL)) ||
        !metrics_gauge_fn_new(dm->m, "xreg_spool_objects", "Objects waiting in the spool queue",
                              gauge_spool_objects, ctx) ||
        !metrics_gauge_fn_new(dm->m, "xreg_spool_bytes", "Bytes of objects waiting in the spool",
                              gauge_spool_bytes, ctx) ||
        !metrics_gauge_fn_new(dm->m, "xreg_spool_oldest_age_seconds",
                              "Age of the oldest object waiting in the spool",
                              gauge_spool_oldest_age, ctx) ||
        !(dm->stage_seconds = metrics_histogram_new(
              dm->m, "xreg_stage_seconds",
              "Latency per pipeline stage (spool: parse+fsync+rename on the association; parse "
              "and register: in the workers)",
              "stage", b, nb)) ||
        !(dm->inference_seconds = metrics_histogram_new(
              dm->m, "xreg_inference_seconds",
              "Latency of one batch run per model (see xreg_inferences_total for images)", "model",
              b, nb)) ||
        !(dm->inferences_total = metrics_counter_new(dm->m, "xreg_inferences_total",
                                                     "Images classified per model", "model",
                                                     NULL)) ||
        !(dm->classify_failures_total = metrics_counter_new(
              dm->m, "xreg_classify_failures_total",
              "Objects registered without (some) classification, by reason and task (all: no "
              "model could run)",
              "reason", "task")) ||
        !(dm->db_errors_total = metrics_counter_new(dm->m, "xreg_db_errors_total",
                                                    "Registry errors by kind", "kind", NULL)) ||
        !(dm->db_retries_total = metrics_counter_new(
              dm->m, "xreg_db_retries_total", "Registry operations retried after an error",
              NULL, NULL)) ||
        !metrics_gauge_fn_new(dm->m, "xreg_start_time_seconds",
                              "Unix time xregd started", gauge_start_time, ctx))
        return xr_error_set(err, XR_E_NOMEM, "out of memory creating metrics");
    return XR_OK;
}

static bool ready_check(void *userdata, char *why, size_t n)
{
    daemon_ctx *ctx = userdata;
    if (!atomic_load(&ctx->ready)) {
        snprintf(why, n, "starting or stopping");
        return false;
    }
    pipeline_stats st;
    pipeline_get_stats(ctx->pl, &st);
    /* The workers' view lags while idle: ask the server itself (no login, at most 2 s). */
    if (!registry_ping(ctx->conninfo, 2)) {
        snprintf(why, n, "registry database unreachable%s%s", st.last_error[0] ? ": " : "",
                 st.last_error);
        return false;
    }
    uint64_t bytes = spool_bytes(ctx->sp), max = (uint64_t)ctx->cfg->spool.max_bytes;
    if (bytes >= max) {
        snprintf(why, n, "spool full: %" PRIu64 " of %" PRIu64 " bytes", bytes, max);
        return false;
    }
    /* Models are loaded before READY=1 and a failed reload keeps the running ones: nothing to
     * check here. */
    return true;
}

/* The one-screen status, as text or JSON (malloc'ed). */
static char *status_render(daemon_ctx *ctx, bool json)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return NULL;
    pipeline_stats st;
    pipeline_get_stats(ctx->pl, &st);
    int64_t now = xr_now_us();
    int64_t uptime_s = (now - ctx->started_us) / 1000000;
    int64_t oldest = spool_oldest_us(ctx->sp);
    double oldest_age = oldest ? (double)(now - oldest) / 1e6 : 0.0;
    char why[256] = "";
    bool ready = ready_check(ctx, why, sizeof(why));
    const xregd_config *c = ctx->cfg;
    char recent[5][LOG_RECENT_LINE_BYTES];
    size_t n_recent = log_recent(recent, 5);
    if (json) {
        fprintf(f, "{\"version\":\"%s\",\"pid\":%ld,\"uptime_s\":%" PRId64 ",\"ready\":%s,",
                XREG_VERSION, (long)getpid(), uptime_s, ready ? "true" : "false");
        fprintf(f, "\"not_ready_reason\":");
        xr_json_write_str(f, why);
        fprintf(f, ",\"dicom\":{\"ae_title\":");
        xr_json_write_str(f, c->dicom.ae_title);
        fprintf(f, ",\"port\":%" PRId64 ",\"associations_active\":%u},", c->dicom.port,
                ctx->scp ? dicom_scp_active(ctx->scp) : 0);
        fprintf(f,
                "\"instances\":{\"stored\":%" PRIu64 ",\"rejected\":%" PRIu64
                ",\"refused\":%" PRIu64 ",\"registered\":%" PRIu64 ",\"set_aside\":%" PRIu64 "},",
                atomic_load(&ctx->n_stored), atomic_load(&ctx->n_rejected),
                atomic_load(&ctx->n_refused), st.n_registered, st.n_set_aside);
        fprintf(f, "\"spool\":{\"dir\":");
        xr_json_write_str(f, spool_dir(ctx->sp));
        fprintf(f,
                ",\"objects\":%zu,\"bytes\":%" PRIu64 ",\"max_bytes\":%" PRId64
                ",\"oldest_age_s\":%.1f},",
                spool_depth(ctx->sp), spool_bytes(ctx->sp), c->spool.max_bytes, oldest_age);
        fprintf(f, "\"database\":{\"reachable\":%s,\"retries\":%" PRIu64 ",\"embedded\":%s},",
                st.db_ok ? "true" : "false", st.n_retries,
                c->database.conninfo[0] ? "false" : "true");
        fprintf(f, "\"classified\":%" PRIu64 ",\"unclassified\":%" PRIu64 ",\"models\":[",
                st.n_classified, st.n_unclassified);
        model_set *ms = ctx->pl ? pipeline_models(ctx->pl) : NULL;
        bool first = true;
        for (int t = 0; ms && t < CLASSIFIER_TASK_MAX; t++) {
            const model_slot *sl = &ms->slot[t];
            if (!sl->c)
                continue;
            const classifier_meta *mm = sl->meta;
            fprintf(f, "%s{\"task\":\"%s\",\"name\":", first ? "" : ",",
                    classifier_task_name(mm->task));
            first = false;
            xr_json_write_str(f, mm->name);
            fprintf(f, ",\"version\":");
            xr_json_write_str(f, mm->version);
            fprintf(f, ",\"sha256\":\"%s\",\"path\":", mm->sha256);
            xr_json_write_str(f, sl->path);
            fprintf(f, ",\"placeholder\":%s,\"placeholder_reason\":",
                    mm->placeholder ? "true" : "false");
            xr_json_write_str(f, mm->placeholder ? mm->placeholder : "");
            if (mm->task != CLASSIFIER_TASK_BODY_PART)
                fprintf(f, ",\"threshold\":%.6g", sl->threshold);
            fprintf(f, ",\"generation\":%" PRIu64 "}", ms->generation);
        }
        ms = model_set_unref(ms);
        fprintf(f, "],\"last_error\":");
        xr_json_write_str(f, st.last_error);
        fprintf(f, ",\"last_error_at_us\":%" PRId64 ",\"recent_problems\":[", st.last_error_at_us);
        for (size_t i = 0; i < n_recent; i++) {
            fprintf(f, i ? "," : "");
            xr_json_write_str(f, recent[i]);
        }
        fprintf(f, "]}\n");
    } else {
        fprintf(f, "xregd %s  pid %ld  up %" PRId64 "d %02" PRId64 ":%02" PRId64 ":%02" PRId64
                   "  %s%s%s\n",
                XREG_VERSION, (long)getpid(), uptime_s / 86400, uptime_s / 3600 % 24,
                uptime_s / 60 % 60, uptime_s % 60, ready ? "ready" : "NOT READY",
                ready ? "" : ": ", why);
        fprintf(f, "dicom     AE \"%s\" port %" PRId64 ", %u associations active\n",
                c->dicom.ae_title, c->dicom.port, ctx->scp ? dicom_scp_active(ctx->scp) : 0);
        fprintf(f,
                "received  %" PRIu64 " stored, %" PRIu64 " rejected (kept), %" PRIu64
                " refused (A700)\n",
                atomic_load(&ctx->n_stored), atomic_load(&ctx->n_rejected),
                atomic_load(&ctx->n_refused));
        fprintf(f, "registry  %" PRIu64 " registered, %" PRIu64 " set aside; database %s%s\n",
                st.n_registered, st.n_set_aside, st.db_ok ? "reachable" : "UNREACHABLE",
                c->database.conninfo[0] ? "" : " (embedded cluster)");
        fprintf(f,
                "spool     %zu objects, %" PRIu64 " of %" PRId64
                " bytes, oldest waiting %.1f s (\"%s\")\n",
                spool_depth(ctx->sp), spool_bytes(ctx->sp), c->spool.max_bytes, oldest_age,
                spool_dir(ctx->sp));
        model_set *ms = ctx->pl ? pipeline_models(ctx->pl) : NULL;
        if (!ms || !ms->n_loaded)
            fprintf(f, "models    none configured: objects are registered without classification\n");
        else
            fprintf(f, "models    %" PRIu64 " classified, %" PRIu64 " registered unclassified\n",
                    st.n_classified, st.n_unclassified);
        for (int t = 0; ms && t < CLASSIFIER_TASK_MAX; t++) {
            const model_slot *sl = &ms->slot[t];
            if (!sl->c)
                continue;
            const classifier_meta *mm = sl->meta;
            fprintf(f, "  %-9s \"%s\" version %s, sha256 %.12s%s%s\n",
                    classifier_task_name(mm->task), mm->name, mm->version, mm->sha256,
                    mm->placeholder ? ", PLACEHOLDER: " : "",
                    mm->placeholder ? mm->placeholder : "");
        }
        ms = model_set_unref(ms);
        fprintf(f, "problems  %s\n", n_recent ? "most recent warnings and errors:" : "none logged");
        for (size_t i = 0; i < n_recent; i++)
            fprintf(f, "  %s\n", recent[i]);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static char *status_json(void *userdata)
{
    return status_render(userdata, true);
}

static char *status_text(void *userdata)
{
    return status_render(userdata, false);
}

/* ---- reload, notify, main loop ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: xregd [-c PATH]\n"
            "Receive X-ray studies over DICOM and register them in PostgreSQL.\n\n"
            "  -c, --config PATH  configuration file (default %s/xregd.yaml)\n"
            "      --version      print the version and exit\n"
            "  -h, --help         print this help and exit\n",
            XREG_SYSCONFDIR);
}

static void log_non_reloadable(void *userdata, const char *path)
{
    (void)userdata;
    log_warning("reload: \"%s\" changed but needs a restart; keeping the running value", path);
}

static void reload(daemon_ctx *ctx);

/* Log what each task will run with; a task without a model says so. */
static void log_models(const model_set *ms, const xregd_config *cfg, const char *when)
{
    static const char *keys[] = {"models.body_part.path", "models.implant.path",
                                 "models.fracture.path"};
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++) {
        const model_slot *sl = &ms->slot[t];
        char what[1024];
        if (!sl->c) {
            log_notice("%s: %s is empty: %s classification is off", when, keys[t],
                       classifier_task_name((classifier_task)t));
            continue;
        }
        model_slot_describe(sl, what, sizeof(what));
        log_notice("%s: %s model %s, loaded and warmed up in %.2f s%s%s", when,
                   classifier_task_name((classifier_task)t), what, sl->load_seconds,
                   t == CLASSIFIER_TASK_FRACTURE ? "; runs on body parts " : "",
                   t == CLASSIFIER_TASK_FRACTURE ? cfg->models.fracture.body_parts : "");
        if (sl->meta->placeholder)
            log_warning("%s: the %s model is a placeholder and must not be trusted: %s", when,
                        classifier_task_name((classifier_task)t), sl->meta->placeholder);
    }
}

static void *reload_main(void *arg)
{
    daemon_ctx *ctx = arg;
    pthread_setname_np(pthread_self(), "xreg-reload");
    double t0 = xr_mono_s();
    ctx->reload_result = NULL;
    ctx->reload_err = (xr_error)XR_ERROR_INIT;
    /* batch and threads are not reloadable: the running pipeline's values */
    if (model_set_load(ctx->reload_cfg, (uint32_t)ctx->cfg->pipeline.batch_max,
                       (int)ctx->cfg->pipeline.threads_per_worker, &ctx->reload_result,
                       &ctx->reload_err))
        ctx->reload_result = NULL;
    ctx->reload_seconds = xr_mono_s() - t0;
    uint64_t one = 1;
    if (write(ctx->reload_efd, &one, sizeof(one)) < 0)
        log_error("reload: could not wake the main loop: %m");
    return NULL;
}

/* The model loader finished (main thread): swap the set in, or keep the running one. */
static void reload_models_done(daemon_ctx *ctx)
{
    uint64_t v;
    if (read(ctx->reload_efd, &v, sizeof(v)) < 0)
        return;
    if (!ctx->reload_running)
        return;
    pthread_join(ctx->reload_thread, NULL);
    ctx->reload_running = false;
    bool ok = ctx->reload_result != NULL;
    if (ok) {
        log_models(ctx->reload_result, ctx->reload_cfg, "reload");
        /* Workers finish their current batch with the old set, then take this one. */
        pipeline_set_models(ctx->pl, ctx->reload_result);
        ctx->reload_result = model_set_unref(ctx->reload_result);
        log_notice("reload: model set swapped in (%.2f s to load and warm up)",
                   ctx->reload_seconds);
    } else {
        log_error("reload: %s; keeping the running models", ctx->reload_err.msg);
        if (ctx->reload_err.detail[0])
            log_error("reload: %s", ctx->reload_err.detail);
    }
    ctx->reload_cfg = config_free(ctx->reload_cfg);
    if (ctx->reload_pending) {
        ctx->reload_pending = false;
        log_notice("reload: another SIGHUP arrived while loading; reloading again");
        reload(ctx);
        return;
    }
    log_notice("configuration reloaded from \"%s\"", ctx->cfg->path);
    sd_notifyf(0, "READY=1\nSTATUS=running%s",
               ok ? "" : "; model reload failed, running on the previous models");
}

static void reload(daemon_ctx *ctx)
{
    if (ctx->reload_running) {
        ctx->reload_pending = true;
        log_notice("SIGHUP while models are loading: will reload again when done");
        return;
    }
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%" PRId64 "\nSTATUS=reloading", xr_mono_us());
    xregd_config *ncfg;
    xr_error err = XR_ERROR_INIT;
    if (config_load(ctx->cfg->path, &ncfg, &err)) {
        log_error("reload failed, keeping the running configuration: %s", err.msg);
        sd_notify(0, "READY=1\nSTATUS=reload failed, running on the previous configuration");
        return;
    }
    config_diff_non_reloadable(ctx->cfg, ncfg, log_non_reloadable, NULL);
    xr_log_level level = XR_LOG_INFO;
    (void)xr_log_level_from_string(ncfg->log.level, &level);
    xr_log_set_level(level);
    spool_set_max_bytes(ctx->sp, (uint64_t)ncfg->spool.max_bytes);
    pipeline_set_retry(ctx->pl, ncfg->database.retry_initial_ms, ncfg->database.retry_max_ms);
    atomic_store(&ctx->stop_timeout_s, ncfg->dicom.stop_timeout_s);
    /*
     * Keep the running values of non-reloadable keys in what we hold. Other threads read only
     * the integers (spool.max_bytes in ready_check), never the swapped string.
     */
    char *old_level = ctx->cfg->log.level;
    ctx->cfg->log.level = ncfg->log.level;
    ncfg->log.level = old_level;
    ctx->cfg->spool.max_bytes = ncfg->spool.max_bytes;
    ctx->cfg->database.retry_initial_ms = ncfg->database.retry_initial_ms;
    ctx->cfg->database.retry_max_ms = ncfg->database.retry_max_ms;
    ctx->cfg->dicom.stop_timeout_s = ncfg->dicom.stop_timeout_s;
    ctx->cfg->pipeline.batch_wait_ms = ncfg->pipeline.batch_wait_ms;
    pipeline_set_batch_wait(ctx->pl, ncfg->pipeline.batch_wait_ms);
    dicom_pixel_limits lim = {
        .max_rows = (uint32_t)ncfg->pixels.max_rows,
        .max_columns = (uint32_t)ncfg->pixels.max_columns,
        .max_frames = (uint32_t)ncfg->pixels.max_frames,
        .max_decoded_bytes = (uint64_t)ncfg->pixels.max_decoded_bytes,
    };
    pipeline_set_pixels(ctx->pl, &lim,
                        (dicom_frame_policy)dicom_frame_policy_from_string(ncfg->pixels.frames));
    /* Models are loaded, validated and warmed up by a thread; the loop keeps serving signals,
     * the watchdog and status meanwhile, and READY=1 follows once the set is swapped in (or
     * refused). */
    ctx->reload_cfg = ncfg;
    sd_notify(0, "STATUS=reloading models");
    if ((errno = pthread_create(&ctx->reload_thread, NULL, reload_main, ctx))) {
        log_error("reload: could not start the model loader: %m; keeping the running models");
        ctx->reload_cfg = config_free(ctx->reload_cfg);
        log_notice("configuration reloaded from \"%s\"", ctx->cfg->path);
        sd_notify(0, "READY=1\nSTATUS=running; model reload failed");
        return;
    }
    ctx->reload_running = true;
}

/* Periodic work: STATUS= for systemctl status, WATCHDOG=1 while the pipeline moves. */
static void tick(daemon_ctx *ctx, uint64_t watchdog_usec)
{
    pipeline_stats st;
    pipeline_get_stats(ctx->pl, &st);
    sd_notifyf(0, "STATUS=%u associations, %zu queued, %" PRIu64 " registered, database %s%s%s",
               ctx->scp ? dicom_scp_active(ctx->scp) : 0, spool_depth(ctx->sp), st.n_registered,
               st.db_ok ? "ok" : "unreachable", st.last_error[0] ? "; last error: " : "",
               st.last_error);
    if (!watchdog_usec)
        return;
    /* A worker busy with one object for a whole watchdog period is stuck. */
    int64_t stall_ms = (int64_t)(watchdog_usec / 1000);
    if (pipeline_is_progressing(ctx->pl, stall_ms))
        sd_notify(0, "WATCHDOG=1");
    else
        log_error("pipeline stalled for over %" PRId64 " ms; withholding the watchdog ping",
                  stall_ms);
}

/* Stop accepting and wait for associations in flight, at most stop_timeout_s. */
static void stop_scp(daemon_ctx *ctx, pthread_t thread)
{
    dicom_scp_stop(ctx->scp);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += atomic_load(&ctx->stop_timeout_s);
    pthread_mutex_lock(&ctx->scp_lock);
    int e = 0;
    while (!ctx->scp_done && e != ETIMEDOUT)
        e = pthread_cond_timedwait(&ctx->scp_cond, &ctx->scp_lock, &deadline);
    bool done = ctx->scp_done;
    pthread_mutex_unlock(&ctx->scp_lock);
    if (done) {
        pthread_join(thread, NULL);
        ctx->scp = dicom_scp_free(ctx->scp);
        return;
    }
    /* Their objects were never acknowledged: the senders will retry. The process exits with
     * the threads still blocked in DCMTK; nothing durable depends on them. */
    log_warning("%u associations still open after dicom.stop_timeout_s (%" PRId64
                " s); exiting without them",
                dicom_scp_active(ctx->scp), atomic_load(&ctx->stop_timeout_s));
    pthread_detach(thread);
    ctx->scp = NULL; /* leaked on purpose: its threads may still use it */
}

int main(int argc, char **argv)
{
    const char *config_path = XREG_SYSCONFDIR "/xregd.yaml";
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            break;
        case 'V':
            printf("xregd %s\n", XREG_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "xregd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    int exit_code = 1;
    daemon_ctx ctx = {.started_us = xr_now_us()};
    pthread_mutex_init(&ctx.scp_lock, NULL);
    pthread_cond_init(&ctx.scp_cond, NULL);
    pgembed *pg = NULL;
    http_server *http = NULL;
    char *conninfo = NULL;
    xr_error err = XR_ERROR_INIT;
    pthread_t scp_thread;
    bool scp_started = false;
    bool scp_leaked = false;
    int sfd = -1, tfd = -1, efd = -1;
    pseudonymizer *pseudo = NULL;
    model_set *models = NULL;
    ctx.reload_efd = -1;

    log_setup(XR_LOG_INFO);
    if (config_load(config_path, &ctx.cfg, &err)) {
        log_error("%s", err.msg);
        return 1;
    }
    xr_log_level level = XR_LOG_INFO;
    (void)xr_log_level_from_string(ctx.cfg->log.level, &level);
    xr_log_set_level(level);
    atomic_store(&ctx.stop_timeout_s, ctx.cfg->dicom.stop_timeout_s);
    log_notice("xregd %s starting with \"%s\"", XREG_VERSION, ctx.cfg->path);

    /* Block the signals main handles before any thread starts (OpenMP
     * starts its pool when the first model loads), so every thread inherits the mask. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* DCMTK leaves Nagle on unless this is set; small objects then stall on delayed ACKs. */
    setenv("TCP_NODELAY", "1", 1);
    if (dicom_global_init(&err) || metrics_setup(&ctx, &err)) {
        log_error("%s", err.msg);
        goto out;
    }
    if (pseudonymizer_new(ctx.cfg, &pseudo, &err)) {
        log_error("%s", err.msg);
        if (err.detail[0])
            log_error("%s", err.detail);
        goto out;
    }
    if (pseudonymizer_is_active(pseudo)) {
        char what[200];
        pseudonymizer_describe(pseudo, what, sizeof(what));
        log_notice("pseudonymizing before registration: %s", what);
    }

    /* Models before anything listens: a model that does not load is a start-up error naming
     * the file, and READY=1 means every configured model answered a warm-up run. */
    {
        unsigned n_cpus = 0;
        cpu_set_t cpus;
        if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0)
            n_cpus = (unsigned)CPU_COUNT(&cpus);
        int64_t want = ctx.cfg->pipeline.workers * ctx.cfg->pipeline.threads_per_worker;
        /* A warning, not a refusal: the count may be right for a cgroup quota we cannot see,
         * and oversubscription only costs speed. */
        if (n_cpus && want > (int64_t)n_cpus)
            log_warning("pipeline.workers (%" PRId64 ") x pipeline.threads_per_worker (%" PRId64
                        ") = %" PRId64 " threads for %u CPUs: inference will contend for cores",
                        ctx.cfg->pipeline.workers, ctx.cfg->pipeline.threads_per_worker, want,
                        n_cpus);
        sd_notify(0, "STATUS=loading models");
        if (model_set_load(ctx.cfg, (uint32_t)ctx.cfg->pipeline.batch_max,
                           (int)ctx.cfg->pipeline.threads_per_worker, &models, &err)) {
            log_error("%s", err.msg);
            if (err.detail[0])
                log_error("%s", err.detail);
            goto out;
        }
        log_models(models, ctx.cfg, "start");
    }

    sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    efd = epoll_create1(EPOLL_CLOEXEC);
    ctx.reload_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (sfd < 0 || tfd < 0 || efd < 0 || ctx.reload_efd < 0) {
        log_error("could not set up the event loop: %m");
        goto out;
    }

    if (xr_fs_mkdir_p(ctx.cfg->state_dir, 0750, &err) ||
        spool_open(ctx.cfg->spool.dir, (uint64_t)ctx.cfg->spool.max_bytes, &ctx.sp, &err)) {
        log_error("spool: %s", err.msg);
        goto out;
    }

    if (ctx.cfg->database.conninfo[0] == '\0') {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s/postgresql", ctx.cfg->state_dir);
        sd_notify(0, "STATUS=starting the embedded PostgreSQL");
        if (pgembed_start(dir, ctx.cfg->database.embedded_user, &pg, &conninfo, &err)) {
            log_error("embedded PostgreSQL: %s", err.msg);
            if (err.detail[0])
                log_error("%s", err.detail);
            goto out;
        }
    } else if (!(conninfo = strdup(ctx.cfg->database.conninfo))) {
        log_error("out of memory");
        goto out;
    }

    /*
     * Migrate now when the database is there. If it is down, reception still starts (READY=1,
     * with a STATUS= saying so, and /readyz answering 503) and the workers migrate once it is
     * back: refusing studies because the registry is briefly away would push the backlog onto
     * the PACS. A changed released migration is fatal.
     */
    bool migrated = false;
    {
        registry *reg = NULL;
        xr_code rc = registry_open(conninfo, "xregd", &reg, &err);
        unsigned applied = 0;
        if (rc == XR_OK)
            rc = pipeline_migrate(reg, &applied, &err);
        reg = registry_close(reg);
        if (rc == XR_OK) {
            migrated = true;
            log_info("registry schema up to date (%u migrations applied now)", applied);
        } else if (rc == XR_E_TRANSIENT) {
            log_warning("registry unreachable at start (%s); receiving into the spool and "
                        "retrying",
                        err.msg);
        } else {
            log_error("registry: %s", err.msg);
            if (err.detail[0])
                log_error("%s", err.detail);
            goto out;
        }
    }

    ctx.conninfo = conninfo;
    pipeline_params pp = {
        .sp = ctx.sp,
        .conninfo = conninfo,
        .n_workers = (unsigned)ctx.cfg->pipeline.workers,
        .retry_initial_ms = ctx.cfg->database.retry_initial_ms,
        .retry_max_ms = ctx.cfg->database.retry_max_ms,
        .migrated = migrated,
        .pseudo = pseudo,
        .stage_seconds = ctx.dm.stage_seconds,
        .registered_total = ctx.dm.registered_total,
        .failed_total = ctx.dm.failed_total,
        .db_errors_total = ctx.dm.db_errors_total,
        .db_retries_total = ctx.dm.db_retries_total,
        .inference_seconds = ctx.dm.inference_seconds,
        .inferences_total = ctx.dm.inferences_total,
        .classify_failures_total = ctx.dm.classify_failures_total,
        .models = models,
        .threads_per_worker = (unsigned)ctx.cfg->pipeline.threads_per_worker,
        .batch_max = (unsigned)ctx.cfg->pipeline.batch_max,
        .batch_wait_ms = ctx.cfg->pipeline.batch_wait_ms,
        .pixel_limits = {.max_rows = (uint32_t)ctx.cfg->pixels.max_rows,
                         .max_columns = (uint32_t)ctx.cfg->pixels.max_columns,
                         .max_frames = (uint32_t)ctx.cfg->pixels.max_frames,
                         .max_decoded_bytes = (uint64_t)ctx.cfg->pixels.max_decoded_bytes},
        .frame_policy = (dicom_frame_policy)dicom_frame_policy_from_string(ctx.cfg->pixels.frames),
    };
    if (pipeline_start(&pp, &ctx.pl, &err)) {
        log_error("%s", err.msg);
        goto out;
    }
    models = model_set_unref(models); /* the pipeline holds its own reference */

    if (ctx.cfg->metrics.port) {
        http_server_params hp = {
            .bind_address = ctx.cfg->metrics.bind,
            .port = (uint16_t)ctx.cfg->metrics.port,
            .m = ctx.dm.m,
            .ready = ready_check,
            .status = status_json,
            .status_text = status_text,
            .userdata = &ctx,
        };
        if (http_server_start(&hp, &http, &err)) {
            log_error("%s", err.msg);
            goto stop;
        }
    }

    dicom_scp_params sp = dicom_scp_params_default();
    sp.ae_title = ctx.cfg->dicom.ae_title;
    sp.bind_address = ctx.cfg->dicom.bind;
    sp.port = (uint16_t)ctx.cfg->dicom.port;
    sp.max_associations = (unsigned)ctx.cfg->dicom.max_associations;
    sp.max_pdu_bytes = (uint32_t)ctx.cfg->dicom.max_pdu_bytes;
    sp.acse_timeout_s = (unsigned)ctx.cfg->dicom.acse_timeout_s;
    sp.dimse_timeout_s = (unsigned)ctx.cfg->dicom.dimse_timeout_s;
    sp.max_object_bytes = (uint64_t)ctx.cfg->dicom.max_object_bytes;
    sp.tmp_dir = spool_tmp_dir(ctx.sp);
    sp.on_store = on_store;
    sp.on_store_failed = on_store_failed;
    sp.on_assoc = on_assoc;
    sp.userdata = &ctx;
    if (dicom_scp_open(&sp, &ctx.scp, &err)) {
        log_error("%s", err.msg);
        goto stop;
    }
    if ((errno = pthread_create(&scp_thread, NULL, scp_main, &ctx))) {
        log_error("could not start the DICOM listener thread: %m");
        goto stop;
    }
    scp_started = true;

    /* Watchdog: ping at half the interval systemd expects; STATUS= every 5 s otherwise. */
    uint64_t watchdog_usec = 0;
    if (sd_watchdog_enabled(0, &watchdog_usec) <= 0)
        watchdog_usec = 0;
    uint64_t period_us = watchdog_usec ? watchdog_usec / 2 : 5000000;
    if (period_us > 5000000)
        period_us = 5000000;
    struct itimerspec its = {
        .it_interval = {.tv_sec = (time_t)(period_us / 1000000),
                        .tv_nsec = (long)(period_us % 1000000) * 1000},
    };
    its.it_value = its.it_interval;
    struct epoll_event ev_sig = {.events = EPOLLIN, .data.fd = sfd};
    struct epoll_event ev_tim = {.events = EPOLLIN, .data.fd = tfd};
    struct epoll_event ev_rel = {.events = EPOLLIN, .data.fd = ctx.reload_efd};
    if (timerfd_settime(tfd, 0, &its, NULL) < 0 || epoll_ctl(efd, EPOLL_CTL_ADD, sfd, &ev_sig) < 0 ||
        epoll_ctl(efd, EPOLL_CTL_ADD, tfd, &ev_tim) < 0 ||
        epoll_ctl(efd, EPOLL_CTL_ADD, ctx.reload_efd, &ev_rel) < 0) {
        log_error("could not set up the event loop: %m");
        goto stop;
    }

    atomic_store(&ctx.ready, true);
    log_notice("ready: AE \"%s\" listening on %s:%" PRId64 ", spool \"%s\", %" PRId64
               " workers%s",
               ctx.cfg->dicom.ae_title, ctx.cfg->dicom.bind[0] ? ctx.cfg->dicom.bind : "*",
               ctx.cfg->dicom.port, ctx.cfg->spool.dir, ctx.cfg->pipeline.workers,
               watchdog_usec ? ", watchdog on" : "");
    sd_notifyf(0, "READY=1\nSTATUS=listening as \"%s\" on port %" PRId64 "%s",
               ctx.cfg->dicom.ae_title, ctx.cfg->dicom.port,
               migrated ? "" : "; registry unreachable, spooling");
    if (watchdog_usec)
        sd_notify(0, "WATCHDOG=1");

    for (bool running = true; running;) {
        struct epoll_event evs[3];
        int n = epoll_wait(efd, evs, 3, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            log_error("epoll_wait: %m");
            break;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == ctx.reload_efd) {
                reload_models_done(&ctx);
                continue;
            }
            if (evs[i].data.fd == tfd) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof(expirations)) > 0)
                    tick(&ctx, watchdog_usec);
                continue;
            }
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof(si)) != (ssize_t)sizeof(si))
                continue;
            if (si.ssi_signo == SIGHUP) {
                log_notice("SIGHUP: reloading \"%s\"", ctx.cfg->path);
                reload(&ctx);
                continue;
            }
            log_notice("%s: stopping (waiting for %u associations in flight, at most %" PRId64
                       " s)",
                       strsignal((int)si.ssi_signo), dicom_scp_active(ctx.scp),
                       atomic_load(&ctx.stop_timeout_s));
            running = false;
        }
    }
    exit_code = 0;

stop:
    atomic_store(&ctx.ready, false);
    if (ctx.reload_running) { /* a model load in progress: let it finish, drop its result */
        pthread_join(ctx.reload_thread, NULL);
        ctx.reload_running = false;
        ctx.reload_result = model_set_unref(ctx.reload_result);
        ctx.reload_cfg = config_free(ctx.reload_cfg);
    }
    sd_notify(0, "STOPPING=1\nSTATUS=stopping");
    if (scp_started) {
        stop_scp(&ctx, scp_thread);
        scp_leaked = ctx.scp != NULL;
    } else
        ctx.scp = dicom_scp_free(ctx.scp);
    if (ctx.sp)
        spool_shutdown(ctx.sp);
    http = http_server_stop(http);
    ctx.pl = pipeline_stop(ctx.pl);
    if (ctx.sp)
        log_notice("stopped: %" PRIu64 " stored, %" PRIu64 " rejected, %" PRIu64
                   " refused; %zu objects left in the spool for the next start",
                   atomic_load(&ctx.n_stored), atomic_load(&ctx.n_rejected),
                   atomic_load(&ctx.n_refused), spool_depth(ctx.sp));
out:
    pg = pgembed_stop(pg);
    free(conninfo);
    pseudo = pseudonymizer_free(pseudo); /* the workers that used it are joined */
    models = model_set_unref(models);    /* the pipeline dropped its own reference */
    /* Association threads left behind by the stop timeout may still touch these: the process
     * exit ends them instead. */
    if (scp_leaked)
        return exit_code;
    ctx.sp = spool_close(ctx.sp);
    ctx.dm.m = metrics_free(ctx.dm.m);
    ctx.cfg = config_free(ctx.cfg);
    const int fds[] = {sfd, tfd, efd, ctx.reload_efd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    dicom_global_done();
    return exit_code;
}
