/*
 * classifier: a self-describing ONNX classifier (nn/ + the xreg.* metadata), loaded, validated
 * and warmed up once, then shared by the daemon's workers and by xregctl nn-run / model-info /
 * eval / compare.
 *
 *     classifier *c;
 *     if (classifier_load("models/body-part.onnx", 8, 2, &c, &err)) ...;  // batch 8, 2 threads
 *     const classifier_meta *mi = classifier_info(c);              // task, labels, sha256, ...
 *     classifier_session *s;
 *     if (classifier_session_new(c, 2, &s, &err)) ...;               // one per worker thread
 *     float *in = malloc(n * classifier_input_floats(c) * sizeof(float));
 *     float *probs = malloc(n * mi->n_labels * sizeof(float));
 *     for (i = 0; i < n; i++)                                       // DICOM frame, [0,1] gray
 *         if (classifier_prepare_gray(s, frame[i], w[i], h[i],
 *                                     in + i * classifier_input_floats(c), &err)) ...;
 *     if (classifier_run(s, n, in, probs, &err)) ...;               // n x n_labels, softmaxed
 *     s = classifier_session_free(s);  c = classifier_free(c);
 *
 * Metadata (ONNX metadata_props; docs/models.md). Required: xreg.task (body_part | implant |
 * fracture), xreg.name, xreg.version, xreg.labels (comma-separated, output order, unique;
 * body_part labels are keys of the registry's xreg.body_part_map, see classifier_body_part_term;
 * implant/fracture labels are exactly absent and present), xreg.output (logits | probabilities),
 * xreg.input_size ("H,W"), xreg.channels (1 | 3), xreg.mean, xreg.std, xreg.resize (stretch |
 * letterbox). Binary tasks: xreg.positive_label (required, one of the labels) and
 * xreg.threshold (optional, a number in (0,1), default 0.5); both are refused for body_part.
 * Optional: xreg.placeholder (one line: why the model must not be trusted), xreg.provenance (one
 * line), xreg.metrics (a JSON object). The graph must have one float input [batch,] C,H,W
 * matching xreg.channels/xreg.input_size and one float output holding n_labels values per sample.
 *
 * Thread rule: a classifier is immutable after classifier_load and may be shared read-only by
 * any number of threads (its classifier_meta too). A classifier_session (nn session + the
 * preprocessing scratch) is used by one thread at a time; classifier_prepare_* and
 * classifier_run on the same session must not run concurrently. Every session must be freed
 * before its classifier.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"
#include "dicom.h"
#include "nn-image.h"
#include "nn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum classifier_task {
    CLASSIFIER_TASK_BODY_PART,
    CLASSIFIER_TASK_IMPLANT,
    CLASSIFIER_TASK_FRACTURE,
    CLASSIFIER_TASK_MAX,
} classifier_task;

/* "body_part", "implant", "fracture"; NULL out of range. */
const char *classifier_task_name(classifier_task t);
/* CLASSIFIER_TASK_MAX when unrecognized. */
classifier_task classifier_task_from_string(const char *s);

typedef enum classifier_output {
    CLASSIFIER_OUTPUT_LOGITS,        /* xreg applies softmax */
    CLASSIFIER_OUTPUT_PROBABILITIES, /* used as they are (checked finite, in [0,1]) */
    CLASSIFIER_OUTPUT_MAX,
} classifier_output;

const char *classifier_output_name(classifier_output o);

/* The DICOM Body Part Examined defined term of a body_part label (the registry's
 * xreg.body_part_map, migrations/0002), or NULL for a label that is not in the map. */
const char *classifier_body_part_term(const char *label);

/* Everything the metadata says, parsed. Strings are borrowed until classifier_free. */
typedef struct classifier_meta {
    const char *path;   /* as given to classifier_load (a copy) */
    char sha256[65];    /* of the file, lower-case hex */
    classifier_task task;
    const char *name, *version;
    size_t n_labels;
    const char *const *labels;  /* n_labels, output order */
    const char *const *dicom_terms; /* body_part: the Body Part Examined term per label; else
                                     * NULL */
    int positive_index;         /* binary tasks: index of the positive label; -1 for body_part */
    const char *positive_label; /* NULL for body_part */
    double threshold;           /* binary tasks: on the positive probability; 0.5 if absent */
    bool threshold_given;       /* xreg.threshold was present */
    classifier_output output;
    const char *placeholder;    /* NULL unless xreg.placeholder is present */
    const char *provenance;     /* NULL when absent */
    const char *metrics_json;   /* NULL when absent; a validated JSON object */
    nn_preproc_spec preproc;    /* input size, channels, mean, std, resize */
    const char *preproc_fingerprint; /* "224x224 c3 stretch mean=..,.. std=..,.." (registry
                                      * xreg.prediction.preprocessing) */
    uint32_t max_batch;         /* largest n_batch classifier_run accepts */
} classifier_meta;

typedef struct classifier classifier;
typedef struct classifier_session classifier_session;

/*
 * Load path through nn/ (max_batch >= 1: the largest batch a session will run; a fixed-batch
 * model gets 1; n_threads >= 1: the OpenMP threads of every session, fixed at load), validate
 * every metadata key and the graph's input/output shapes against them, compute the file's
 * sha256, and run one warm-up inference (a zero image) whose outputs must be finite (and,
 * for xreg.output = probabilities, in [0,1] summing to 1).
 * Returns XR_E_IO (file), XR_E_INPUT (bad model or metadata: the message names the key, the
 * value and what was expected; the detail says how many problems there were in all),
 * XR_E_UNSUPPORTED (an op nn/ does not run), XR_E_LIMIT, XR_E_NOMEM. Free with classifier_free.
 */
__attribute__((warn_unused_result)) xr_code classifier_load(const char *path, uint32_t max_batch,
                                                            int n_threads, classifier **ret,
                                                            xr_error *err);
/* Accepts NULL; returns NULL. */
classifier *classifier_free(classifier *c);

/* Borrowed until classifier_free; never NULL for a loaded classifier. */
const classifier_meta *classifier_info(const classifier *c);
/* The nn/ model (for nn-info style listings); borrowed. */
const nn_model *classifier_model(const classifier *c);
/* C x H x W floats of one prepared input. */
size_t classifier_input_floats(const classifier *c);

/*
 * Check a model's metadata and graph without building a classifier (xregctl model-info): every
 * problem is reported through problem(ud, key, message) (key may be "graph" or "file"), and the
 * count returned; 0 means classifier_load would accept the metadata. Never stops at the first.
 */
size_t classifier_check_model(const nn_model *m,
                              void (*problem)(void *ud, const char *key, const char *msg),
                              void *ud);

/* A per-thread context: nn session + preprocessor. n_threads must be the count given to
 * classifier_load (XR_E_CONFIG otherwise). */
__attribute__((warn_unused_result)) xr_code classifier_session_new(const classifier *c,
                                                                   int n_threads,
                                                                   classifier_session **ret,
                                                                   xr_error *err);
classifier_session *classifier_session_free(classifier_session *s);

/*
 * Preprocess one grayscale image (w x h floats in [0,1], row-major; e.g. a dicom_image frame)
 * into one model input (classifier_input_floats floats, CHW): resize, letterbox or stretch, gray
 * replicated to 3 channels, (x - mean) / std, exactly as nn_preproc_run. XR_E_INPUT for an empty
 * image, XR_E_LIMIT past XR_IMAGE_DIM_MAX, XR_E_NOMEM. Uses the session's scratch (see thread
 * rule).
 */
__attribute__((warn_unused_result)) xr_code classifier_prepare_gray(classifier_session *s,
                                                                    const float *gray, uint32_t w,
                                                                    uint32_t h, float *input,
                                                                    xr_error *err);

/* Limits for classifier_prepare_file; NULL fields' defaults via classifier_file_params_default. */
typedef struct classifier_file_params {
    dicom_pixel_limits dicom;
    nn_image_params image; /* color is set from the model's channels */
} classifier_file_params;
classifier_file_params classifier_file_params_default(void);

typedef enum classifier_file_kind {
    CLASSIFIER_FILE_DICOM,
    CLASSIFIER_FILE_PNG,
    CLASSIFIER_FILE_JPEG,
    CLASSIFIER_FILE_KIND_MAX,
} classifier_file_kind;

/* 1 when path starts like an image file (a PNG or JPEG signature, or a DICOM Part-10 preamble),
 * 0 when not, -1 when it cannot be opened or read. */
int classifier_file_signature(const char *path);

/*
 * Read one image file and preprocess it into input: a PNG or JPEG signature goes to nn-image.h
 * (gray for a 1-channel model), anything else to dicom_image_read (first frame; modality LUT,
 * VOI, inversion). *ret_kind (may be NULL) says which. Errors are prefixed with the path:
 * XR_E_INPUT ("not a DICOM file" for something that is none of the three), XR_E_UNSUPPORTED
 * (transfer syntax, CMYK JPEG), XR_E_LIMIT, XR_E_IO, XR_E_NOMEM. params may be NULL.
 */
__attribute__((warn_unused_result)) xr_code classifier_prepare_file(
    classifier_session *s, const char *path, const classifier_file_params *params, float *input,
    classifier_file_kind *ret_kind, xr_error *err);

/*
 * Run n_batch (1..max_batch) prepared inputs (n_batch x classifier_input_floats, contiguous)
 * and write n_batch x n_labels probabilities to probs (softmax applied for xreg.output =
 * logits, in double precision). A non-finite model output (or, for probabilities, one outside
 * [0,1]) is XR_E_INTERNAL naming the sample: never a NaN passed on. XR_E_INPUT for a bad
 * n_batch or NULL buffers.
 */
__attribute__((warn_unused_result)) xr_code classifier_run(classifier_session *s,
                                                           uint32_t n_batch, const float *inputs,
                                                           float *probs, xr_error *err);

/* sha256 of a file as 64 lower-case hex digits + NUL; XR_E_IO. */
__attribute__((warn_unused_result)) xr_code classifier_file_sha256(const char *path,
                                                                   char ret_hex[65],
                                                                   xr_error *err);

/* Numerically stable softmax of n values, in place (double accumulation). Exposed for tests
 * and for eval over stored logits. */
void classifier_softmax(float *v, size_t n);

#ifdef __cplusplus
}
#endif
