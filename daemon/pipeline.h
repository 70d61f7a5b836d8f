/*
 * The pipeline: worker threads that take spooled objects, parse them, and register them in
 * PostgreSQL; the spool file is removed only after COMMIT.
 *
 * DESIGN
 * - Threads "xreg-worker-N", N = pipeline.workers; each owns one registry connection.
 * - Order: FIFO from the spool queue; with several workers, objects complete out of order.
 * - Guarantees: at-least-once (a crash between COMMIT and unlink re-registers the object, which
 *   the registry's idempotent upsert turns into a no-op). A transient database error keeps the
 *   object and retries it with capped exponential backoff; the worker holds that object while it
 *   waits, so the spool keeps accepting. A data error the database refuses for good, or an object
 *   that no longer parses, is moved to rejected/ and the rejection recorded.
 * - Migrations run once per process before the first registration (under the registry's
 *   advisory lock, so several xregd instances may start together).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "metrics.h"
#include "registry.h"
#include "spool.h"
#include "xr-error.h"

typedef struct pipeline pipeline;

typedef struct pipeline_params {
    spool *sp;            /* borrowed; outlives the pipeline */
    const char *conninfo; /* copied */
    unsigned n_workers;
    int64_t retry_initial_ms;
    int64_t retry_max_ms;
    bool migrated; /* migrations already applied by the caller */
    /* Identifier replacement applied before each upsert (borrowed, may be NULL; outlives the
     * pipeline). */
    const struct pseudonymizer *pseudo;
    /* Metric families (borrowed, may be NULL): */
    metrics_histogram *stage_seconds;  /* label stage: "parse", "register" */
    metrics_counter *registered_total; /* label result: "new", "known" */
    metrics_counter *failed_total;     /* label reason: why an acknowledged object was set aside */
    metrics_counter *db_errors_total;  /* label kind: "transient", "permanent" */
    metrics_counter *db_retries_total;
} pipeline_params;

typedef struct pipeline_stats {
    uint64_t n_registered;
    uint64_t n_set_aside;    /* acknowledged objects moved to rejected/ */
    uint64_t n_retries;
    bool db_ok;              /* the last database operation succeeded */
    int64_t last_error_at_us; /* 0 if none */
    char last_error[XR_ERROR_MSG_BYTES];
} pipeline_stats;

__attribute__((warn_unused_result)) xr_code pipeline_start(const pipeline_params *params,
                                                           pipeline **ret_pl, xr_error *err);
/* Change the retry backoff (reload). Any thread. */
void pipeline_set_retry(pipeline *pl, int64_t initial_ms, int64_t max_ms);
/* A consistent copy of the counters and the last error. Any thread. */
void pipeline_get_stats(pipeline *pl, pipeline_stats *ret);
/*
 * Whether the workers are alive and moving: each is idle (waiting for work), sleeping in a retry
 * backoff it set itself, or busy with one object for less than stall_ms. For the watchdog.
 */
bool pipeline_is_progressing(pipeline *pl, int64_t stall_ms);

/* Join the workers (call spool_shutdown first) and free. Accepts NULL; returns NULL. */
pipeline *pipeline_stop(pipeline *pl);

/* The migrations compiled into this binary, applied with registry_migrate. */
__attribute__((warn_unused_result)) xr_code pipeline_migrate(registry *reg, unsigned *ret_applied,
                                                             xr_error *err);
