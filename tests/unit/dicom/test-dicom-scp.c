/*
 * The storage SCP against DCMTK's echoscu and storescu: echo, bit-preserving reception in the
 * sent transfer syntax, statuses and Error Comments going back, association rejection (called
 * AE, limit), concurrency, object size limit, write errors, stop semantics, open errors.
 * Each test runs its own SCP on a free loopback port.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "xr-log.h"

#include "dicom-test-util.h"
#include "dicom.h"

#define MAX_RECORDS 8

/* What the callbacks saw. Written under ctx.mu on the SCP's threads. */
struct results {
    int n_store;
    char stored[MAX_RECORDS][PATH_MAX];
    char stored_ts[MAX_RECORDS][65];
    char stored_sop[MAX_RECORDS][65];
    uint64_t stored_bytes[MAX_RECORDS];
    int n_failed;
    xr_code failed_code[MAX_RECORDS];
    int failed_errno[MAX_RECORDS];
    char failed_msg[MAX_RECORDS][XR_ERROR_MSG_BYTES];
    int n_events[DICOM_ASSOC_EVENT_MAX];
    char last_reject[256];
    char last_accept[64];
    char calling[17], called[17], peer[64];
    uint64_t last_assoc_id;
    bool barrier_met;
};

struct ctx {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *dir;     /* test root */
    char *tmp_dir; /* the SCP's tmp_dir */
    char *got_dir; /* where on_store moves accepted files */

    /* behaviour of on_store */
    uint16_t status;
    const char *comment;
    bool block;  /* wait in on_store until cleared */
    int barrier; /* wait in on_store until this many stores arrived (10 s at most) */

    /* what the callbacks saw; read it with snap() */
    struct results r;

    /* the SCP */
    dicom_scp *scp;
    uint16_t port;
    pthread_t thread;
    bool thread_started;
    bool run_done; /* under mu */
    xr_code run_rc;
    xr_error run_err;
};

/* ---- callbacks ---- */

static uint16_t on_store(void *userdata, const dicom_store_request *req, char *comment,
                         size_t comment_bytes)
{
    struct ctx *c = userdata;
    pthread_mutex_lock(&c->mu);
    int i = c->r.n_store++;
    uint16_t status = c->status;
    if (i < MAX_RECORDS) {
        snprintf(c->r.stored_ts[i], sizeof(c->r.stored_ts[i]), "%s", req->transfer_syntax_uid);
        snprintf(c->r.stored_sop[i], sizeof(c->r.stored_sop[i]), "%s", req->sop_instance_uid);
        c->r.stored_bytes[i] = req->n_bytes;
        struct stat st;
        if (stat(req->path, &st) != 0 || (uint64_t)st.st_size != req->n_bytes)
            c->r.stored_bytes[i] = UINT64_MAX; /* n_bytes must be the file size */
    }
    /* The callback owns the file: keep it on success, drop it otherwise. */
    if (status == DICOM_STATUS_SUCCESS && i < MAX_RECORDS) {
        snprintf(c->r.stored[i], sizeof(c->r.stored[i]), "%s/got-%d.dcm", c->got_dir, i);
        if (rename(req->path, c->r.stored[i]) != 0)
            c->r.stored[i][0] = '\0';
    } else {
        (void)unlink(req->path);
    }
    pthread_cond_broadcast(&c->cv);

    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    while (c->barrier > 0 && c->r.n_store < c->barrier)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &until) != 0)
            break;
    if (c->barrier > 0 && c->r.n_store >= c->barrier)
        c->r.barrier_met = true;
    until.tv_sec += 10;
    while (c->block)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &until) != 0)
            break;
    if (c->comment)
        snprintf(comment, comment_bytes, "%s", c->comment);
    pthread_mutex_unlock(&c->mu);
    return status;
}

static void on_store_failed(void *userdata, const dicom_assoc_info *assoc,
                            const char *sop_instance_uid, const xr_error *why)
{
    (void)assoc;
    (void)sop_instance_uid;
    struct ctx *c = userdata;
    pthread_mutex_lock(&c->mu);
    int i = c->r.n_failed++;
    if (i < MAX_RECORDS) {
        c->r.failed_code[i] = why->code;
        c->r.failed_errno[i] = why->sys_errno;
        snprintf(c->r.failed_msg[i], sizeof(c->r.failed_msg[i]), "%s", why->msg);
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void on_assoc(void *userdata, const dicom_assoc_info *assoc, dicom_assoc_event event,
                     const char *text)
{
    struct ctx *c = userdata;
    pthread_mutex_lock(&c->mu);
    c->r.n_events[event]++;
    snprintf(c->r.calling, sizeof(c->r.calling), "%s", assoc->calling_ae);
    snprintf(c->r.called, sizeof(c->r.called), "%s", assoc->called_ae);
    snprintf(c->r.peer, sizeof(c->r.peer), "%s", assoc->peer_host);
    c->r.last_assoc_id = assoc->id;
    if (event == DICOM_ASSOC_REJECTED)
        snprintf(c->r.last_reject, sizeof(c->r.last_reject), "%s", text ? text : "");
    if (event == DICOM_ASSOC_ACCEPTED)
        snprintf(c->r.last_accept, sizeof(c->r.last_accept), "%s", text ? text : "");
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* ---- helpers ---- */

static uint16_t pick_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t len = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

static dicom_scp_params base_params(struct ctx *c)
{
    dicom_scp_params p = dicom_scp_params_default();
    p.ae_title = "XREG";
    p.bind_address = "127.0.0.1";
    p.port = pick_port();
    p.tmp_dir = c->tmp_dir;
    p.acse_timeout_s = 5;
    p.dimse_timeout_s = 10;
    p.on_store = on_store;
    p.on_store_failed = on_store_failed;
    p.on_assoc = on_assoc;
    p.userdata = c;
    return p;
}

static void *run_thread(void *arg)
{
    struct ctx *c = arg;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = dicom_scp_run(c->scp, &err);
    pthread_mutex_lock(&c->mu);
    c->run_rc = rc;
    c->run_err = err;
    c->run_done = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Copy of the results, taken under the lock. */
static struct results snap(struct ctx *c)
{
    pthread_mutex_lock(&c->mu);
    struct results r = c->r;
    pthread_mutex_unlock(&c->mu);
    return r;
}

/* Has dicom_scp_run returned? Waits up to ms milliseconds. */
static bool run_returned(struct ctx *c, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->mu);
    while (!c->run_done)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &until) != 0)
            break;
    bool done = c->run_done;
    pthread_mutex_unlock(&c->mu);
    return done;
}

static void start_scp(struct ctx *c, const dicom_scp_params *p)
{
    xr_error err = XR_ERROR_INIT;
    if (dicom_scp_open(p, &c->scp, &err) != XR_OK)
        fail_msg("dicom_scp_open: %s", err.msg);
    c->port = p->port;
    assert_int_equal(pthread_create(&c->thread, NULL, run_thread, c), 0);
    c->thread_started = true;
}

static void stop_scp(struct ctx *c)
{
    if (!c->scp)
        return;
    if (c->thread_started) {
        dicom_scp_stop(c->scp);
        if (!run_returned(c, 15000))
            fail_msg("dicom_scp_run did not return after dicom_scp_stop");
        pthread_join(c->thread, NULL);
        c->thread_started = false;
        if (c->run_rc != XR_OK)
            fail_msg("dicom_scp_run: %s", c->run_err.msg);
    }
    assert_int_equal(dicom_scp_active(c->scp), 0);
    c->scp = dicom_scp_free(c->scp);
    assert_null(c->scp);
}

/* Wait (10 s at most) until *counter >= want; returns the final value. */
static int wait_count(struct ctx *c, const int *counter, int want)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&c->mu);
    while (*counter < want)
        if (pthread_cond_timedwait(&c->cv, &c->mu, &until) != 0)
            break;
    int v = *counter;
    pthread_mutex_unlock(&c->mu);
    return v;
}

static void wait_idle(struct ctx *c)
{
    for (int i = 0; i < 500 && dicom_scp_active(c->scp) != 0; i++)
        usleep(10000);
    assert_int_equal(dicom_scp_active(c->scp), 0);
}

static int echoscu(struct ctx *c, const char *called, char **out)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", c->port);
    char *argv[] = {(char *)tu_tool("ECHOSCU"),
                    "-v",
                    "-aet",
                    "TESTSCU",
                    "-aec",
                    (char *)called,
                    "-to",
                    "10",
                    "-ta",
                    "10",
                    "-td",
                    "10",
                    "127.0.0.1",
                    port,
                    NULL};
    return tu_run(argv, out);
}

/* storescu with up to two files and extra options (NULL-terminated; NULL means -v). */
static char **storescu_argv(struct ctx *c, const char *f1, const char *f2, const char *const opts[])
{
    static char port[8];
    snprintf(port, sizeof(port), "%u", c->port);
    char **argv = calloc(32, sizeof(char *));
    int n = 0;
    argv[n++] = (char *)tu_tool("STORESCU");
    argv[n++] = "-aet";
    argv[n++] = "TESTSCU";
    argv[n++] = "-aec";
    argv[n++] = "XREG";
    argv[n++] = "-to";
    argv[n++] = "10";
    argv[n++] = "-ta";
    argv[n++] = "10";
    argv[n++] = "-td";
    argv[n++] = "10";
    for (int i = 0; opts && opts[i] && n < 24; i++)
        argv[n++] = (char *)opts[i];
    argv[n++] = "127.0.0.1";
    argv[n++] = port;
    argv[n++] = (char *)f1;
    if (f2)
        argv[n++] = (char *)f2;
    argv[n] = NULL;
    return argv;
}

static const char *const verbose[] = {"-v", NULL};
/* -nh: go on after a failed store (one association, several responses); exit status is then 0 */
static const char *const no_halt[] = {"-v", "-nh", NULL};

static int storescu(struct ctx *c, const char *f1, const char *f2, const char *const opts[],
                    char **out)
{
    char **argv = storescu_argv(c, f1, f2, opts ? opts : verbose);
    int rc = tu_run(argv, out);
    free(argv);
    return rc;
}

/* The data set bytes (after the meta header) of two Part-10 files are identical. */
static void assert_same_data_set(const char *a, const char *b)
{
    size_t na, nb;
    char *da = tu_read_file(a, &na);
    char *db = tu_read_file(b, &nb);
    size_t oa = tu_dataset_offset(da, na);
    size_t ob = tu_dataset_offset(db, nb);
    assert_true(oa > 0);
    assert_true(ob > 0);
    assert_int_equal(na - oa, nb - ob);
    assert_memory_equal(da + oa, db + ob, na - oa);
    free(da);
    free(db);
}

static void assert_same_header(const char *a, const char *b)
{
    dicom_header ha, hb;
    xr_error err = XR_ERROR_INIT;
    if (dicom_header_read(a, &ha, &err) != XR_OK)
        fail_msg("%s", err.msg);
    if (dicom_header_read(b, &hb, &err) != XR_OK)
        fail_msg("%s", err.msg);
    assert_string_equal(ha.transfer_syntax_uid, hb.transfer_syntax_uid);
    assert_string_equal(ha.sop_instance_uid, hb.sop_instance_uid);
    assert_memory_equal(&ha, &hb, sizeof(ha));
}

/* ---- fixtures ---- */

/* Every log line of the run: the room must stay at debug, DCMTK's lines included. */
static struct {
    pthread_mutex_t mu;
    int n_lines;
    int n_dcmtk;
    int n_above_debug;
    char above_debug[256];
} logcap = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void log_capture(void *userdata, xr_log_level level, const char *line)
{
    (void)userdata;
    if (getenv("XREG_TEST_LOG")) /* set it to watch the SCP work */
        fprintf(stderr, "<%d>%s\n", (int)level, line);
    pthread_mutex_lock(&logcap.mu);
    logcap.n_lines++;
    if (strncmp(line, "dcmtk ", 6) == 0)
        logcap.n_dcmtk++;
    if (level != XR_LOG_DEBUG && logcap.n_above_debug++ == 0)
        snprintf(logcap.above_debug, sizeof(logcap.above_debug), "%s", line);
    pthread_mutex_unlock(&logcap.mu);
}

static int group_setup(void **state)
{
    xr_log_set(log_capture, NULL, XR_LOG_DEBUG);
    return tu_dicom_group_setup(state);
}

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->dir = tu_mkdtemp("xreg-dicom-scp");
    c->tmp_dir = tu_path(c->dir, "tmp");
    c->got_dir = tu_path(c->dir, "got");
    mkdir(c->tmp_dir, 0700);
    mkdir(c->got_dir, 0700);
    c->status = DICOM_STATUS_SUCCESS;
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    if (c->scp) {
        pthread_mutex_lock(&c->mu);
        c->block = false;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        if (c->thread_started) {
            dicom_scp_stop(c->scp);
            pthread_join(c->thread, NULL);
        }
        c->scp = dicom_scp_free(c->scp);
    }
    tu_rm_rf(c->dir);
    free(c->dir);
    free(c->tmp_dir);
    free(c->got_dir);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    return 0;
}

/* ---- tests ---- */

static void test_echo(void **state)
{
    struct ctx *c = *state;
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    char *out = NULL;
    int rc = echoscu(c, "XREG", &out);
    if (rc != 0)
        fail_msg("echoscu failed (%d): %s", rc, out);
    free(out);
    assert_int_equal(wait_count(c, &c->r.n_events[DICOM_ASSOC_RELEASED], 1), 1);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ACCEPTED], 1);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ECHO], 1);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_REJECTED], 0);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ABORTED], 0);
    assert_string_equal(snap(c).calling, "TESTSCU");
    assert_string_equal(snap(c).called, "XREG");
    assert_string_equal(snap(c).peer, "127.0.0.1");
    assert_true(snap(c).last_assoc_id >= 1);
    assert_true(atoi(snap(c).last_accept) >= 1); /* number of accepted presentation contexts */
    wait_idle(c);
    stop_scp(c);
}

static void test_store_explicit_le(void **state)
{
    struct ctx *c = *state;
    char *src = tu_make_cr(c->dir, "cr.dcm", NULL, NULL, true);
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    char *out = NULL;
    int rc = storescu(c, src, NULL, NULL, &out);
    if (rc != 0 || !strstr(out, "Success"))
        fail_msg("storescu failed (%d): %s", rc, out);
    free(out);
    assert_int_equal(wait_count(c, &c->r.n_store, 1), 1);
    assert_string_equal(snap(c).stored_ts[0], "1.2.840.10008.1.2.1");
    assert_string_equal(snap(c).stored_sop[0], TU_SOP_INSTANCE_UID);
    assert_int_not_equal(snap(c).stored_bytes[0], UINT64_MAX);
    assert_true(snap(c).stored[0][0] != '\0');
    assert_same_data_set(src, snap(c).stored[0]);
    assert_same_header(src, snap(c).stored[0]);
    assert_int_equal(tu_count_entries(c->tmp_dir), 0);
    assert_int_equal(snap(c).n_failed, 0);
    stop_scp(c);
    free(src);
}

/* Convert src with a DCMTK tool (env names its path), e.g. dcmcjpeg src out. */
static char *convert(struct ctx *c, const char *tool_env, const char *src, const char *name)
{
    char *dst = tu_path(c->dir, name);
    char *argv[] = {(char *)tu_tool(tool_env), (char *)src, dst, NULL};
    char *out = NULL;
    int rc = tu_run(argv, &out);
    if (rc != 0)
        fail_msg("%s failed (%d): %s", tool_env, rc, out);
    free(out);
    return dst;
}

static void test_store_compressed(void **state)
{
    struct ctx *c = *state;
    char *src = tu_make_cr(c->dir, "cr.dcm", NULL, NULL, true);
    const char *const deflate_args[] = {"+td", NULL};
    char *files[3] = {
        convert(c, "DCMCJPEG", src, "cr-jpeg.dcm"),
        convert(c, "DCMCRLE", src, "cr-rle.dcm"),
        tu_make_cr(c->dir, "cr-deflated.dcm", NULL, deflate_args, true),
    };
    const char *propose[3] = {"-xs", "-xr", "-xd"};
    const char *want_ts[3] = {"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5",
                              "1.2.840.10008.1.2.1.99"};
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);

    /*
     * Each file twice: one presentation context per transfer syntax (storescu's default), then
     * all syntaxes in one context (+C: our preference order decides, and must keep the
     * lossless-compressed syntaxes as they are).
     */
    int n = 0;
    for (int f = 0; f < 3; f++) {
        for (int combine = 0; combine < 2; combine++) {
            /* -R: only the SOP class of the file; NULL ends the list when not combining */
            const char *opts[] = {"-v", "-R", propose[f], combine ? "+C" : NULL, NULL};
            char *out = NULL;
            int rc = storescu(c, files[f], NULL, opts, &out);
            if (rc != 0 || !strstr(out, "Success"))
                fail_msg("storescu %s failed (%d): %s", files[f], rc, out);
            free(out);
            n++;
            assert_int_equal(wait_count(c, &c->r.n_store, n), n);
            /* Received as sent, in the sent transfer syntax, bit for bit. */
            if (f < 2 || !combine)
                assert_string_equal(snap(c).stored_ts[n - 1], want_ts[f]);
            else /* deflated comes after uncompressed in our order; the peer inflates */
                assert_string_equal(snap(c).stored_ts[n - 1], "1.2.840.10008.1.2.1");
            if (strcmp(snap(c).stored_ts[n - 1], want_ts[f]) == 0) {
                assert_same_data_set(files[f], snap(c).stored[n - 1]);
                assert_same_header(files[f], snap(c).stored[n - 1]);
            }
        }
    }
    stop_scp(c);
    for (int f = 0; f < 3; f++)
        free(files[f]);
    free(src);
}

static void test_store_status_and_comment(void **state)
{
    struct ctx *c = *state;
    char *src = tu_make_cr(c->dir, "cr.dcm", NULL, NULL, true);
    c->status = DICOM_STATUS_OUT_OF_RESOURCES;
    c->comment = "disk budget exceeded";
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    char *out = NULL;
    const char *const debug[] = {"-d", NULL};
    int rc = storescu(c, src, NULL, debug, &out);
    /* storescu -d dumps the C-STORE-RSP: status and the Error Comment from the command set */
    const char *rsp = strstr(out, "C-STORE RSP");
    if (rc == 0 || !rsp || !strstr(rsp, "0xa700") ||
        !strstr(rsp, "(0000,0902) LO [disk budget exceeded]"))
        fail_msg("storescu should report A700 with the comment (%d): %s", rc, rsp ? rsp : out);
    free(out);
    assert_int_equal(snap(c).n_store, 1);
    assert_int_equal(tu_count_entries(c->tmp_dir), 0);
    /* A refused object does not break the association: it was released, not aborted. */
    assert_int_equal(wait_count(c, &c->r.n_events[DICOM_ASSOC_RELEASED], 1), 1);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ABORTED], 0);
    stop_scp(c);
    free(src);
}

static void test_peer_abort(void **state)
{
    struct ctx *c = *state;
    char *src = tu_make_cr(c->dir, "cr.dcm", NULL, NULL, true);
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    const char *const abort_opts[] = {"-v", "--abort", NULL};
    char *out = NULL;
    int rc = storescu(c, src, NULL, abort_opts, &out);
    if (rc != 0)
        fail_msg("storescu --abort failed (%d): %s", rc, out);
    free(out);
    assert_int_equal(wait_count(c, &c->r.n_events[DICOM_ASSOC_ABORTED], 1), 1);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_RELEASED], 0);
    assert_int_equal(snap(c).n_store, 1); /* the object before the abort was stored */
    stop_scp(c);
    free(src);
}

static void test_stop_before_run(void **state)
{
    struct ctx *c = *state;
    dicom_scp_params p = base_params(c);
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_scp_open(&p, &c->scp, &err), XR_OK);
    /* A stop that comes before run() (SIGTERM right after start-up) is not lost. */
    dicom_scp_stop(c->scp);
    assert_int_equal(dicom_scp_run(c->scp, &err), XR_OK);
    /* The listening socket is closed now; the SCP cannot run again. */
    assert_int_equal(dicom_scp_run(c->scp, &err), XR_E_INTERNAL);
    assert_non_null(strstr(err.msg, "stopped"));
    c->scp = dicom_scp_free(c->scp);
    assert_null(dicom_scp_free(NULL));
    assert_int_equal(dicom_scp_active(NULL), 0);
    dicom_scp_stop(NULL);
}

static void test_wrong_called_ae(void **state)
{
    struct ctx *c = *state;
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    char *out = NULL;
    int rc = echoscu(c, "NOTXREG", &out);
    if (rc == 0 || !strstr(out, "Called AE Title Not Recognized"))
        fail_msg("echoscu should be rejected (%d): %s", rc, out);
    free(out);
    assert_int_equal(wait_count(c, &c->r.n_events[DICOM_ASSOC_REJECTED], 1), 1);
    assert_non_null(strstr(snap(c).last_reject, "called AE title"));
    assert_string_equal(snap(c).called, "NOTXREG");
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ACCEPTED], 0);
    wait_idle(c);
    stop_scp(c);
}

static void test_two_at_once(void **state)
{
    struct ctx *c = *state;
    char *a = tu_make_cr(c->dir, "a.dcm", NULL, NULL, true);
    char *b = tu_make_cr(c->dir, "b.dcm", "(0008,0018) UI [1.2.826.0.1.3680043.10.1234.1.2]\n",
                         NULL, true);
    c->barrier = 2; /* each on_store waits for the other: only concurrent associations pass */
    dicom_scp_params p = base_params(c);
    p.max_associations = 2;
    start_scp(c, &p);
    char **argv_a = storescu_argv(c, a, NULL, verbose);
    char **argv_b = storescu_argv(c, b, NULL, verbose);
    pid_t pa = tu_spawn(argv_a);
    pid_t pb = tu_spawn(argv_b);
    assert_int_equal(tu_wait(pa), 0);
    assert_int_equal(tu_wait(pb), 0);
    free(argv_a);
    free(argv_b);
    assert_true(snap(c).barrier_met);
    assert_int_equal(snap(c).n_store, 2);
    assert_int_equal(wait_count(c, &c->r.n_events[DICOM_ASSOC_RELEASED], 2), 2);
    stop_scp(c);
    free(a);
    free(b);
}

static void test_association_limit(void **state)
{
    struct ctx *c = *state;
    char *a = tu_make_cr(c->dir, "a.dcm", NULL, NULL, true);
    c->block = true;
    dicom_scp_params p = base_params(c);
    p.max_associations = 1;
    start_scp(c, &p);
    char **argv_a = storescu_argv(c, a, NULL, verbose);
    pid_t pa = tu_spawn(argv_a);
    assert_int_equal(wait_count(c, &c->r.n_store, 1), 1); /* first association sits in on_store */
    assert_int_equal(dicom_scp_active(c->scp), 1);

    char *out = NULL;
    int rc = echoscu(c, "XREG", &out);
    if (rc == 0 || !strstr(out, "Local Limit Exceeded"))
        fail_msg("second association should be rejected (%d): %s", rc, out);
    free(out);
    assert_int_equal(wait_count(c, &c->r.n_events[DICOM_ASSOC_REJECTED], 1), 1);
    assert_non_null(strstr(snap(c).last_reject, "too many associations"));

    pthread_mutex_lock(&c->mu);
    c->block = false;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    assert_int_equal(tu_wait(pa), 0);
    free(argv_a);
    wait_idle(c);

    /* With the first gone, a new association is accepted again. */
    rc = echoscu(c, "XREG", &out);
    assert_int_equal(rc, 0);
    free(out);
    stop_scp(c);
    free(a);
}

static void test_object_size_limit(void **state)
{
    struct ctx *c = *state;
    char *src = tu_make_cr(c->dir, "cr.dcm", NULL, NULL, true);
    char *src2 = tu_make_cr(c->dir, "cr2.dcm", "(0008,0018) UI [1.2.826.0.1.3680043.10.1234.1.2]\n",
                            NULL, true);
    char *out = NULL;

    /* Learn the received size. */
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    assert_int_equal(storescu(c, src, NULL, NULL, &out), 0);
    free(out);
    stop_scp(c);
    assert_int_equal(snap(c).n_store, 1);
    const uint64_t size = snap(c).stored_bytes[0];
    assert_true(size > 1024 && size != UINT64_MAX);

    /* At the limit: accepted. */
    p = base_params(c);
    p.max_object_bytes = size;
    start_scp(c, &p);
    assert_int_equal(storescu(c, src, NULL, NULL, &out), 0);
    free(out);
    stop_scp(c);
    assert_int_equal(snap(c).n_store, 2);
    assert_int_equal(snap(c).n_failed, 0);

    /* One past: A700, twice on one association, which stays usable and is released. */
    p = base_params(c);
    p.max_object_bytes = size - 1;
    start_scp(c, &p);
    int released_before = snap(c).n_events[DICOM_ASSOC_RELEASED];
    int rc = storescu(c, src, src2, no_halt, &out);
    const char *first = strstr(out, "Refused: OutOfResources");
    if (rc != 0 || !first || !strstr(first + 1, "Refused: OutOfResources"))
        fail_msg("storescu should get A700 twice (%d): %s", rc, out);
    free(out);
    assert_int_equal(snap(c).n_store, 2); /* on_store not called */
    assert_int_equal(snap(c).n_failed, 2);
    assert_int_equal(snap(c).failed_code[0], XR_E_LIMIT);
    assert_non_null(strstr(snap(c).failed_msg[0], "larger than the limit"));
    assert_int_equal(tu_count_entries(c->tmp_dir), 0);
    assert_int_equal(wait_count(c, &c->r.n_events[DICOM_ASSOC_RELEASED], released_before + 1),
                     released_before + 1);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ABORTED], 0);
    stop_scp(c);
    free(src);
    free(src2);
}

static void test_write_error(void **state)
{
    struct ctx *c = *state;
    char *src = tu_make_cr(c->dir, "cr.dcm", NULL, NULL, true);
    char *src2 = tu_make_cr(c->dir, "cr2.dcm", "(0008,0018) UI [1.2.826.0.1.3680043.10.1234.1.2]\n",
                            NULL, true);
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);

    /* A file size limit makes write(2) fail with EFBIG like a full disk fails with ENOSPC. */
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 2048;
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    char *out = NULL;
    int rc = storescu(c, src, src2, no_halt, &out);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_sig);

    const char *first = strstr(out, "Refused: OutOfResources");
    if (rc != 0 || !first || !strstr(first + 1, "Refused: OutOfResources"))
        fail_msg("storescu should get A700 twice (%d): %s", rc, out);
    free(out);
    assert_int_equal(snap(c).n_store, 0);
    assert_int_equal(snap(c).n_failed, 2);
    assert_int_equal(snap(c).failed_code[0], XR_E_IO);
    assert_int_equal(snap(c).failed_errno[0], EFBIG);
    assert_int_equal(tu_count_entries(c->tmp_dir), 0); /* partial files removed */
    assert_int_equal(wait_count(c, &c->r.n_events[DICOM_ASSOC_RELEASED], 1), 1);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ABORTED], 0);

    /* And it recovers once writing works again. */
    rc = storescu(c, src, NULL, NULL, &out);
    assert_int_equal(rc, 0);
    free(out);
    assert_int_equal(snap(c).n_store, 1);
    assert_same_data_set(src, snap(c).stored[0]);
    stop_scp(c);
    free(src);
    free(src2);
}

static int connect_loopback(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static void test_stop_waits_for_associations(void **state)
{
    struct ctx *c = *state;
    char *src = tu_make_cr(c->dir, "cr.dcm", NULL, NULL, true);
    c->block = true;
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    char **argv = storescu_argv(c, src, NULL, verbose);
    pid_t pid = tu_spawn(argv);
    assert_int_equal(wait_count(c, &c->r.n_store, 1), 1);

    dicom_scp_stop(c->scp);
    usleep(300 * 1000);
    /* run() has not returned: an association is in flight ... */
    assert_false(run_returned(c, 0));
    assert_int_equal(dicom_scp_active(c->scp), 1);
    /* ... but nothing new is accepted. */
    assert_int_equal(connect_loopback(c->port), -1);
    assert_int_equal(errno, ECONNREFUSED);

    pthread_mutex_lock(&c->mu);
    c->block = false;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    assert_int_equal(tu_wait(pid), 0); /* the in-flight store completes with Success */
    free(argv);
    stop_scp(c); /* joins: run() returns now */
    free(src);
}

static void test_silent_and_garbage_peers(void **state)
{
    struct ctx *c = *state;
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);

    /* A peer that connects and says nothing must not hold up other associations. */
    int silent = connect_loopback(c->port);
    assert_true(silent >= 0);
    /* A peer that sends something that is not DICOM. */
    int junk = connect_loopback(c->port);
    assert_true(junk >= 0);
    const char msg[] = "this is not dicom\n";
    assert_int_equal(write(junk, msg, sizeof(msg) - 1), (ssize_t)(sizeof(msg) - 1));

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char *out = NULL;
    int rc = echoscu(c, "XREG", &out);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc != 0)
        fail_msg("echoscu failed (%d): %s", rc, out);
    free(out);
    assert_true(t1.tv_sec - t0.tv_sec < 3); /* well under acse_timeout_s (5) */
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ECHO], 1);

    close(junk);
    close(silent);
    wait_idle(c);
    assert_int_equal(snap(c).n_events[DICOM_ASSOC_ACCEPTED], 1);
    stop_scp(c);
}

static void test_unsupported_sop_class(void **state)
{
    struct ctx *c = *state;
    /* CT Image Storage is not in the accepted list: storescu finds no presentation context. */
    char *ct =
        tu_make_cr(c->dir, "ct.dcm", "(0008,0016) UI [1.2.840.10008.5.1.4.1.1.2]\n", NULL, true);
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    char *out = NULL;
    int rc = storescu(c, ct, NULL, NULL, &out);
    assert_int_not_equal(rc, 0);
    free(out);
    assert_int_equal(snap(c).n_store, 0);
    stop_scp(c);
    free(ct);
}

static void test_open_errors(void **state)
{
    struct ctx *c = *state;
    xr_error err = XR_ERROR_INIT;
    dicom_scp *other = NULL;
    char want[128];

    /* Port in use, specific address. */
    dicom_scp_params p = base_params(c);
    start_scp(c, &p);
    assert_int_equal(dicom_scp_open(&p, &other, &err), XR_E_IO);
    assert_null(other);
    assert_int_equal(err.sys_errno, EADDRINUSE);
    snprintf(want, sizeof(want), "could not listen on 127.0.0.1:%u: Address already in use",
             p.port);
    assert_string_equal(err.msg, want);

    /* Port in use, all interfaces. */
    p.bind_address = NULL;
    assert_int_equal(dicom_scp_open(&p, &other, &err), XR_E_IO);
    snprintf(want, sizeof(want), "could not listen on 0.0.0.0:%u: Address already in use", p.port);
    assert_string_equal(err.msg, want);
    stop_scp(c);

    /* Invalid parameters. */
    dicom_scp_params q;
#define EXPECT_CONFIG(stmt, needle)                                                                \
    do {                                                                                           \
        q = base_params(c);                                                                        \
        stmt;                                                                                      \
        xr_code rc_ = dicom_scp_open(&q, &other, &err);                                            \
        if (rc_ != XR_E_CONFIG || !strstr(err.msg, needle))                                        \
            fail_msg("%s: expected config error with \"%s\", got %s: %s", #stmt, needle,           \
                     xr_code_name(rc_), err.msg);                                                  \
        assert_null(other);                                                                        \
    } while (0)
    EXPECT_CONFIG(q.ae_title = "", "AE title");
    EXPECT_CONFIG(q.ae_title = "ABCDEFGHIJKLMNOPQ", "at most 16");
    EXPECT_CONFIG(q.ae_title = "BAD\\AE", "not allowed");
    EXPECT_CONFIG(q.port = 0, "port 0");
    EXPECT_CONFIG(q.bind_address = "localhost", "invalid bind address");
    EXPECT_CONFIG(q.max_associations = 0, "max_associations");
    EXPECT_CONFIG(q.max_pdu_bytes = 1000, "max_pdu_bytes");
    EXPECT_CONFIG(q.acse_timeout_s = 0, "acse_timeout_s");
    EXPECT_CONFIG(q.max_object_bytes = 0, "max_object_bytes");
    EXPECT_CONFIG(q.tmp_dir = "/nonexistent/xreg", "tmp_dir");
    EXPECT_CONFIG(q.on_store = NULL, "on_store");
#undef EXPECT_CONFIG
}

static void test_bind_address(void **state)
{
    struct ctx *c = *state;
    dicom_scp_params p = base_params(c);
    p.bind_address = "127.0.0.1";
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_scp_open(&p, &c->scp, &err), XR_OK);

    /* Bound to 127.0.0.1 only: 127.0.0.2 (also loopback) on the same port is still free. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(p.port)};
    inet_pton(AF_INET, "127.0.0.2", &sin.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    close(fd);
    c->scp = dicom_scp_free(c->scp);

    /* All interfaces: now it is taken. */
    p.bind_address = "";
    assert_int_equal(dicom_scp_open(&p, &c->scp, &err), XR_OK);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), -1);
    assert_int_equal(errno, EADDRINUSE);
    close(fd);
    c->scp = dicom_scp_free(c->scp);

    /* IPv6 loopback, where the kernel has IPv6. */
    int fd6 = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd6 >= 0) {
        close(fd6);
        p.bind_address = "::1";
        xr_code rc = dicom_scp_open(&p, &c->scp, &err);
        if (rc == XR_OK)
            c->scp = dicom_scp_free(c->scp);
        else
            assert_non_null(strstr(err.msg, "could not listen on [::1]:")); /* no ::1 here */
    }
}

static void test_lists(void **state)
{
    (void)state;
    const char *const *sop = dicom_storage_sop_classes();
    const char *const *ts = dicom_storage_transfer_syntaxes();
    int n = 0;
    bool cr = false, dx = false, dxp = false, sc = false;
    for (; sop[n]; n++) {
        cr |= strcmp(sop[n], "1.2.840.10008.5.1.4.1.1.1") == 0;
        dx |= strcmp(sop[n], "1.2.840.10008.5.1.4.1.1.1.1") == 0;
        dxp |= strcmp(sop[n], "1.2.840.10008.5.1.4.1.1.1.1.1") == 0;
        sc |= strcmp(sop[n], "1.2.840.10008.5.1.4.1.1.7") == 0;
    }
    assert_true(cr && dx && dxp && sc);
    assert_int_equal(n, 8);
    int m = 0;
    for (; ts[m]; m++)
        ;
    assert_int_equal(m, 13);
    assert_string_equal(ts[0], "1.2.840.10008.1.2.4.70"); /* preferred first */
}

static void test_logging(void **state)
{
    (void)state;
    pthread_mutex_lock(&logcap.mu);
    if (logcap.n_above_debug != 0)
        fail_msg("%d lines above debug, first: %s", logcap.n_above_debug, logcap.above_debug);
    assert_true(logcap.n_dcmtk > 0);              /* DCMTK's oflog reached xr_log */
    assert_true(logcap.n_lines > logcap.n_dcmtk); /* and so did our own debug lines */
    pthread_mutex_unlock(&logcap.mu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lists),
        cmocka_unit_test_setup_teardown(test_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_explicit_le, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_compressed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_status_and_comment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_before_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_called_ae, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_association_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_object_size_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_waits_for_associations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_and_garbage_peers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsupported_sop_class, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bind_address, setup, teardown),
        cmocka_unit_test(test_logging), /* last: looks at the lines of all tests above */
    };
    return cmocka_run_group_tests_name("dicom-scp", tests, group_setup, tu_dicom_group_teardown);
}
