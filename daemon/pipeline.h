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
 * - Classification (when a model set with models is installed): a worker takes up to
 *   batch_max waiting objects (spool_next_batch, waiting at most batch_wait_ms for more),
 *   parses each header, decodes its pixels (dicom_image_read with the pixels.* limits and frame
 *   policy), preprocesses every frame for each model, runs the body-part and implant models over
 *   the whole batch and the fracture model over the images whose body part is configured (the
 *   predicted one, else the header's), averages a multi-frame object's frames, then registers
 *   each object in its own transaction with its predictions, study summary and, when something
 *   could not be classified, its classification issue. An object that cannot be classified is
 *   registered all the same (never retried, never blocking the queue). A transient database
 *   error retries that object's registration with the results already computed. Pixel decoding
 *   and inference run only here, never on association threads.
 * - Models: each worker holds a reference to the set it has sessions for and looks for a newer
 *   set at the start of every batch (models.h), so a reload never interrupts a batch.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "dicom.h"
#include "metrics.h"
#include "models.h"
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
    metrics_histogram *inference_seconds;     /* label model: one observation per batch run */
    metrics_counter *inferences_total;        /* label model: images classified */
    metrics_counter *classify_failures_total; /* label reason (reason code), task */
    /* Classification. models may be NULL or empty (registration only); the pipeline takes its
     * own reference. */
    model_set *models;
    unsigned threads_per_worker;
    unsigned batch_max;
    int64_t batch_wait_ms;
    dicom_pixel_limits pixel_limits;
    dicom_frame_policy frame_policy;
} pipeline_params;

typedef struct pipeline_stats {
    uint64_t n_registered;
    uint64_t n_set_aside;    /* acknowledged objects moved to rejected/ */
    uint64_t n_retries;
    uint64_t n_classified;   /* registered with every applicable prediction */
    uint64_t n_unclassified; /* registered with a classification issue */
    bool db_ok;              /* the last database operation succeeded */
    int64_t last_error_at_us; /* 0 if none */
    char last_error[XR_ERROR_MSG_BYTES];
} pipeline_stats;

__attribute__((warn_unused_result)) xr_code pipeline_start(const pipeline_params *params,
                                                           pipeline **ret_pl, xr_error *err);
/* Change the retry backoff (reload). Any thread. */
void pipeline_set_retry(pipeline *pl, int64_t initial_ms, int64_t max_ms);
/* Install a new model set (reload): workers switch at their next batch. Takes its own
 * reference; any thread. */
void pipeline_set_models(pipeline *pl, model_set *ms);
/* The current set with a reference for the caller (model_set_unref it), or NULL. */
model_set *pipeline_models(pipeline *pl);
/* Reloadable classification settings. Any thread. */
void pipeline_set_batch_wait(pipeline *pl, int64_t batch_wait_ms);
void pipeline_set_pixels(pipeline *pl, const dicom_pixel_limits *limits,
                         dicom_frame_policy policy);
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
