/*
 * Metrics: exact exposition text (labels, gauges, gauge functions, histograms, escaping, number
 * formats), the series cap at the limit and one past it, refused names, exact totals under
 * concurrent updates, and the HTTP endpoint (every path, readiness flipping, 404/405, bind
 * failure, prompt stop) through a plain socket client.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "metrics.h"

/* ---- helpers ------------------------------------------------------------------------------ */

/* The number of lines of text that start with prefix. */
static size_t count_lines(const char *text, const char *prefix)
{
    size_t n = 0, len = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, len) == 0)
            n++;
    return n;
}

/* The value on the line that starts with "sample " (sample includes its labels). */
static double sample_value(const char *text, const char *sample)
{
    size_t len = strlen(sample);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, sample, len) == 0 && p[len] == ' ')
            return strtod(p + len + 1, NULL);
    fail_msg("no sample \"%s\" in:\n%s", sample, text);
    return NAN;
}

static double fn_value = 42.5;

static double gauge_fn(void *userdata)
{
    return *(double *)userdata;
}

/* ---- rendering ---------------------------------------------------------------------------- */

static void test_render_exact(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    assert_non_null(m);
    metrics_counter *plain = metrics_counter_new(m, "t_plain_total", "Plain counter", NULL, NULL);
    metrics_counter *one = metrics_counter_new(m, "t_one_total", "One label", "ae", NULL);
    metrics_counter *two = metrics_counter_new(m, "t_two_total", "Two labels", "outcome", "reason");
    metrics_gauge *g = metrics_gauge_new(m, "t_gauge", "A gauge", NULL);
    metrics_gauge *gl = metrics_gauge_new(m, "t_queue", "Help with \\ and\nnewline", "queue");
    assert_true(metrics_gauge_fn_new(m, "t_fn", "Computed at scrape time", gauge_fn, &fn_value));
    const double bounds[] = {0.25, 0.5, 1};
    metrics_histogram *h = metrics_histogram_new(m, "t_seconds", "Latency", "stage", bounds, 3);
    metrics_counter *esc = metrics_counter_new(m, "t_escape_total", "Escaping", "v", NULL);
    assert_non_null(plain);
    assert_non_null(one);
    assert_non_null(two);
    assert_non_null(g);
    assert_non_null(gl);
    assert_non_null(h);
    assert_non_null(esc);

    metrics_counter_add(plain, NULL, NULL, 3);
    metrics_counter_add(one, "B", NULL, 1);
    metrics_counter_add(one, "A", NULL, 2);
    metrics_counter_add(one, "B", NULL, 1);
    metrics_counter_add(two, "stored", "", 1);
    metrics_counter_add(two, "refused", "limit", 2);
    metrics_counter_add(two, "refused", "input", 0);
    metrics_gauge_set(g, NULL, 0.25);
    metrics_gauge_set(gl, "x", 1235);
    metrics_gauge_add(gl, "x", -1);
    metrics_gauge_add(gl, "a", -0.5);
    metrics_histogram_observe(h, "receive", 0.25); /* on a bound: counted in it (le) */
    metrics_histogram_observe(h, "receive", 0.5);
    metrics_histogram_observe(h, "receive", 2);
    metrics_histogram_observe(h, "decode", 0.125);
    metrics_histogram_observe(h, "decode", NAN); /* ignored */
    metrics_counter_add(esc, "a\"b\\c\nd", NULL, 1);

    const char *expected = "# HELP t_plain_total Plain counter\n"
                           "# TYPE t_plain_total counter\n"
                           "t_plain_total 3\n"
                           "# HELP t_one_total One label\n"
                           "# TYPE t_one_total counter\n"
                           "t_one_total{ae=\"A\"} 2\n"
                           "t_one_total{ae=\"B\"} 2\n"
                           "# HELP t_two_total Two labels\n"
                           "# TYPE t_two_total counter\n"
                           "t_two_total{outcome=\"refused\",reason=\"input\"} 0\n"
                           "t_two_total{outcome=\"refused\",reason=\"limit\"} 2\n"
                           "t_two_total{outcome=\"stored\",reason=\"\"} 1\n"
                           "# HELP t_gauge A gauge\n"
                           "# TYPE t_gauge gauge\n"
                           "t_gauge 0.25\n"
                           "# HELP t_queue Help with \\\\ and\\nnewline\n"
                           "# TYPE t_queue gauge\n"
                           "t_queue{queue=\"a\"} -0.5\n"
                           "t_queue{queue=\"x\"} 1234\n"
                           "# HELP t_fn Computed at scrape time\n"
                           "# TYPE t_fn gauge\n"
                           "t_fn 42.5\n"
                           "# HELP t_seconds Latency\n"
                           "# TYPE t_seconds histogram\n"
                           "t_seconds_bucket{stage=\"decode\",le=\"0.25\"} 1\n"
                           "t_seconds_bucket{stage=\"decode\",le=\"0.5\"} 1\n"
                           "t_seconds_bucket{stage=\"decode\",le=\"1\"} 1\n"
                           "t_seconds_bucket{stage=\"decode\",le=\"+Inf\"} 1\n"
                           "t_seconds_sum{stage=\"decode\"} 0.125\n"
                           "t_seconds_count{stage=\"decode\"} 1\n"
                           "t_seconds_bucket{stage=\"receive\",le=\"0.25\"} 1\n"
                           "t_seconds_bucket{stage=\"receive\",le=\"0.5\"} 2\n"
                           "t_seconds_bucket{stage=\"receive\",le=\"1\"} 2\n"
                           "t_seconds_bucket{stage=\"receive\",le=\"+Inf\"} 3\n"
                           "t_seconds_sum{stage=\"receive\"} 2.75\n"
                           "t_seconds_count{stage=\"receive\"} 3\n"
                           "# HELP t_escape_total Escaping\n"
                           "# TYPE t_escape_total counter\n"
                           "t_escape_total{v=\"a\\\"b\\\\c\\nd\"} 1\n";
    char *text = metrics_render(m);
    assert_non_null(text);
    assert_string_equal(text, expected);
    free(text);

    /* The gauge function runs at each render. */
    fn_value = -3;
    text = metrics_render(m);
    assert_non_null(text);
    assert_non_null(strstr(text, "\nt_fn -3\n"));
    free(text);
    fn_value = 42.5;
    m = metrics_free(m);
    assert_null(m);
    assert_null(metrics_free(NULL));
}

static void test_render_empty_and_unlabeled_histogram(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    char *text = metrics_render(m);
    assert_string_equal(text, "");
    free(text);

    /* No labels: rendered at zero before any observation. The latency buckets print the way
     * Prometheus clients print them; a trailing +Inf bound is dropped, not doubled. */
    assert_int_equal(metrics_n_latency_buckets, 15);
    assert_true(metrics_latency_buckets[0] == 0.001);
    assert_true(metrics_latency_buckets[metrics_n_latency_buckets - 1] == 60);
    for (size_t i = 1; i < metrics_n_latency_buckets; i++)
        assert_true(metrics_latency_buckets[i] > metrics_latency_buckets[i - 1]);
    metrics_histogram *h = metrics_histogram_new(
        m, "t_lat_seconds", "", NULL, metrics_latency_buckets, metrics_n_latency_buckets);
    const double with_inf[] = {1, INFINITY};
    metrics_histogram *hi = metrics_histogram_new(m, "t_inf", "With +Inf", NULL, with_inf, 2);
    metrics_counter *c = metrics_counter_new(m, "t_labeled_total", "No series yet", "x", NULL);
    assert_non_null(h);
    assert_non_null(hi);
    assert_non_null(c);
    text = metrics_render(m);
    const char *expected = "# TYPE t_lat_seconds histogram\n"
                           "t_lat_seconds_bucket{le=\"0.001\"} 0\n"
                           "t_lat_seconds_bucket{le=\"0.0025\"} 0\n"
                           "t_lat_seconds_bucket{le=\"0.005\"} 0\n"
                           "t_lat_seconds_bucket{le=\"0.01\"} 0\n"
                           "t_lat_seconds_bucket{le=\"0.025\"} 0\n"
                           "t_lat_seconds_bucket{le=\"0.05\"} 0\n"
                           "t_lat_seconds_bucket{le=\"0.1\"} 0\n"
                           "t_lat_seconds_bucket{le=\"0.25\"} 0\n"
                           "t_lat_seconds_bucket{le=\"0.5\"} 0\n"
                           "t_lat_seconds_bucket{le=\"1\"} 0\n"
                           "t_lat_seconds_bucket{le=\"2.5\"} 0\n"
                           "t_lat_seconds_bucket{le=\"5\"} 0\n"
                           "t_lat_seconds_bucket{le=\"10\"} 0\n"
                           "t_lat_seconds_bucket{le=\"25\"} 0\n"
                           "t_lat_seconds_bucket{le=\"60\"} 0\n"
                           "t_lat_seconds_bucket{le=\"+Inf\"} 0\n"
                           "t_lat_seconds_sum 0\n"
                           "t_lat_seconds_count 0\n"
                           "# HELP t_inf With +Inf\n"
                           "# TYPE t_inf histogram\n"
                           "t_inf_bucket{le=\"1\"} 0\n"
                           "t_inf_bucket{le=\"+Inf\"} 0\n"
                           "t_inf_sum 0\n"
                           "t_inf_count 0\n"
                           "# HELP t_labeled_total No series yet\n"
                           "# TYPE t_labeled_total counter\n";
    assert_string_equal(text, expected);
    free(text);
    metrics_free(m);
}

static void test_number_format(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    metrics_gauge *g = metrics_gauge_new(m, "n", "Numbers", "v");
    assert_non_null(g);
    const struct {
        const char *label;
        double value;
        const char *text;
    } cases[] = {
        {"a", 1234, "1234"},
        {"b", 0.25, "0.25"},
        {"c", 1e-05, "1e-05"},
        {"d", 0.1, "0.1"},
        {"e", 1.0 / 3, "0.3333333333333333"},
        {"f", -7, "-7"},
        {"g", 123456789012345, "123456789012345"},
        {"h", 1e20, "1e+20"},
        {"i", NAN, "NaN"},
        {"j", INFINITY, "+Inf"},
        {"k", -INFINITY, "-Inf"},
        {"l", -0.0, "0"},
        {"m", 0.1 + 0.2, "0.30000000000000004"},
        {"n", 1e15, "1e+15"},
        {"o", 2.5e-300, "2.5e-300"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        metrics_gauge_set(g, cases[i].label, cases[i].value);
    char *text = metrics_render(m);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char line[128];
        snprintf(line, sizeof(line), "\nn{v=\"%s\"} %s\n", cases[i].label, cases[i].text);
        if (!strstr(text, line))
            fail_msg("missing \"%s\" in:\n%s", line + 1, text);
    }
    free(text);
    metrics_free(m);
}

/* ---- the series cap --------------------------------------------------------------------- */

static void test_series_cap(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    metrics_counter *c = metrics_counter_new(m, "t_ae_total", "Per AE", "ae", NULL);
    metrics_counter *c2 = metrics_counter_new(m, "t_pair_total", "Per pair", "a", "b");
    metrics_histogram *h =
        metrics_histogram_new(m, "t_h_seconds", "Per stage", "stage", (const double[]){1}, 1);
    assert_non_null(c);
    assert_non_null(c2);
    assert_non_null(h);
    char v[32];
    /* At the limit: METRICS_MAX_SERIES distinct values, each its own series. */
    for (int i = 0; i < METRICS_MAX_SERIES; i++) {
        snprintf(v, sizeof(v), "AE%03d", i);
        metrics_counter_add(c, v, NULL, 1);
        metrics_counter_add(c2, v, "x", 1);
        metrics_histogram_observe(h, v, 0.5);
    }
    char *text = metrics_render(m);
    assert_int_equal(count_lines(text, "t_ae_total{"), METRICS_MAX_SERIES);
    assert_int_equal(count_lines(text, "t_pair_total{"), METRICS_MAX_SERIES);
    assert_int_equal(count_lines(text, "t_h_seconds_count{"), METRICS_MAX_SERIES);
    assert_null(strstr(text, "_other_"));
    free(text);

    /* One past it, and more: folded into _other_; known values still count on their own. */
    metrics_counter_add(c, "NEW1", NULL, 1);
    metrics_counter_add(c, "NEW2", NULL, 2);
    metrics_counter_add(c, "AE010", NULL, 5);
    metrics_counter_add(c2, "NEW1", "y", 1);
    metrics_counter_add(c2, "AE000", "z", 1); /* a new pair, even with a known first value */
    metrics_histogram_observe(h, "NEW1", 2);
    text = metrics_render(m);
    assert_int_equal(count_lines(text, "t_ae_total{"), METRICS_MAX_SERIES + 1);
    assert_true(sample_value(text, "t_ae_total{ae=\"_other_\"}") == 3);
    assert_true(sample_value(text, "t_ae_total{ae=\"AE010\"}") == 6);
    assert_null(strstr(text, "NEW"));
    assert_int_equal(count_lines(text, "t_pair_total{"), METRICS_MAX_SERIES + 1);
    assert_true(sample_value(text, "t_pair_total{a=\"_other_\",b=\"_other_\"}") == 2);
    assert_int_equal(count_lines(text, "t_h_seconds_count{"), METRICS_MAX_SERIES + 1);
    assert_true(sample_value(text, "t_h_seconds_bucket{stage=\"_other_\",le=\"+Inf\"}") == 1);
    assert_true(sample_value(text, "t_h_seconds_sum{stage=\"_other_\"}") == 2);
    free(text);
    metrics_free(m);
}

static void test_label_value_normalized(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    metrics_counter *c = metrics_counter_new(m, "t_total", "Values", "v", NULL);
    char long1[300], long2[300];
    memset(long1, 'x', sizeof(long1) - 1);
    long1[sizeof(long1) - 1] = '\0';
    memcpy(long2, long1, sizeof(long2));
    long2[200] = 'y'; /* differs past the cut: the same series */
    metrics_counter_add(c, long1, NULL, 1);
    metrics_counter_add(c, long2, NULL, 1);
    metrics_counter_add(c, "bad\xff", NULL, 1);
    metrics_counter_add(c, "bad?", NULL, 1);
    metrics_counter_add(c, NULL, NULL, 1);
    metrics_counter_add(c, "caf\xc3\xa9", NULL, 1); /* valid UTF-8 kept */
    /* At the limit (128 bytes) kept whole; one past it cut to the same value. */
    char at[129], past[130];
    memset(at, 'z', 128);
    at[128] = '\0';
    memset(past, 'z', 129);
    past[129] = '\0';
    metrics_counter_add(c, at, NULL, 1);
    metrics_counter_add(c, past, NULL, 1);
    char *text = metrics_render(m);
    char expected[512];
    snprintf(expected, sizeof(expected), "t_total{v=\"%.128s\"} 2\n", long1);
    assert_non_null(strstr(text, expected));
    assert_non_null(strstr(text, "\nt_total{v=\"bad?\"} 2\n"));
    assert_non_null(strstr(text, "\nt_total{v=\"\"} 1\n"));
    assert_non_null(strstr(text, "\nt_total{v=\"caf\xc3\xa9\"} 1\n"));
    snprintf(expected, sizeof(expected), "\nt_total{v=\"%s\"} 2\n", at);
    assert_non_null(strstr(text, expected));
    assert_int_equal(count_lines(text, "t_total{"), 5);
    free(text);
    metrics_free(m);
}

/* ---- refused names ------------------------------------------------------------------------ */

static void test_invalid_names(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    const double b[] = {1, 2};
    const char *bad_names[] = {"", "1abc", "a-b", "a b", "a.b", "é"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        assert_null(metrics_counter_new(m, bad_names[i], "h", NULL, NULL));
        assert_null(metrics_gauge_new(m, bad_names[i], "h", NULL));
        assert_false(metrics_gauge_fn_new(m, bad_names[i], "h", gauge_fn, &fn_value));
        assert_null(metrics_histogram_new(m, bad_names[i], "h", NULL, b, 2));
    }
    assert_null(metrics_counter_new(m, NULL, "h", NULL, NULL));
    /* Names at the limit (128 bytes) and one past it. */
    char name[130];
    memset(name, 'a', 129);
    name[129] = '\0';
    assert_null(metrics_counter_new(m, name, "h", NULL, NULL));
    assert_null(metrics_counter_new(m, "c1", "h", name, NULL));
    name[128] = '\0';
    assert_non_null(metrics_counter_new(m, name, "h", name, NULL));

    /* label names */
    assert_null(metrics_counter_new(m, "c1", "h", "__reserved", NULL));
    assert_null(metrics_counter_new(m, "c1", "h", "1a", NULL));
    assert_null(metrics_counter_new(m, "c1", "h", "a:b", NULL));
    assert_null(metrics_counter_new(m, "c1", "h", "a", "a"));
    assert_null(metrics_counter_new(m, "c1", "h", NULL, "b"));
    assert_null(metrics_histogram_new(m, "h1", "h", "le", b, 2));

    /* buckets */
    assert_null(metrics_histogram_new(m, "h1", "h", NULL, (const double[]){2, 1}, 2));
    assert_null(metrics_histogram_new(m, "h1", "h", NULL, (const double[]){1, 1}, 2));
    assert_null(metrics_histogram_new(m, "h1", "h", NULL, (const double[]){1, NAN}, 2));
    assert_null(metrics_histogram_new(m, "h1", "h", NULL, NULL, 2));
    double many[65];
    for (size_t i = 0; i < 65; i++)
        many[i] = (double)i;
    assert_null(metrics_histogram_new(m, "h1", "h", NULL, many, 65));
    assert_non_null(metrics_histogram_new(m, "h64", "h", NULL, many, 64));

    /* gauge function */
    assert_false(metrics_gauge_fn_new(m, "f1", "h", NULL, NULL));

    /* valid, then taken (also through a histogram's _bucket/_sum/_count) */
    assert_non_null(metrics_counter_new(m, "ns:ok_total", "h", "a_1", "B2"));
    assert_null(metrics_counter_new(m, "ns:ok_total", "h", NULL, NULL));
    assert_null(metrics_gauge_new(m, "ns:ok_total", "h", NULL));
    assert_non_null(metrics_histogram_new(m, "lat", "h", NULL, b, 2));
    assert_null(metrics_counter_new(m, "lat_count", "h", NULL, NULL));
    assert_null(metrics_gauge_new(m, "lat_bucket", "h", NULL));
    assert_non_null(metrics_counter_new(m, "x_sum", "h", NULL, NULL));
    assert_null(metrics_histogram_new(m, "x", "h", NULL, b, 2));
    assert_false(metrics_gauge_fn_new(m, "x_sum", "h", gauge_fn, &fn_value));

    /* A NULL family is a no-op, so a daemon that failed to create one keeps running. */
    metrics_counter_add(NULL, "a", "b", 1);
    metrics_gauge_set(NULL, "a", 1);
    metrics_gauge_add(NULL, "a", 1);
    metrics_histogram_observe(NULL, "a", 1);

    /* Nothing refused made it into the output. */
    char *text = metrics_render(m);
    assert_int_equal(count_lines(text, "# TYPE "), 5);
    free(text);
    metrics_free(m);
}

/* ---- concurrency -------------------------------------------------------------------------- */

#define N_THREADS 4
#define N_ADDS 100000

typedef struct hammer {
    metrics_counter *plain;
    metrics_counter *labeled;
    metrics_gauge *gauge;
    metrics_histogram *hist;
    int id;
} hammer;

static void *hammer_run(void *arg)
{
    const hammer *h = arg;
    const char *ae[] = {"CR01", "CT02", "MR03"};
    for (int i = 0; i < N_ADDS; i++) {
        metrics_counter_add(h->plain, NULL, NULL, 1);
        metrics_counter_add(h->labeled, ae[(i + h->id) % 3], i % 2 ? "odd" : "even", 1);
        metrics_gauge_add(h->gauge, "g", 1);
        metrics_histogram_observe(h->hist, "s", (i % 4) * 0.5);
    }
    return NULL;
}

static atomic_bool render_stop;
static atomic_bool render_failed;

/* Scrapes while the hammers run (cmocka's asserts are for the main thread only). */
static void *render_run(void *arg)
{
    metrics *m = arg;
    while (!atomic_load(&render_stop)) {
        char *text = metrics_render(m);
        if (!text)
            atomic_store(&render_failed, true);
        free(text);
    }
    return NULL;
}

static void test_concurrent_adds(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    const double b[] = {0.5, 1};
    hammer base = {
        .plain = metrics_counter_new(m, "t_plain_total", "h", NULL, NULL),
        .labeled = metrics_counter_new(m, "t_labeled_total", "h", "ae", "parity"),
        .gauge = metrics_gauge_new(m, "t_gauge", "h", "g"),
        .hist = metrics_histogram_new(m, "t_seconds", "h", "s", b, 2),
    };
    hammer hs[N_THREADS];
    pthread_t th[N_THREADS], renderer;
    atomic_store(&render_stop, false);
    assert_int_equal(pthread_create(&renderer, NULL, render_run, m), 0);
    for (int i = 0; i < N_THREADS; i++) {
        hs[i] = base;
        hs[i].id = i;
        assert_int_equal(pthread_create(&th[i], NULL, hammer_run, &hs[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    atomic_store(&render_stop, true);
    assert_int_equal(pthread_join(renderer, NULL), 0);
    assert_false(atomic_load(&render_failed));

    char *text = metrics_render(m);
    const double total = (double)N_THREADS * N_ADDS;
    assert_true(sample_value(text, "t_plain_total") == total);
    double labeled = 0;
    const char *ae[] = {"CR01", "CT02", "MR03"};
    for (size_t a = 0; a < 3; a++)
        for (size_t p = 0; p < 2; p++) {
            char s[128];
            snprintf(s, sizeof(s), "t_labeled_total{ae=\"%s\",parity=\"%s\"}", ae[a],
                     p ? "odd" : "even");
            labeled += sample_value(text, s);
        }
    assert_true(labeled == total);
    assert_true(sample_value(text, "t_gauge{g=\"g\"}") == total);
    /* values 0, 0.5, 1, 1.5 in turn: a quarter each */
    assert_true(sample_value(text, "t_seconds_bucket{s=\"s\",le=\"0.5\"}") == total / 2);
    assert_true(sample_value(text, "t_seconds_bucket{s=\"s\",le=\"1\"}") == total * 3 / 4);
    assert_true(sample_value(text, "t_seconds_bucket{s=\"s\",le=\"+Inf\"}") == total);
    assert_true(sample_value(text, "t_seconds_count{s=\"s\"}") == total);
    assert_true(sample_value(text, "t_seconds_sum{s=\"s\"}") == total * 0.75);
    free(text);
    metrics_free(m);
}

/* ---- HTTP --------------------------------------------------------------------------------- */

/* A port nothing listens on right now: bind port 0, read it back, close. */
static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* A connected socket to address:port (IPv4 or IPv6), or -1 with errno. */
static int connect_to(const char *address, uint16_t port)
{
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } sa;
    socklen_t len;
    if (inet_pton(AF_INET, address, &sa.in.sin_addr) == 1) {
        sa.in.sin_family = AF_INET;
        sa.in.sin_port = htons(port);
        len = sizeof(sa.in);
    } else {
        memset(&sa.in6, 0, sizeof(sa.in6));
        assert_int_equal(inet_pton(AF_INET6, address, &sa.in6.sin6_addr), 1);
        sa.in6.sin6_family = AF_INET6;
        sa.in6.sin6_port = htons(port);
        len = sizeof(sa.in6);
    }
    int fd = socket(sa.sa.sa_family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, &sa.sa, len) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

typedef struct http_reply {
    int status;
    char *raw;        /* the whole response, NUL-terminated */
    const char *body; /* inside raw */
} http_reply;

/* Send method + path with "Connection: close" and read the reply to EOF. */
static http_reply http_do(const char *address, uint16_t port, const char *method, const char *path)
{
    int fd = connect_to(address, port);
    if (fd < 0)
        fail_msg("connect to port %u: %s", (unsigned)port, strerror(errno));
    /* POST and PUT carry a small body, to check it does not confuse the server. */
    bool body = strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0;
    char req[256];
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s\r\n%s", method,
                     path, body ? "Content-Length: 3\r\n" : "", body ? "abc" : "");
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    size_t cap = 4096, len = 0;
    char *raw = malloc(cap);
    assert_non_null(raw);
    for (;;) {
        if (cap - len < 1024) {
            cap *= 2;
            raw = realloc(raw, cap);
            assert_non_null(raw);
        }
        ssize_t r = recv(fd, raw + len, cap - len - 1, 0);
        if (r < 0)
            fail_msg("recv: %s", strerror(errno));
        if (r == 0)
            break;
        len += (size_t)r;
    }
    raw[len] = '\0';
    close(fd);
    http_reply rep = {.raw = raw};
    assert_int_equal(sscanf(raw, "HTTP/1.1 %d", &rep.status), 1);
    const char *sep = strstr(raw, "\r\n\r\n");
    assert_non_null(sep);
    rep.body = sep + 4;
    return rep;
}

/* The value of header name (case-insensitive), copied into buf; false if absent. */
static bool header(const http_reply *rep, const char *name, char *buf, size_t bytes)
{
    size_t len = strlen(name);
    const char *end = strstr(rep->raw, "\r\n\r\n");
    for (const char *p = strstr(rep->raw, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, len) == 0 && line[len] == ':') {
            const char *v = line + len + 1;
            while (*v == ' ')
                v++;
            size_t vlen = (size_t)(strstr(v, "\r\n") - v);
            snprintf(buf, bytes, "%.*s", (int)vlen, v);
            return true;
        }
    }
    return false;
}

static atomic_bool test_ready;

static bool ready_cb(void *userdata, char *why, size_t why_bytes)
{
    assert_ptr_equal(userdata, &test_ready);
    if (atomic_load(&test_ready))
        return true;
    snprintf(why, why_bytes, "database down\nsecond line");
    return false;
}

static atomic_bool status_fails;

static char *status_cb(void *userdata)
{
    (void)userdata;
    return atomic_load(&status_fails) ? NULL : strdup("{\"ready\":true}");
}

static char *status_text_cb(void *userdata)
{
    (void)userdata;
    return atomic_load(&status_fails) ? NULL : strdup("xregd: ready\n");
}

static void test_http_endpoints(void **state)
{
    (void)state;
    metrics *m = metrics_new();
    metrics_counter *c = metrics_counter_new(m, "t_requests_total", "Requests", "ae", NULL);
    metrics_counter_add(c, "CR01", NULL, 7);
    uint16_t port = free_port();
    http_server_params p = {.bind_address = "",
                            .port = port,
                            .m = m,
                            .ready = ready_cb,
                            .status = status_cb,
                            .status_text = status_text_cb,
                            .userdata = &test_ready};
    http_server *srv = NULL;
    xr_error err = XR_ERROR_INIT;
    atomic_store(&test_ready, true);
    atomic_store(&status_fails, false);
    assert_int_equal(http_server_start(&p, &srv, &err), XR_OK);
    assert_non_null(srv);
    char h[256];

    http_reply r = http_do("127.0.0.1", port, "GET", "/metrics");
    assert_int_equal(r.status, 200);
    assert_true(header(&r, "Content-Type", h, sizeof(h)));
    assert_string_equal(h, "text/plain; version=0.0.4; charset=utf-8");
    char *expected = metrics_render(m);
    assert_string_equal(r.body, expected);
    assert_non_null(strstr(r.body, "t_requests_total{ae=\"CR01\"} 7\n"));
    free(expected);
    free(r.raw);

    /* A query string does not change the resource. */
    r = http_do("127.0.0.1", port, "GET", "/metrics?name[]=x");
    assert_int_equal(r.status, 200);
    free(r.raw);

    r = http_do("127.0.0.1", port, "HEAD", "/metrics");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "");
    free(r.raw);

    r = http_do("127.0.0.1", port, "GET", "/healthz");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    assert_true(header(&r, "Content-Type", h, sizeof(h)));
    assert_string_equal(h, "text/plain; charset=utf-8");
    free(r.raw);

    r = http_do("127.0.0.1", port, "GET", "/readyz");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ready\n");
    free(r.raw);
    atomic_store(&test_ready, false);
    r = http_do("127.0.0.1", port, "GET", "/readyz");
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "not ready: database down second line\n");
    free(r.raw);
    atomic_store(&test_ready, true);
    r = http_do("127.0.0.1", port, "GET", "/readyz");
    assert_int_equal(r.status, 200);
    free(r.raw);

    r = http_do("127.0.0.1", port, "GET", "/status");
    assert_int_equal(r.status, 200);
    assert_true(header(&r, "Content-Type", h, sizeof(h)));
    assert_string_equal(h, "application/json");
    assert_string_equal(r.body, "{\"ready\":true}");
    free(r.raw);
    r = http_do("127.0.0.1", port, "GET", "/status?format=json");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"ready\":true}");
    free(r.raw);
    r = http_do("127.0.0.1", port, "GET", "/status?format=text");
    assert_int_equal(r.status, 200);
    assert_true(header(&r, "Content-Type", h, sizeof(h)));
    assert_string_equal(h, "text/plain; charset=utf-8");
    assert_string_equal(r.body, "xregd: ready\n");
    free(r.raw);
    r = http_do("127.0.0.1", port, "GET", "/status?format=xml");
    assert_int_equal(r.status, 400);
    free(r.raw);
    atomic_store(&status_fails, true);
    r = http_do("127.0.0.1", port, "GET", "/status");
    assert_int_equal(r.status, 500);
    free(r.raw);
    r = http_do("127.0.0.1", port, "GET", "/status?format=text");
    assert_int_equal(r.status, 500);
    free(r.raw);

    const char *missing[] = {"/", "/metrics/", "/nope", "/METRICS", "/healthz/x"};
    for (size_t i = 0; i < sizeof(missing) / sizeof(missing[0]); i++) {
        r = http_do("127.0.0.1", port, "GET", missing[i]);
        assert_int_equal(r.status, 404);
        free(r.raw);
    }

    const char *methods[] = {"POST", "PUT", "DELETE", "OPTIONS"};
    const char *paths[] = {"/metrics", "/healthz", "/readyz", "/status"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        r = http_do("127.0.0.1", port, methods[i], paths[i]);
        assert_int_equal(r.status, 405);
        assert_true(header(&r, "Allow", h, sizeof(h)));
        assert_string_equal(h, "GET, HEAD");
        free(r.raw);
    }

    srv = http_server_stop(srv);
    assert_null(srv);
    assert_null(http_server_stop(NULL));
    metrics_free(m);
}

static void test_http_no_status_no_ready(void **state)
{
    (void)state;
    uint16_t port = free_port();
    http_server_params p = {.bind_address = "127.0.0.1", .port = port};
    http_server *srv = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(http_server_start(&p, &srv, &err), XR_OK);
    http_reply r = http_do("127.0.0.1", port, "GET", "/status");
    assert_int_equal(r.status, 404);
    free(r.raw);
    r = http_do("127.0.0.1", port, "GET", "/readyz");
    assert_int_equal(r.status, 200);
    free(r.raw);
    r = http_do("127.0.0.1", port, "GET", "/metrics");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "");
    free(r.raw);
    http_server_stop(srv);

    /* Only the text status: JSON is 404, text is served. */
    p.status_text = status_text_cb;
    atomic_store(&status_fails, false);
    assert_int_equal(http_server_start(&p, &srv, &err), XR_OK);
    r = http_do("127.0.0.1", port, "GET", "/status");
    assert_int_equal(r.status, 404);
    free(r.raw);
    r = http_do("127.0.0.1", port, "GET", "/status?format=text");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "xregd: ready\n");
    free(r.raw);
    http_server_stop(srv);
}

static void test_http_ipv6(void **state)
{
    (void)state;
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    socklen_t len = sizeof(sa);
    if (have_v6)
        assert_int_equal(getsockname(probe, (struct sockaddr *)&sa, &len), 0);
    if (probe >= 0)
        close(probe);
    if (!have_v6)
        skip(); /* no IPv6 loopback in this sandbox */
    uint16_t port = ntohs(sa.sin6_port);
    http_server_params p = {.bind_address = "::1", .port = port};
    http_server *srv = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(http_server_start(&p, &srv, &err), XR_OK);
    http_reply r = http_do("::1", port, "GET", "/healthz");
    assert_int_equal(r.status, 200);
    free(r.raw);

    /* The message shows an IPv6 endpoint in brackets. */
    http_server *again = NULL;
    assert_int_equal(http_server_start(&p, &again, &err), XR_E_IO);
    assert_null(again);
    char msg[128];
    snprintf(msg, sizeof(msg), "could not listen on [::1]:%u for metrics: Address already in use",
             (unsigned)port);
    assert_string_equal(err.msg, msg);
    http_server_stop(srv);
}

static void test_http_bind_failure(void **state)
{
    (void)state;
    /* Someone else listens on the port. */
    int blocker = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(blocker, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(blocker, 1), 0);
    assert_int_equal(getsockname(blocker, (struct sockaddr *)&sa, &len), 0);
    uint16_t port = ntohs(sa.sin_port);

    http_server_params p = {.bind_address = "", .port = port};
    http_server *srv = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(http_server_start(&p, &srv, &err), XR_E_IO);
    assert_null(srv);
    assert_int_equal(err.code, XR_E_IO);
    assert_int_equal(err.sys_errno, EADDRINUSE);
    char msg[128];
    snprintf(msg, sizeof(msg),
             "could not listen on 127.0.0.1:%u for metrics: Address already in use",
             (unsigned)port);
    assert_string_equal(err.msg, msg);
    close(blocker);

    /* Our own server holds it: a second one fails the same way, the first keeps serving. */
    port = free_port();
    p.port = port;
    assert_int_equal(http_server_start(&p, &srv, &err), XR_OK);
    http_server *second = NULL;
    xr_error err2 = XR_ERROR_INIT;
    assert_int_equal(http_server_start(&p, &second, &err2), XR_E_IO);
    assert_null(second);
    assert_int_equal(err2.sys_errno, EADDRINUSE);
    http_reply r = http_do("127.0.0.1", port, "GET", "/healthz");
    assert_int_equal(r.status, 200);
    free(r.raw);
    http_server_stop(srv);

    /* Not an address at all. */
    const char *bad[] = {"localhost", "127.0.0.1:80", "[::1]", "1.2.3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        p.bind_address = bad[i];
        assert_int_equal(http_server_start(&p, &srv, &err), XR_E_CONFIG);
        char want[128];
        snprintf(want, sizeof(want), "invalid metrics bind address \"%s\"", bad[i]);
        assert_string_equal(err.msg, want);
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_http_stop_prompt(void **state)
{
    (void)state;
    uint16_t port = free_port();
    http_server_params p = {.bind_address = "127.0.0.1", .port = port};
    http_server *srv = NULL;
    xr_error err = XR_ERROR_INIT;
    for (int round = 0; round < 3; round++) {
        /* The port is free again at once after a stop. */
        assert_int_equal(http_server_start(&p, &srv, &err), XR_OK);
        /* An idle connection, a half-sent request and a kept-alive one: none may hold the stop
         * for the connection timeout (10 s). */
        int idle = connect_to("127.0.0.1", port);
        int half = connect_to("127.0.0.1", port);
        int alive = connect_to("127.0.0.1", port);
        assert_true(idle >= 0 && half >= 0 && alive >= 0);
        const char *part = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
        assert_int_equal(send(half, part, strlen(part), MSG_NOSIGNAL), (ssize_t)strlen(part));
        const char *full = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_int_equal(send(alive, full, strlen(full), MSG_NOSIGNAL), (ssize_t)strlen(full));
        char buf[512];
        assert_true(recv(alive, buf, sizeof(buf), 0) > 0);

        double t0 = now_s();
        srv = http_server_stop(srv);
        double took = now_s() - t0;
        if (took > 1.0)
            fail_msg("stop took %.3f s", took);
        /* The listening socket is closed: nobody answers any more. */
        int fd = connect_to("127.0.0.1", port);
        assert_int_equal(fd, -1);
        assert_int_equal(errno, ECONNREFUSED);
        close(idle);
        close(half);
        close(alive);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exact),
        cmocka_unit_test(test_render_empty_and_unlabeled_histogram),
        cmocka_unit_test(test_number_format),
        cmocka_unit_test(test_series_cap),
        cmocka_unit_test(test_label_value_normalized),
        cmocka_unit_test(test_invalid_names),
        cmocka_unit_test(test_concurrent_adds),
        cmocka_unit_test(test_http_endpoints),
        cmocka_unit_test(test_http_no_status_no_ready),
        cmocka_unit_test(test_http_ipv6),
        cmocka_unit_test(test_http_bind_failure),
        cmocka_unit_test(test_http_stop_prompt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
