/*
 * The daemon's model set: the body-part, implant and fracture classifiers named by the
 * configuration (models.*), loaded, validated and warmed up together, and swapped as one.
 *
 *     model_set *ms;
 *     if (model_set_load(cfg, (uint32_t)cfg->pipeline.batch_max, &ms, &err)) ...;  // all or none
 *     pipeline_set_models(pl, ms);    // the pipeline takes its own reference
 *     ms = model_set_unref(ms);
 *
 * DESIGN (reload without losing work)
 * - A set is immutable after model_set_load and reference-counted. The pipeline holds one
 *   reference to the current set; each worker takes one for as long as it keeps sessions on it
 *   (from the start of a batch until it sees a newer set at the start of a later batch, or
 *   stops). A SIGHUP loads a complete new set first (off the main loop); only if every model
 *   loads is it swapped in, and the old set is freed when its last worker lets go. Queued
 *   objects are never touched by a reload: they wait in the spool and are classified by
 *   whichever set is current when a worker takes them.
 * - Registry ids of the models (xreg.model, written by the first worker that needs them) are
 *   cached in the set; any worker may fill them (atomics).
 *
 * Thread rule: model_set_ref/unref from any thread; everything else reads immutable data.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "classifier.h"
#include "config.h"
#include "xr-error.h"

typedef struct model_slot {
    classifier *c;           /* NULL: the task is off */
    const classifier_meta *meta;
    char *path;              /* the file (meta->path borrows the configuration's string) */
    double threshold;        /* binary tasks: the decision threshold used (config, else model) */
    bool threshold_from_config;
    char *metadata_json;     /* every metadata_props entry as a JSON object (xreg.model.metadata) */
    _Atomic int64_t registry_id; /* 0 until registered */
    double load_seconds;
} model_slot;

typedef struct model_set {
    _Atomic int refs;
    uint64_t generation;      /* increases with every set loaded by this process */
    model_slot slot[CLASSIFIER_TASK_MAX];
    bool fracture_all;        /* models.fracture.body_parts is "*" */
    char **fracture_terms;
    size_t n_fracture_terms;
    unsigned n_loaded;
} model_set;

/*
 * Load every model the configuration names (max_batch: pipeline.batch_max; n_threads:
 * pipeline.threads_per_worker, what every session will use), checking that each
 * file's xreg.task is the task it is configured for. All or nothing: the first model that fails
 * is an error naming the key and the file ("models.implant.path \"/x/im.onnx\": ..."), and
 * nothing stays loaded. A configuration without models gives an empty set (n_loaded 0).
 */
__attribute__((warn_unused_result)) xr_code model_set_load(const xregd_config *cfg,
                                                           uint32_t max_batch, int n_threads,
                                                           model_set **ret, xr_error *err);
model_set *model_set_ref(model_set *ms);
/* Drops a reference and frees the set with the last one; accepts NULL; returns NULL. */
model_set *model_set_unref(model_set *ms);

/* Whether the fracture model should see an image whose body part is the DICOM term term
 * ("" or NULL: unknown, never). Case-insensitive. */
bool model_set_fracture_applies(const model_set *ms, const char *term);

/* One line per loaded model for the log: "body_part: NAME VERSION (sha256 PREFIX...) ...". */
void model_slot_describe(const model_slot *s, char *buf, size_t n);
