/*
 * Metrics for Prometheus, and the localhost HTTP endpoint that serves them with /healthz and
 * /readyz (libmicrohttpd; no hand-made HTTP parser). metrics.c holds the registry and the text
 * format, http.c the endpoint.
 *
 *     metrics *m = metrics_new();
 *     metrics_counter *assoc = metrics_counter_new(m, "xreg_associations_total",
 *                                                  "Associations accepted", "calling_ae", NULL);
 *     metrics_counter_add(assoc, "CR01", NULL, 1);
 *     metrics_histogram *lat = metrics_histogram_new(m, "xreg_stage_seconds", "...", "stage",
 *                                                    metrics_latency_buckets, n);
 *     metrics_histogram_observe(lat, "receive", 0.012);
 *     http_server *h; http_server_start(&params, &h, &err); ... h = http_server_stop(h);
 *
 * Families have zero, one or two labels. A family without labels renders as 0 from its creation;
 * a labeled one gets a series per label-value set on first use. Past METRICS_MAX_SERIES distinct
 * sets a family folds new ones into one extra series whose label values are all "_other_", so
 * that a peer sending random AE titles cannot grow memory without bound. Label values are stored
 * cut to 128 bytes with invalid UTF-8 replaced by '?' (values differing only past the cut, or only
 * in invalid bytes, share a series), and escaped on output. NULL label values count as "".
 *
 * Output: families in creation order, each with "# HELP" (left out when help is "") and
 * "# TYPE", series sorted by label values (bytewise), numbers as Prometheus clients print them
 * (1234, 0.25, 1e-05, NaN, +Inf); histograms as cumulative _bucket{le="..."}, _sum and _count.
 *
 * Thread rule: create families before threads start (from the main thread); creation and
 * rendering are nonetheless serialized by a registry lock. Add, set and observe are thread-safe
 * and hold only their family's mutex, for a lookup among at most METRICS_MAX_SERIES + 1 series.
 * Rendering may run on any thread; it calls the gauge functions on that thread with the registry
 * lock held, so a gauge function must not create families.
 *
 * The metrics_*_add/set/observe functions accept a NULL family and do nothing, so a daemon that
 * could not create one keeps running without that metric.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

#define METRICS_MAX_SERIES 256

typedef struct metrics metrics;
typedef struct metrics_counter metrics_counter;
typedef struct metrics_gauge metrics_gauge;
typedef struct metrics_histogram metrics_histogram;

/* Default latency buckets in seconds (1 ms to 60 s), and their count. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_n_latency_buckets;

/* An empty registry, freed with metrics_free; NULL on OOM. */
metrics *metrics_new(void);
/* Frees every family (their handles become invalid); accepts NULL; returns NULL. No other thread
 * may use the registry or its families any more (stop the HTTP server first). */
metrics *metrics_free(metrics *m);

/*
 * Family constructors. The registry owns the family; the handle lives until metrics_free. name
 * must match [a-zA-Z_:][a-zA-Z0-9_:]* (at most 128 bytes) and expose no sample name another
 * family exposes (a histogram "h" also exposes h_bucket, h_sum, h_count); label names match
 * [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__", differ from each other and, for histograms,
 * from "le". label1/label2 are label names or NULL (label2 only with label1); help may be NULL.
 * All strings are copied. Returns NULL (false) on OOM or an invalid or taken name, with the reason
 * in a debug log line.
 */
metrics_counter *metrics_counter_new(metrics *m, const char *name, const char *help,
                                     const char *label1, const char *label2);
/* v1/v2: label values (ignored past the family's labels). n >= 0: a negative or NaN n is a bug
 * (assert in debug builds, ignored in release). */
void metrics_counter_add(metrics_counter *c, const char *v1, const char *v2, double n);

metrics_gauge *metrics_gauge_new(metrics *m, const char *name, const char *help,
                                 const char *label1);
void metrics_gauge_set(metrics_gauge *g, const char *v1, double value);
void metrics_gauge_add(metrics_gauge *g, const char *v1, double delta);
/* A gauge without labels computed at scrape time (spool depth, age of the oldest object): fn runs
 * on the rendering thread (the HTTP server's) and must be thread-safe; see the thread rule. */
bool metrics_gauge_fn_new(metrics *m, const char *name, const char *help,
                          double (*fn)(void *userdata), void *userdata);

/* buckets: at most 64 strictly increasing upper bounds, copied; +Inf is implicit (a last +Inf is
 * dropped). Values are counted in the first bucket whose bound is >= value (Prometheus "le").
 * observe ignores NaN, which would make the sum NaN for good. */
metrics_histogram *metrics_histogram_new(metrics *m, const char *name, const char *help,
                                         const char *label1, const double *buckets,
                                         size_t n_buckets);
void metrics_histogram_observe(metrics_histogram *h, const char *v1, double value);

/*
 * Render every family in the Prometheus text exposition format 0.0.4 into a malloc'ed,
 * NUL-terminated string (caller frees with free()). Returns NULL on OOM. Each family's values are
 * copied under its mutex, so a histogram's buckets, sum and count agree.
 */
char *metrics_render(metrics *m);

/* ---- HTTP endpoint ------------------------------------------------------------------------ */
typedef struct http_server http_server;

/* Fill why (NUL-terminated, at most why_bytes, one line) and return false when not ready. Runs on
 * the HTTP server's thread. */
typedef bool (*http_ready_fn)(void *userdata, char *why, size_t why_bytes);
/* Write a one-screen status, a JSON object or text lines (malloc'ed, NUL-terminated; the server
 * frees it), or NULL (the server answers 500). Runs on the HTTP server's thread. */
typedef char *(*http_status_fn)(void *userdata);

typedef struct http_server_params {
    const char *bind_address;   /* numeric IPv4/IPv6 (NULL or "" = 127.0.0.1); not kept */
    uint16_t port;              /* 0 binds an ephemeral port (the daemon does not start then) */
    metrics *m;                 /* served at /metrics; empty when NULL; must outlive the server */
    http_ready_fn ready;        /* /readyz: 200 "ready" or 503 with why; NULL = always ready */
    http_status_fn status;      /* /status: 200 application/json; optional (NULL: 404) */
    http_status_fn status_text; /* /status?format=text: 200 text/plain; optional (NULL: 404) */
    void *userdata;
} http_server_params;

/*
 * Serve GET (and HEAD) /metrics, /healthz (200 "ok" while the process runs), /readyz and /status
 * (?format=json, the default, or ?format=text; another format is 400) on its own thread; any
 * other path is 404, other methods on these paths 405 with "Allow: GET, HEAD". The listening socket
 * is close-on-exec. On success *ret_srv is set, to be stopped with http_server_stop. Errors:
 * XR_E_CONFIG for a bind address that is not a numeric IPv4 or IPv6 address; XR_E_IO with address,
 * port and errno when it cannot listen ("could not listen on 127.0.0.1:9112 for metrics: Address
 * already in use"), or when the HTTP library cannot start; XR_E_NOMEM.
 */
__attribute__((warn_unused_result)) xr_code http_server_start(const http_server_params *p,
                                                              http_server **ret_srv, xr_error *err);
/* Stop and free; accepts NULL; returns NULL. Returns as soon as the request being handled, if
 * any, is answered: idle and half-sent connections are closed, not waited for. The port is free
 * again on return. */
http_server *http_server_stop(http_server *srv);
