/*
 * xregd: the xreg daemon. DICOM storage SCP -> durable spool -> pipeline workers -> registry.
 *
 * DESIGN (threads)
 * - main: loads the configuration, recovers the spool, migrates, starts the others, then waits
 *   on a signalfd: SIGHUP reloads, SIGTERM/SIGINT stop. Signal work happens here, not in
 *   handlers.
 * - "xreg-scp": dicom_scp_run; DCMTK runs one thread per association. Association threads only
 *   receive, fsync into the spool and acknowledge (on_store below); they never decode or touch
 *   the database.
 * - "xreg-worker-N": pipeline workers (pipeline.h).
 * Stop order: stop accepting, wait for associations in flight, wake the workers (each finishes
 * its current object), join, stop the embedded PostgreSQL if we started it.
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
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dicom.h"
#include "log.h"
#include "pgembed.h"
#include "pipeline.h"
#include "registry.h"
#include "spool.h"
#include "xr-config.h"
#include "xr-fs.h"

typedef struct daemon_ctx {
    spool *sp;
    dicom_scp *scp;
    pipeline *pl;
    xregd_config *cfg;
    _Atomic uint64_t n_stored;
    _Atomic uint64_t n_rejected;
    _Atomic uint64_t n_refused; /* A700 */
} daemon_ctx;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#define ASSOC_FMT "[assoc %" PRIu64 " \"%s\"@%s]"
#define ASSOC_ARGS(a) (a)->id, (a)->calling_ae, (a)->peer_host

static void on_assoc(void *userdata, const dicom_assoc_info *a, dicom_assoc_event ev,
                     const char *text)
{
    (void)userdata;
    switch (ev) {
    case DICOM_ASSOC_ACCEPTED:
        log_info(ASSOC_FMT " association accepted (called \"%s\"%s%s)", ASSOC_ARGS(a),
                 a->called_ae, text ? ", " : "", text ? text : "");
        break;
    case DICOM_ASSOC_REJECTED:
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
    *m = (spool_meta){.received_at_us = now_us(), .assoc_id = req->assoc->id};
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
                       uint16_t status, const char *reason, const char *comment_text,
                       char *comment, size_t comment_bytes)
{
    char id[SPOOL_ID_BYTES];
    xr_error err = XR_ERROR_INIT;
    atomic_fetch_add(&ctx->n_rejected, 1);
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
    spool_meta meta;
    meta_from_request(req, &meta);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    char reason[XR_ERROR_MSG_BYTES + 128];

    if (dicom_header_read(req->path, &h, &err)) {
        snprintf(reason, sizeof(reason), "data set does not parse: %s", err.msg);
        return reject(ctx, req, &meta, DICOM_STATUS_CANNOT_UNDERSTAND, reason,
                      "data set could not be parsed", comment, comment_bytes);
    }
    const char *missing = !h.sop_instance_uid[0]      ? "SOP Instance UID (0008,0018)"
                          : !h.study_instance_uid[0]  ? "Study Instance UID (0020,000D)"
                          : !h.series_instance_uid[0] ? "Series Instance UID (0020,000E)"
                          : !h.sop_class_uid[0]       ? "SOP Class UID (0008,0016)"
                                                      : NULL;
    if (missing) {
        snprintf(reason, sizeof(reason), "data set lacks %s", missing);
        return reject(ctx, req, &meta, DICOM_STATUS_DATASET_MISMATCH, reason, reason, comment,
                      comment_bytes);
    }
    if (strcmp(h.sop_instance_uid, req->sop_instance_uid) != 0) {
        snprintf(reason, sizeof(reason),
                 "SOP Instance UID in the data set (%s) differs from the command's (%s)",
                 h.sop_instance_uid, req->sop_instance_uid);
        return reject(ctx, req, &meta, DICOM_STATUS_DATASET_MISMATCH, reason,
                      "SOP Instance UID differs between command and data set", comment,
                      comment_bytes);
    }
    if (strcmp(h.sop_class_uid, req->sop_class_uid) != 0) {
        snprintf(reason, sizeof(reason),
                 "SOP Class UID in the data set (%s) differs from the command's (%s)",
                 h.sop_class_uid, req->sop_class_uid);
        return reject(ctx, req, &meta, DICOM_STATUS_DATASET_MISMATCH, reason,
                      "SOP Class UID differs between command and data set", comment,
                      comment_bytes);
    }

    char id[SPOOL_ID_BYTES];
    xr_code rc = spool_commit(ctx->sp, req->path, req->n_bytes, &meta, id, &err);
    if (rc) {
        atomic_fetch_add(&ctx->n_refused, 1);
        log_warning(ASSOC_FMT " C-STORE %s refused with status A700: %s", ASSOC_ARGS(req->assoc),
                    req->sop_instance_uid, err.msg);
        snprintf(comment, comment_bytes, "%s",
                 rc == XR_E_LIMIT ? "spool full, retry later" : "could not store, retry later");
        return DICOM_STATUS_OUT_OF_RESOURCES;
    }
    atomic_fetch_add(&ctx->n_stored, 1);
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

static void on_store_failed(void *userdata, const dicom_assoc_info *a, const char *sop_instance_uid,
                            const xr_error *why)
{
    daemon_ctx *ctx = userdata;
    atomic_fetch_add(&ctx->n_refused, 1);
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
    return NULL;
}

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

static void reload(daemon_ctx *ctx)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
               (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
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
    /* Keep the running values of non-reloadable keys in what we hold. */
    ctx->cfg->log.level = (free(ctx->cfg->log.level), ncfg->log.level);
    ncfg->log.level = NULL;
    ctx->cfg->spool.max_bytes = ncfg->spool.max_bytes;
    ctx->cfg->database.retry_initial_ms = ncfg->database.retry_initial_ms;
    ctx->cfg->database.retry_max_ms = ncfg->database.retry_max_ms;
    config_free(ncfg);
    log_notice("configuration reloaded from \"%s\"", ctx->cfg->path);
    sd_notify(0, "READY=1\nSTATUS=running");
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
    daemon_ctx ctx = {0};
    pgembed *pg = NULL;
    char *conninfo = NULL;
    xr_error err = XR_ERROR_INIT;
    pthread_t scp_thread;
    bool scp_started = false;
    int sfd = -1;

    log_setup(XR_LOG_INFO);
    if (config_load(config_path, &ctx.cfg, &err)) {
        log_error("%s", err.msg);
        return 1;
    }
    xr_log_level level = XR_LOG_INFO;
    (void)xr_log_level_from_string(ctx.cfg->log.level, &level);
    xr_log_set_level(level);
    log_notice("xregd %s starting with \"%s\"", XREG_VERSION, ctx.cfg->path);

    /* DCMTK leaves Nagle on unless this is set; small objects then stall on delayed ACKs. */
    setenv("TCP_NODELAY", "1", 1);
    if (dicom_global_init(&err)) {
        log_error("%s", err.msg);
        goto out;
    }

    /* Block the signals main handles before any thread starts, so threads inherit the mask. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (sfd < 0) {
        log_error("could not create signalfd: %m");
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

    /* Migrate now when the database is there; if it is down, reception still starts and the
     * workers migrate once it is back. A changed released migration is fatal. */
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
                        "retrying", err.msg);
        } else {
            log_error("registry: %s", err.msg);
            if (err.detail[0])
                log_error("%s", err.detail);
            goto out;
        }
    }

    pipeline_params pp = {
        .sp = ctx.sp,
        .conninfo = conninfo,
        .n_workers = (unsigned)ctx.cfg->pipeline.workers,
        .retry_initial_ms = ctx.cfg->database.retry_initial_ms,
        .retry_max_ms = ctx.cfg->database.retry_max_ms,
        .migrated = migrated,
    };
    if (pipeline_start(&pp, &ctx.pl, &err)) {
        log_error("%s", err.msg);
        goto out;
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

    log_notice("ready: AE \"%s\" listening on %s:%" PRId64 ", spool \"%s\", %" PRId64 " workers",
               ctx.cfg->dicom.ae_title, ctx.cfg->dicom.bind[0] ? ctx.cfg->dicom.bind : "*",
               ctx.cfg->dicom.port, ctx.cfg->spool.dir, ctx.cfg->pipeline.workers);
    sd_notifyf(0, "READY=1\nSTATUS=listening as \"%s\" on port %" PRId64, ctx.cfg->dicom.ae_title,
               ctx.cfg->dicom.port);

    for (;;) {
        struct signalfd_siginfo si;
        ssize_t r = read(sfd, &si, sizeof(si));
        if (r < 0 && errno == EINTR)
            continue;
        if (r != (ssize_t)sizeof(si)) {
            log_error("reading signalfd: %m");
            break;
        }
        if (si.ssi_signo == SIGHUP) {
            log_notice("SIGHUP: reloading \"%s\"", ctx.cfg->path);
            reload(&ctx);
            continue;
        }
        log_notice("%s: stopping (waiting for %u associations in flight)",
                   strsignal((int)si.ssi_signo), dicom_scp_active(ctx.scp));
        break;
    }
    exit_code = 0;

stop:
    sd_notify(0, "STOPPING=1\nSTATUS=stopping");
    if (scp_started) {
        dicom_scp_stop(ctx.scp);
        pthread_join(scp_thread, NULL);
    }
    ctx.scp = dicom_scp_free(ctx.scp);
    if (ctx.sp)
        spool_shutdown(ctx.sp);
    ctx.pl = pipeline_stop(ctx.pl);
    if (ctx.sp)
        log_notice("stopped: %" PRIu64 " stored, %" PRIu64 " rejected, %" PRIu64
                   " refused; %zu objects left in the spool for the next start",
                   atomic_load(&ctx.n_stored), atomic_load(&ctx.n_rejected),
                   atomic_load(&ctx.n_refused), spool_depth(ctx.sp));
out:
    pg = pgembed_stop(pg);
    free(conninfo);
    ctx.sp = spool_close(ctx.sp);
    ctx.cfg = config_free(ctx.cfg);
    if (sfd >= 0)
        close(sfd);
    dicom_global_done();
    return exit_code;
}
