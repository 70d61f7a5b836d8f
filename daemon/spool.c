/*
 * The spool (see spool.h for the layout and the DESIGN notes).
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "xr-fs.h"
#include "xr-log.h"
#include "xr-time.h"

#define SPOOL_META_MAX_BYTES 8192

struct spool {
    char *dir;
    char *tmp_dir;
    char *incoming_dir;
    char *rejected_dir;
    _Atomic uint64_t max_bytes;
    _Atomic uint64_t bytes;
    _Atomic uint64_t counter;
    _Atomic uint64_t n_waiting; /* acknowledged objects not yet done: queued or held by a worker */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool shutdown;
    /* FIFO ring of items */
    spool_item *ring;
    size_t cap;
    size_t head;
    size_t n;
};

const char *spool_tmp_dir(const spool *sp)
{
    return sp->tmp_dir;
}

const char *spool_dir(const spool *sp)
{
    return sp->dir;
}

void spool_set_max_bytes(spool *sp, uint64_t max_bytes)
{
    atomic_store(&sp->max_bytes, max_bytes);
}

size_t spool_depth(spool *sp)
{
    return (size_t)atomic_load(&sp->n_waiting);
}

int64_t spool_oldest_us(spool *sp)
{
    /* IDs start with the reception time; the queue is in arrival order (recovery sorts). */
    int64_t oldest = 0;
    pthread_mutex_lock(&sp->lock);
    for (size_t i = 0; i < sp->n && i < 64; i++) {
        const spool_item *it = &sp->ring[(sp->head + i) % sp->cap];
        if (it->kind != SPOOL_KIND_INCOMING)
            continue;
        oldest = strtoll(it->id, NULL, 10);
        break;
    }
    pthread_mutex_unlock(&sp->lock);
    return oldest;
}

uint64_t spool_bytes(spool *sp)
{
    return atomic_load(&sp->bytes);
}

/* ---- queue --------------------------------------------------------------------------------- */

static xr_code queue_push(spool *sp, const spool_item *item, xr_error *err)
{
    if (item->kind == SPOOL_KIND_INCOMING)
        atomic_fetch_add(&sp->n_waiting, 1);
    pthread_mutex_lock(&sp->lock);
    if (sp->n == sp->cap) {
        size_t ncap = sp->cap ? sp->cap * 2 : 256;
        spool_item *nring = malloc(ncap * sizeof(*nring));
        if (!nring) {
            pthread_mutex_unlock(&sp->lock);
            if (item->kind == SPOOL_KIND_INCOMING)
                atomic_fetch_sub(&sp->n_waiting, 1);
            return xr_error_set(err, XR_E_NOMEM, "out of memory growing the spool queue");
        }
        for (size_t i = 0; i < sp->n; i++)
            nring[i] = sp->ring[(sp->head + i) % sp->cap];
        free(sp->ring);
        sp->ring = nring;
        sp->cap = ncap;
        sp->head = 0;
    }
    sp->ring[(sp->head + sp->n) % sp->cap] = *item;
    sp->n++;
    pthread_cond_signal(&sp->cond);
    pthread_mutex_unlock(&sp->lock);
    return XR_OK;
}

bool spool_next(spool *sp, spool_item *ret_item)
{
    pthread_mutex_lock(&sp->lock);
    while (!sp->shutdown && sp->n == 0)
        pthread_cond_wait(&sp->cond, &sp->lock);
    if (sp->shutdown) {
        pthread_mutex_unlock(&sp->lock);
        return false;
    }
    *ret_item = sp->ring[sp->head];
    sp->head = (sp->head + 1) % sp->cap;
    sp->n--;
    pthread_mutex_unlock(&sp->lock);
    return true;
}

static struct timespec deadline_after_ms(int64_t timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    return deadline;
}

size_t spool_next_batch(spool *sp, spool_item *ret_items, size_t max, int64_t wait_ms)
{
    size_t n = 0;
    if (max == 0)
        return 0;
    pthread_mutex_lock(&sp->lock);
    while (!sp->shutdown && sp->n == 0)
        pthread_cond_wait(&sp->cond, &sp->lock);
    struct timespec deadline = deadline_after_ms(wait_ms > 0 ? wait_ms : 0);
    while (!sp->shutdown) {
        while (n < max && sp->n > 0) {
            ret_items[n++] = sp->ring[sp->head];
            sp->head = (sp->head + 1) % sp->cap;
            sp->n--;
        }
        if (n == max || wait_ms <= 0)
            break;
        if (pthread_cond_timedwait(&sp->cond, &sp->lock, &deadline) == ETIMEDOUT) {
            /* What arrived with the timeout still joins this batch. */
            while (n < max && sp->n > 0) {
                ret_items[n++] = sp->ring[sp->head];
                sp->head = (sp->head + 1) % sp->cap;
                sp->n--;
            }
            break;
        }
    }
    /* Shut down while collecting: the items taken stay in incoming/ for the next start, but
     * the caller is told about them so that it may finish what it holds. */
    pthread_mutex_unlock(&sp->lock);
    return n;
}

void spool_shutdown(spool *sp)
{
    pthread_mutex_lock(&sp->lock);
    sp->shutdown = true;
    pthread_cond_broadcast(&sp->cond);
    pthread_mutex_unlock(&sp->lock);
}

bool spool_sleep(spool *sp, int64_t timeout_ms)
{
    struct timespec deadline = deadline_after_ms(timeout_ms);
    pthread_mutex_lock(&sp->lock);
    while (!sp->shutdown) {
        if (pthread_cond_timedwait(&sp->cond, &sp->lock, &deadline) == ETIMEDOUT)
            break;
    }
    bool alive = !sp->shutdown;
    pthread_mutex_unlock(&sp->lock);
    return alive;
}

/* ---- reception records --------------------------------------------------------------------- */

/* Keep records one key per line: drop characters that would break the format. */
static void put_field(FILE *f, const char *key, const char *value)
{
    fprintf(f, "%s=", key);
    for (const char *p = value; *p; p++) {
        unsigned char c = (unsigned char)*p;
        fputc(c < 0x20 || c == 0x7f ? '?' : c, f);
    }
    fputc('\n', f);
}

static char *meta_format(const spool_meta *m, uint16_t status, const char *reason, size_t *ret_n)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return NULL;
    fprintf(f, "xreg-spool-record 1\n");
    fprintf(f, "received_at_us=%" PRId64 "\n", m->received_at_us);
    fprintf(f, "assoc_id=%" PRIu64 "\n", m->assoc_id);
    put_field(f, "calling_ae", m->calling_ae);
    put_field(f, "called_ae", m->called_ae);
    put_field(f, "peer_host", m->peer_host);
    put_field(f, "sop_class_uid", m->sop_class_uid);
    put_field(f, "sop_instance_uid", m->sop_instance_uid);
    put_field(f, "transfer_syntax_uid", m->transfer_syntax_uid);
    if (reason) {
        fprintf(f, "dimse_status=0x%04X\n", status);
        put_field(f, "reason", reason);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *ret_n = n;
    return buf;
}

static bool copy_value(char *dst, size_t dst_bytes, const char *v, size_t vlen)
{
    if (vlen >= dst_bytes)
        return false;
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
    return true;
}

xr_code spool_meta_parse(const char *text, size_t n, spool_meta *ret_meta, uint16_t *ret_status,
                         char *ret_reason, size_t reason_bytes, xr_error *err)
{
    spool_meta m = {0};
    uint16_t status = 0;
    bool have_header = false;
    size_t lineno = 0;
    if (ret_reason && reason_bytes)
        ret_reason[0] = '\0';
    const char *p = text, *end = text + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t len = (size_t)(le - p);
        lineno++;
        if (memchr(p, '\0', len))
            return xr_error_set(err, XR_E_INPUT, "spool record line %zu contains a NUL byte",
                                lineno);
        if (lineno == 1) {
            static const char magic[] = "xreg-spool-record 1";
            if (len != sizeof(magic) - 1 || memcmp(p, magic, len) != 0)
                return xr_error_set(err, XR_E_INPUT,
                                    "not a spool record (expected \"%s\" on line 1)", magic);
            have_header = true;
        } else if (len > 0) {
            const char *eq = memchr(p, '=', len);
            if (!eq)
                return xr_error_set(err, XR_E_INPUT, "spool record line %zu has no \"=\"",
                                    lineno);
            size_t klen = (size_t)(eq - p);
            const char *v = eq + 1;
            size_t vlen = (size_t)(le - v);
            bool ok = true;
#define KEY_IS(s) (klen == sizeof(s) - 1 && memcmp(p, s, klen) == 0)
            if (KEY_IS("received_at_us") || KEY_IS("assoc_id") || KEY_IS("dimse_status")) {
                char num[32];
                if (!copy_value(num, sizeof(num), v, vlen) || vlen == 0)
                    ok = false;
                else {
                    char *e;
                    errno = 0;
                    if (KEY_IS("dimse_status")) {
                        unsigned long s = strtoul(num, &e, 0);
                        ok = *e == '\0' && errno == 0 && s <= 0xFFFF;
                        status = (uint16_t)s;
                    } else if (KEY_IS("assoc_id")) {
                        unsigned long long a = strtoull(num, &e, 10);
                        ok = *e == '\0' && errno == 0;
                        m.assoc_id = a;
                    } else {
                        long long t = strtoll(num, &e, 10);
                        ok = *e == '\0' && errno == 0;
                        m.received_at_us = t;
                    }
                }
            } else if (KEY_IS("calling_ae"))
                ok = copy_value(m.calling_ae, sizeof(m.calling_ae), v, vlen);
            else if (KEY_IS("called_ae"))
                ok = copy_value(m.called_ae, sizeof(m.called_ae), v, vlen);
            else if (KEY_IS("peer_host"))
                ok = copy_value(m.peer_host, sizeof(m.peer_host), v, vlen);
            else if (KEY_IS("sop_class_uid"))
                ok = copy_value(m.sop_class_uid, sizeof(m.sop_class_uid), v, vlen);
            else if (KEY_IS("sop_instance_uid"))
                ok = copy_value(m.sop_instance_uid, sizeof(m.sop_instance_uid), v, vlen);
            else if (KEY_IS("transfer_syntax_uid"))
                ok = copy_value(m.transfer_syntax_uid, sizeof(m.transfer_syntax_uid), v, vlen);
            else if (KEY_IS("reason")) {
                if (ret_reason && reason_bytes) {
                    size_t c = vlen < reason_bytes - 1 ? vlen : reason_bytes - 1;
                    memcpy(ret_reason, v, c);
                    ret_reason[c] = '\0';
                }
            }
            /* Unknown keys are skipped: a newer xregd may add some. */
#undef KEY_IS
            if (!ok)
                return xr_error_set(err, XR_E_INPUT,
                                    "spool record line %zu: invalid or too long value for \"%.*s\"",
                                    lineno, (int)klen, p);
        }
        p = nl ? nl + 1 : end;
    }
    if (!have_header)
        return xr_error_set(err, XR_E_INPUT, "empty spool record");
    *ret_meta = m;
    if (ret_status)
        *ret_status = status;
    return XR_OK;
}

/* ---- paths --------------------------------------------------------------------------------- */

const char *spool_item_path(const spool *sp, const spool_item *item, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s.dcm",
             item->kind == SPOOL_KIND_REJECTED ? sp->rejected_dir : sp->incoming_dir, item->id);
    return buf;
}

const char *spool_item_meta_path(const spool *sp, const spool_item *item, char *buf, size_t n)
{
    if (item->kind == SPOOL_KIND_REJECTED)
        snprintf(buf, n, "%s/%s.reason", sp->rejected_dir, item->id);
    else
        snprintf(buf, n, "%s/%s.meta", sp->incoming_dir, item->id);
    return buf;
}

xr_code spool_meta_read(const spool *sp, const spool_item *item, spool_meta *ret_meta,
                        uint16_t *ret_status, char *ret_reason, size_t reason_bytes,
                        xr_error *err)
{
    char path[PATH_MAX];
    spool_item_meta_path(sp, item, path, sizeof(path));
    char *text;
    size_t n;
    xr_code rc = xr_fs_read_all(path, SPOOL_META_MAX_BYTES, &text, &n, err);
    if (rc)
        return rc;
    rc = spool_meta_parse(text, n, ret_meta, ret_status, ret_reason, reason_bytes, err);
    free(text);
    if (rc)
        xr_error_prefix(err, "reading \"%s\": ", path);
    return rc;
}

static void make_id(spool *sp, int64_t at_us, char id[SPOOL_ID_BYTES])
{
    uint64_t c = atomic_fetch_add(&sp->counter, 1) + 1;
    snprintf(id, SPOOL_ID_BYTES, "%016" PRId64 "-%ld-%06" PRIu64, at_us, (long)getpid(), c);
}

/* ---- commit and reject --------------------------------------------------------------------- */

xr_code spool_commit(spool *sp, const char *tmp_path, uint64_t n_bytes, const spool_meta *meta,
                     char ret_id[SPOOL_ID_BYTES], xr_error *err)
{
    xr_code rc = XR_OK;
    char id[SPOOL_ID_BYTES];
    char meta_tmp[PATH_MAX], meta_path[PATH_MAX], dcm_path[PATH_MAX];
    char *text = NULL;
    bool meta_placed = false;

    /* Reserve first so that concurrent associations cannot overshoot the budget together. */
    uint64_t max = atomic_load(&sp->max_bytes);
    uint64_t before = atomic_fetch_add(&sp->bytes, n_bytes);
    if (before + n_bytes > max) {
        atomic_fetch_sub(&sp->bytes, n_bytes);
        unlink(tmp_path);
        return xr_error_set(err, XR_E_LIMIT,
                            "spool is full: %" PRIu64 " bytes waiting, object of %" PRIu64
                            " bytes, spool.max_bytes is %" PRIu64,
                            before, n_bytes, max);
    }

    make_id(sp, meta->received_at_us, id);
    snprintf(meta_tmp, sizeof(meta_tmp), "%s/%s.meta", sp->tmp_dir, id);
    snprintf(meta_path, sizeof(meta_path), "%s/%s.meta", sp->incoming_dir, id);
    snprintf(dcm_path, sizeof(dcm_path), "%s/%s.dcm", sp->incoming_dir, id);

    size_t n;
    text = meta_format(meta, 0, NULL, &n);
    if (!text) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory formatting the spool record");
        goto fail;
    }
    /* The record lands first: a .meta alone is an unfinished commit, removed at start. Both
     * renames below are made durable by the one fsync of incoming/ at the end. */
    rc = xr_fs_write_new_sync(meta_tmp, text, n, err);
    if (rc)
        goto fail;
    if (rename(meta_tmp, meta_path) < 0) {
        rc = xr_error_errno(err, errno, "could not rename \"%s\"", meta_tmp);
        unlink(meta_tmp);
        goto fail;
    }
    meta_placed = true;
    rc = xr_fs_fsync_path(tmp_path, err);
    if (rc)
        goto fail;
    if (rename(tmp_path, dcm_path) < 0) {
        rc = xr_error_errno(err, errno, "could not rename \"%s\"", tmp_path);
        goto fail;
    }
    rc = xr_fs_fsync_dir(sp->incoming_dir, err);
    if (rc) {
        /* Not known to be durable: do not acknowledge, and do not register it either. */
        unlink(dcm_path);
        goto fail;
    }
    free(text);
    spool_item item = {.kind = SPOOL_KIND_INCOMING, .n_bytes = n_bytes};
    memcpy(item.id, id, sizeof(item.id));
    rc = queue_push(sp, &item, err);
    if (rc) {
        /* Durable but not queued: it will be picked up at the next start. */
        xr_log_write(XR_LOG_WARNING, "spool: %s queued only at next start: %s", id, err->msg);
        rc = XR_OK;
    }
    memcpy(ret_id, id, SPOOL_ID_BYTES);
    return XR_OK;

fail:
    free(text);
    if (meta_placed)
        unlink(meta_path);
    unlink(tmp_path);
    atomic_fetch_sub(&sp->bytes, n_bytes);
    return rc;
}

static xr_code move_to_rejected(spool *sp, const char *path, const spool_meta *meta,
                                uint16_t dimse_status, const char *reason,
                                char ret_id[SPOOL_ID_BYTES], xr_error *err)
{
    char id[SPOOL_ID_BYTES], dst[PATH_MAX], reason_path[PATH_MAX];
    make_id(sp, meta->received_at_us ? meta->received_at_us : xr_now_us(), id);
    snprintf(dst, sizeof(dst), "%s/%s.dcm", sp->rejected_dir, id);
    snprintf(reason_path, sizeof(reason_path), "%s/%s.reason", sp->rejected_dir, id);
    size_t n;
    char *text = meta_format(meta, dimse_status, reason, &n);
    if (!text)
        return xr_error_set(err, XR_E_NOMEM, "out of memory formatting the rejection record");
    xr_code rc = xr_fs_fsync_path(path, err);
    if (rc == XR_OK && rename(path, dst) < 0)
        rc = xr_error_errno(err, errno, "could not move \"%s\" to \"%s\"", path, dst);
    if (rc == XR_OK)
        rc = xr_fs_write_atomic(reason_path, text, n, err);
    free(text);
    if (rc)
        return rc;
    memcpy(ret_id, id, SPOOL_ID_BYTES);
    spool_item item = {.kind = SPOOL_KIND_REJECTED};
    memcpy(item.id, id, sizeof(item.id));
    if (queue_push(sp, &item, err))
        xr_log_write(XR_LOG_WARNING, "spool: rejection %s recorded only at next start", id);
    return XR_OK;
}

xr_code spool_reject(spool *sp, const char *path, const spool_meta *meta, uint16_t dimse_status,
                     const char *reason, char ret_id[SPOOL_ID_BYTES], xr_error *err)
{
    xr_code rc = move_to_rejected(sp, path, meta, dimse_status, reason, ret_id, err);
    if (rc)
        unlink(path);
    return rc;
}

void spool_done(spool *sp, const spool_item *item)
{
    char path[PATH_MAX];
    if (item->kind != SPOOL_KIND_INCOMING)
        return;
    /* The .dcm goes first: a lone .meta is cleaned at start, a lone .dcm would be re-registered. */
    if (unlink(spool_item_path(sp, item, path, sizeof(path))) < 0 && errno != ENOENT)
        xr_log_write(XR_LOG_WARNING, "spool: could not remove \"%s\": %m, ignoring", path);
    if (unlink(spool_item_meta_path(sp, item, path, sizeof(path))) < 0 && errno != ENOENT)
        xr_log_write(XR_LOG_WARNING, "spool: could not remove \"%s\": %m, ignoring", path);
    atomic_fetch_sub(&sp->bytes, item->n_bytes);
    atomic_fetch_sub(&sp->n_waiting, 1);
}

void spool_fail(spool *sp, const spool_item *item, const spool_meta *meta, const char *reason)
{
    char path[PATH_MAX], meta_path[PATH_MAX], id[SPOOL_ID_BYTES];
    xr_error err = XR_ERROR_INIT;
    spool_item_path(sp, item, path, sizeof(path));
    if (move_to_rejected(sp, path, meta, 0, reason, id, &err)) {
        xr_log_write(XR_LOG_ERR, "spool: could not move %s aside: %s; it stays in incoming/",
                     item->id, err.msg);
        return;
    }
    if (unlink(spool_item_meta_path(sp, item, meta_path, sizeof(meta_path))) < 0 &&
        errno != ENOENT)
        xr_log_write(XR_LOG_WARNING, "spool: could not remove \"%s\": %m, ignoring", meta_path);
    atomic_fetch_sub(&sp->bytes, item->n_bytes);
    atomic_fetch_sub(&sp->n_waiting, 1);
}

/* ---- open and recovery --------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names in dir ending with suffix, without it, sorted; caller frees each and the array. */
static xr_code list_ids(const char *dir, const char *suffix, char ***ret, size_t *ret_n,
                        xr_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return xr_error_errno(err, errno, "could not open directory \"%s\"", dir);
    char **v = NULL;
    size_t n = 0, cap = 0;
    size_t slen = strlen(suffix);
    struct dirent *de;
    xr_code rc = XR_OK;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len <= slen || len - slen >= SPOOL_ID_BYTES ||
            strcmp(de->d_name + len - slen, suffix) != 0)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            char **nv = realloc(v, ncap * sizeof(*nv));
            if (!nv) {
                rc = xr_error_set(err, XR_E_NOMEM, "out of memory scanning \"%s\"", dir);
                break;
            }
            v = nv;
            cap = ncap;
        }
        v[n] = strndup(de->d_name, len - slen);
        if (!v[n]) {
            rc = xr_error_set(err, XR_E_NOMEM, "out of memory scanning \"%s\"", dir);
            break;
        }
        n++;
    }
    closedir(d);
    if (rc) {
        for (size_t i = 0; i < n; i++)
            free(v[i]);
        free(v);
        return rc;
    }
    if (n)
        qsort(v, n, sizeof(*v), cmp_str);
    *ret = v;
    *ret_n = n;
    return XR_OK;
}

static void free_ids(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static bool id_in(char **v, size_t n, const char *id)
{
    return bsearch(&id, v, n, sizeof(*v), cmp_str) != NULL;
}

static xr_code spool_recover(spool *sp, xr_error *err)
{
    char path[PATH_MAX];
    /* tmp/: receptions and commits that never finished were never acknowledged. */
    DIR *d = opendir(sp->tmp_dir);
    if (!d)
        return xr_error_errno(err, errno, "could not open directory \"%s\"", sp->tmp_dir);
    struct dirent *de;
    unsigned n_tmp = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", sp->tmp_dir, de->d_name);
        if (unlink(path) == 0)
            n_tmp++;
    }
    closedir(d);
    if (n_tmp)
        xr_log_write(XR_LOG_NOTICE, "spool: removed %u unacknowledged partial receptions", n_tmp);

    char **dcm = NULL, **meta = NULL;
    size_t n_dcm = 0, n_meta = 0;
    xr_code rc = list_ids(sp->incoming_dir, ".dcm", &dcm, &n_dcm, err);
    if (rc)
        return rc;
    rc = list_ids(sp->incoming_dir, ".meta", &meta, &n_meta, err);
    if (rc) {
        free_ids(dcm, n_dcm);
        return rc;
    }
    for (size_t i = 0; i < n_meta; i++)
        if (!id_in(dcm, n_dcm, meta[i])) {
            snprintf(path, sizeof(path), "%s/%s.meta", sp->incoming_dir, meta[i]);
            unlink(path);
        }
    for (size_t i = 0; i < n_dcm && rc == XR_OK; i++) {
        spool_item item = {.kind = SPOOL_KIND_INCOMING};
        snprintf(item.id, sizeof(item.id), "%s", dcm[i]);
        struct stat st;
        if (stat(spool_item_path(sp, &item, path, sizeof(path)), &st) == 0)
            item.n_bytes = (uint64_t)st.st_size;
        atomic_fetch_add(&sp->bytes, item.n_bytes);
        rc = queue_push(sp, &item, err);
    }
    free_ids(dcm, n_dcm);
    free_ids(meta, n_meta);
    if (rc)
        return rc;

    char **rej = NULL;
    size_t n_rej = 0;
    rc = list_ids(sp->rejected_dir, ".reason", &rej, &n_rej, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n_rej && rc == XR_OK; i++) {
        spool_item item = {.kind = SPOOL_KIND_REJECTED};
        snprintf(item.id, sizeof(item.id), "%s", rej[i]);
        rc = queue_push(sp, &item, err);
    }
    free_ids(rej, n_rej);
    if (rc)
        return rc;
    xr_log_write(XR_LOG_INFO,
                 "spool: \"%s\": %zu objects (%" PRIu64 " bytes) waiting, %zu rejections to record",
                 sp->dir, (size_t)atomic_load(&sp->n_waiting), atomic_load(&sp->bytes), n_rej);
    return XR_OK;
}

xr_code spool_open(const char *dir, uint64_t max_bytes, spool **ret_spool, xr_error *err)
{
    spool *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    pthread_mutex_init(&sp->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sp->cond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_store(&sp->max_bytes, max_bytes);
    xr_code rc;
    if (!(sp->dir = strdup(dir)) || asprintf(&sp->tmp_dir, "%s/tmp", dir) < 0 ||
        asprintf(&sp->incoming_dir, "%s/incoming", dir) < 0 ||
        asprintf(&sp->rejected_dir, "%s/rejected", dir) < 0) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto fail;
    }
    const char *dirs[] = {sp->tmp_dir, sp->incoming_dir, sp->rejected_dir};
    for (size_t i = 0; i < 3; i++) {
        rc = xr_fs_mkdir_p(dirs[i], 0750, err);
        if (rc)
            goto fail;
        if (access(dirs[i], W_OK) < 0) {
            rc = xr_error_errno(err, errno, "cannot write to spool directory \"%s\"", dirs[i]);
            goto fail;
        }
    }
    rc = spool_recover(sp, err);
    if (rc)
        goto fail;
    *ret_spool = sp;
    return XR_OK;
fail:
    spool_close(sp);
    return rc;
}

spool *spool_close(spool *sp)
{
    if (!sp)
        return NULL;
    pthread_mutex_destroy(&sp->lock);
    pthread_cond_destroy(&sp->cond);
    free(sp->ring);
    free(sp->dir);
    free(sp->tmp_dir);
    free(sp->incoming_dir);
    free(sp->rejected_dir);
    free(sp);
    return NULL;
}
