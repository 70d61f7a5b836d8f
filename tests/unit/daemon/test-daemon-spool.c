/*
 * Spool: commit, budget at the limit and one past it, rejection, recovery after a crash (partial
 * receptions dropped, unfinished commits dropped, waiting objects replayed in order), records.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "spool.h"

static char root[64];

static int setup(void **state)
{
    (void)state;
    snprintf(root, sizeof(root), "/tmp/xr-spool-test.XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    return system(cmd);
}

/* A fake reception of n bytes in the spool's tmp dir. */
static void make_tmp(spool *sp, const char *name, size_t n, char *path, size_t path_bytes)
{
    snprintf(path, path_bytes, "%s/%s", spool_tmp_dir(sp), name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++)
        fputc('x', f);
    fclose(f);
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static spool_meta meta_for(const char *uid)
{
    spool_meta m = {.received_at_us = 1700000000000000, .assoc_id = 7};
    snprintf(m.calling_ae, sizeof(m.calling_ae), "CR01");
    snprintf(m.called_ae, sizeof(m.called_ae), "XREG");
    snprintf(m.peer_host, sizeof(m.peer_host), "127.0.0.1");
    snprintf(m.sop_class_uid, sizeof(m.sop_class_uid), "1.2.840.10008.5.1.4.1.1.1");
    snprintf(m.sop_instance_uid, sizeof(m.sop_instance_uid), "%s", uid);
    return m;
}

static void test_commit_budget_and_done(void **state)
{
    (void)state;
    char dir[128], path[256], id1[SPOOL_ID_BYTES], id2[SPOOL_ID_BYTES], id3[SPOOL_ID_BYTES];
    snprintf(dir, sizeof(dir), "%s/budget", root);
    spool *sp;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(spool_open(dir, 100 * 1024, &sp, &err), XR_OK);

    spool_meta m = meta_for("1.2.3.1");
    make_tmp(sp, "a.part", 60 * 1024, path, sizeof(path));
    assert_int_equal(spool_commit(sp, path, 60 * 1024, &m, id1, &err), XR_OK);
    assert_false(exists(path));
    /* exactly at the budget passes */
    make_tmp(sp, "b.part", 40 * 1024, path, sizeof(path));
    assert_int_equal(spool_commit(sp, path, 40 * 1024, &m, id2, &err), XR_OK);
    assert_int_equal(spool_bytes(sp), 100 * 1024);
    /* one byte past it is refused, and the reception is removed */
    make_tmp(sp, "c.part", 1, path, sizeof(path));
    assert_int_equal(spool_commit(sp, path, 1, &m, id3, &err), XR_E_LIMIT);
    assert_non_null(strstr(err.msg, "spool is full"));
    assert_false(exists(path));
    assert_int_equal(spool_bytes(sp), 100 * 1024);
    assert_int_equal(spool_depth(sp), 2);

    spool_item it;
    assert_true(spool_next(sp, &it));
    assert_string_equal(it.id, id1);
    assert_int_equal(it.kind, SPOOL_KIND_INCOMING);
    char p[512];
    assert_true(exists(spool_item_path(sp, &it, p, sizeof(p))));
    assert_true(exists(spool_item_meta_path(sp, &it, p, sizeof(p))));
    spool_meta back;
    assert_int_equal(spool_meta_read(sp, &it, &back, NULL, NULL, 0, &err), XR_OK);
    assert_string_equal(back.sop_instance_uid, "1.2.3.1");
    assert_string_equal(back.calling_ae, "CR01");
    assert_int_equal(back.received_at_us, 1700000000000000);
    spool_done(sp, &it);
    assert_false(exists(spool_item_path(sp, &it, p, sizeof(p))));
    assert_false(exists(spool_item_meta_path(sp, &it, p, sizeof(p))));
    assert_int_equal(spool_bytes(sp), 40 * 1024);
    /* room again */
    make_tmp(sp, "d.part", 60 * 1024, path, sizeof(path));
    assert_int_equal(spool_commit(sp, path, 60 * 1024, &m, id3, &err), XR_OK);
    sp = spool_close(sp);
}

typedef struct late_commit {
    spool *sp;
    int delay_ms;
    int n;
} late_commit;

static void *commit_later(void *arg)
{
    late_commit *lc = arg;
    for (int i = 0; i < lc->n; i++) {
        usleep((useconds_t)lc->delay_ms * 1000);
        char path[256], name[32], id[SPOOL_ID_BYTES];
        snprintf(name, sizeof(name), "late%d.part", i);
        make_tmp(lc->sp, name, 10, path, sizeof(path));
        spool_meta m = meta_for("1.2.3.9");
        xr_error err = XR_ERROR_INIT;
        if (spool_commit(lc->sp, path, 10, &m, id, &err))
            return NULL;
    }
    return NULL;
}

static void *shutdown_later(void *arg)
{
    usleep(50 * 1000);
    spool_shutdown(arg);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Batches: what is queued is taken at once up to max; a short batch waits wait_ms at most for
 * more; a full one returns without waiting; shutdown ends the wait. */
static void test_next_batch(void **state)
{
    (void)state;
    char dir[128], path[256], id[SPOOL_ID_BYTES];
    snprintf(dir, sizeof(dir), "%s/batch", root);
    spool *sp;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(spool_open(dir, 1024 * 1024, &sp, &err), XR_OK);
    char first[SPOOL_ID_BYTES] = "";
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof(name), "q%d.part", i);
        make_tmp(sp, name, 10, path, sizeof(path));
        spool_meta m = meta_for("1.2.3.5");
        assert_int_equal(spool_commit(sp, path, 10, &m, id, &err), XR_OK);
        if (i == 0)
            snprintf(first, sizeof(first), "%s", id);
    }
    spool_item items[8];
    double t0 = now_s();
    assert_int_equal(spool_next_batch(sp, items, 3, 5000), 3); /* full: no wait */
    assert_true(now_s() - t0 < 1.0);
    assert_string_equal(items[0].id, first); /* FIFO */
    assert_int_equal(spool_next_batch(sp, items, 3, 0), 2);    /* wait 0: what is there */
    for (int i = 0; i < 3; i++)
        spool_done(sp, &items[i]);

    /* one arrives now, two more 100 ms apart: a 3-batch fills before its 2 s wait ends */
    late_commit lc = {.sp = sp, .delay_ms = 100, .n = 3};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, commit_later, &lc), 0);
    t0 = now_s();
    assert_int_equal(spool_next_batch(sp, items, 3, 2000), 3);
    double took = now_s() - t0;
    pthread_join(th, NULL);
    assert_true(took < 1.5);

    /* a short batch returns after wait_ms with what it has */
    lc.n = 1;
    lc.delay_ms = 0;
    commit_later(&lc);
    t0 = now_s();
    assert_int_equal(spool_next_batch(sp, items, 4, 150), 1);
    took = now_s() - t0;
    assert_true(took >= 0.14 && took < 1.5);

    /* shutdown wakes a waiter: nothing taken */
    assert_int_equal(pthread_create(&th, NULL, shutdown_later, sp), 0);
    assert_int_equal(spool_next_batch(sp, items, 4, 150), 0);
    pthread_join(th, NULL);
    sp = spool_close(sp);
}

static void test_reject_and_fail(void **state)
{
    (void)state;
    char dir[128], path[256], id[SPOOL_ID_BYTES], p[512];
    snprintf(dir, sizeof(dir), "%s/reject", root);
    spool *sp;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(spool_open(dir, 1 << 20, &sp, &err), XR_OK);
    spool_meta m = meta_for("1.2.3.9");
    make_tmp(sp, "bad.part", 10, path, sizeof(path));
    assert_int_equal(spool_reject(sp, path, &m, 0xC000, "data set does not parse\nreally", id,
                                  &err),
                     XR_OK);
    assert_false(exists(path));
    spool_item it;
    assert_true(spool_next(sp, &it));
    assert_int_equal(it.kind, SPOOL_KIND_REJECTED);
    assert_string_equal(it.id, id);
    assert_true(exists(spool_item_path(sp, &it, p, sizeof(p))));
    uint16_t status;
    char reason[256];
    spool_meta back;
    assert_int_equal(spool_meta_read(sp, &it, &back, &status, reason, sizeof(reason), &err),
                     XR_OK);
    assert_int_equal(status, 0xC000);
    /* a newline in the reason cannot break the record */
    assert_string_equal(reason, "data set does not parse?really");
    spool_done(sp, &it); /* rejected files are never removed */
    assert_true(exists(spool_item_path(sp, &it, p, sizeof(p))));

    /* an acknowledged object that turns out bad moves to rejected/ */
    make_tmp(sp, "ok.part", 10, path, sizeof(path));
    assert_int_equal(spool_commit(sp, path, 10, &m, id, &err), XR_OK);
    assert_true(spool_next(sp, &it));
    char incoming[512];
    spool_item_path(sp, &it, incoming, sizeof(incoming));
    spool_fail(sp, &it, &m, "stored object no longer parses");
    assert_false(exists(incoming));
    assert_int_equal(spool_bytes(sp), 0);
    assert_true(spool_next(sp, &it));
    assert_int_equal(it.kind, SPOOL_KIND_REJECTED);
    assert_int_equal(spool_meta_read(sp, &it, &back, &status, reason, sizeof(reason), &err),
                     XR_OK);
    assert_int_equal(status, 0);
    assert_string_equal(reason, "stored object no longer parses");
    sp = spool_close(sp);
}

static void test_recovery(void **state)
{
    (void)state;
    char dir[128], path[256], id1[SPOOL_ID_BYTES], id2[SPOOL_ID_BYTES], p[512];
    snprintf(dir, sizeof(dir), "%s/recover", root);
    spool *sp;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(spool_open(dir, 1 << 20, &sp, &err), XR_OK);
    spool_meta m = meta_for("1.2.3.4");
    make_tmp(sp, "one.part", 100, path, sizeof(path));
    assert_int_equal(spool_commit(sp, path, 100, &m, id1, &err), XR_OK);
    make_tmp(sp, "two.part", 50, path, sizeof(path));
    assert_int_equal(spool_commit(sp, path, 50, &m, id2, &err), XR_OK);
    make_tmp(sp, "partial.part", 10, path, sizeof(path)); /* a reception cut by a crash */
    char orphan[512];
    snprintf(orphan, sizeof(orphan), "%s/incoming/0000000000000001-1-000001.meta", dir);
    FILE *f = fopen(orphan, "w"); /* a commit cut between its two renames */
    assert_non_null(f);
    fputs("xreg-spool-record 1\n", f);
    fclose(f);
    sp = spool_close(sp); /* "crash": nothing consumed */

    assert_int_equal(spool_open(dir, 1 << 20, &sp, &err), XR_OK);
    assert_false(exists(path));
    assert_false(exists(orphan));
    assert_int_equal(spool_bytes(sp), 150);
    assert_int_equal(spool_depth(sp), 2);
    spool_item it;
    assert_true(spool_next(sp, &it));
    assert_string_equal(it.id, id1); /* oldest first */
    assert_int_equal(it.n_bytes, 100);
    assert_true(spool_next(sp, &it));
    assert_string_equal(it.id, id2);
    assert_true(exists(spool_item_path(sp, &it, p, sizeof(p))));
    /* shutdown wakes waiters */
    spool_shutdown(sp);
    assert_false(spool_next(sp, &it));
    assert_false(spool_sleep(sp, 10000));
    sp = spool_close(sp);
}

static void test_meta_parse_errors(void **state)
{
    (void)state;
    spool_meta m;
    uint16_t st;
    char reason[16];
    xr_error err = XR_ERROR_INIT;
    const char *ok = "xreg-spool-record 1\nreceived_at_us=5\ncalling_ae=CR\nfuture_key=1\n"
                     "dimse_status=0xA900\nreason=this reason is longer than sixteen\n";
    assert_int_equal(spool_meta_parse(ok, strlen(ok), &m, &st, reason, sizeof(reason), &err),
                     XR_OK);
    assert_int_equal(m.received_at_us, 5);
    assert_int_equal(st, 0xA900);
    assert_string_equal(reason, "this reason is ");
    const char *cases[][2] = {
        {"", "empty spool record"},
        {"garbage\n", "not a spool record (expected \"xreg-spool-record 1\" on line 1)"},
        {"xreg-spool-record 1\nnoequals\n", "spool record line 2 has no \"=\""},
        {"xreg-spool-record 1\nreceived_at_us=12x\n",
         "spool record line 2: invalid or too long value for \"received_at_us\""},
        {"xreg-spool-record 1\ncalling_ae=01234567890123456\n",
         "spool record line 2: invalid or too long value for \"calling_ae\""},
        {"xreg-spool-record 1\ndimse_status=0x10000\n",
         "spool record line 2: invalid or too long value for \"dimse_status\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(spool_meta_parse(cases[i][0], strlen(cases[i][0]), &m, &st, NULL, 0,
                                          &err),
                         XR_E_INPUT);
        assert_string_equal(err.msg, cases[i][1]);
    }
    const char nul[] = "xreg-spool-record 1\ncalling_ae=A\0B\n";
    assert_int_equal(spool_meta_parse(nul, sizeof(nul) - 1, &m, &st, NULL, 0, &err), XR_E_INPUT);
    assert_string_equal(err.msg, "spool record line 2 contains a NUL byte");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_budget_and_done),
        cmocka_unit_test(test_reject_and_fail),
        cmocka_unit_test(test_next_batch),
        cmocka_unit_test(test_recovery),
        cmocka_unit_test(test_meta_parse_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
