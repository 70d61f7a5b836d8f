/*
 * nn: run ONNX image classifiers (ResNet, EfficientNet, ViT) on the CPU through oneDNN.
 *
 *     nn_params p = nn_params_default();
 *     p.max_batch = 8;
 *     p.n_threads = 2;                                            // OpenMP threads per session
 *     nn_model *m;
 *     if (nn_model_load("resnet50.onnx", &p, &m, &err)) ...;      // validate + compile, once
 *     nn_session *s;
 *     if (nn_session_new(m, 2, &s, &err)) ...;                    // one per worker thread
 *     const void *in[] = {pixels};  void *out[] = {logits};
 *     if (nn_session_run(s, 4, in, out, &err)) ...;               // 4 images, no allocation
 *     s = nn_session_free(s);  m = nn_model_free(m);
 *
 * Thread rule: an nn_model is immutable after nn_model_load and may be shared by any number of
 * threads; an nn_session is used by one thread at a time. oneDNN runs on OpenMP here, and a
 * oneDNN primitive keeps the thread count it was created with, so the count is chosen at load
 * (nn_params.n_threads) and every session of the model runs with it: the session sets it
 * (omp_set_num_threads) on the calling thread at every run. Workers x threads should not exceed
 * the cores.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nn_model nn_model;
typedef struct nn_session nn_session;

/* Element types, numbered as ONNX TensorProto.DataType. */
typedef enum nn_dtype {
    NN_DTYPE_UNDEFINED = 0,
    NN_DTYPE_FLOAT = 1,
    NN_DTYPE_UINT8 = 2,
    NN_DTYPE_INT8 = 3,
    NN_DTYPE_UINT16 = 4,
    NN_DTYPE_INT16 = 5,
    NN_DTYPE_INT32 = 6,
    NN_DTYPE_INT64 = 7,
    NN_DTYPE_STRING = 8,
    NN_DTYPE_BOOL = 9,
    NN_DTYPE_FLOAT16 = 10,
    NN_DTYPE_DOUBLE = 11,
    NN_DTYPE_UINT32 = 12,
    NN_DTYPE_UINT64 = 13,
    NN_DTYPE_MAX,
} nn_dtype;

/* "float", "int64", ...; "unknown" past the range, never NULL. */
const char *nn_dtype_name(nn_dtype t);
/* Bytes per element; 0 for types nn/ cannot hold (string, undefined). */
size_t nn_dtype_size(nn_dtype t);

#define NN_MAX_RANK 8

/* An input frozen to a value at load (copied): generic ONNX graphs sometimes take shapes, axes
 * or bounds as inputs, which a static-shape engine needs as constants. */
typedef struct nn_binding {
    const char *name; /* a graph input */
    nn_dtype dtype;
    int rank;
    const int64_t *dims;
    const void *data; /* dense, row-major */
} nn_binding;

typedef struct nn_params {
    /* Largest batch a run may ask for (dimension 0 of each input when the model declares it
     * symbolic). Above 1 the graph is compiled for batch 1 and for max_batch (weights shared;
     * each session's activation arena grows about linearly with max_batch), and the load
     * checks that the graph never mixes samples (XR_E_UNSUPPORTED if it does). A run of n
     * uses the max_batch plan (padded) for n >= max_batch/2, else n batch-1 runs (with
     * n_threads > 1 see nn_session_run). Ignored for fixed-batch models. */
    uint32_t max_batch;
    /* Graph rewrites (BatchNormalization folding, activation/residual fusion). Off only to debug
     * a suspected fusion bug: results must be the same either way. */
    bool optimize;
    /* Inputs to freeze (see nn_binding); they are no longer runtime inputs. */
    const nn_binding *bindings;
    size_t n_bindings;
    /* OpenMP threads of every session's runs, 1..1024. oneDNN sizes and splits a primitive's
     * work for the thread count it is created with, so this is fixed at load. With more than
     * one, a run of several samples may give each thread whole samples (nn_session_run). */
    int n_threads;
} nn_params;

/* Every field at its default: max_batch 1, optimize on, no bindings, 1 thread. */
nn_params nn_params_default(void);

typedef struct nn_tensor_info {
    const char *name; /* lives as long as the model */
    nn_dtype dtype;
    int rank;
    int64_t dims[NN_MAX_RANK]; /* one sample's shape: dims[0] is 1 when batch_dynamic */
    bool batch_dynamic;        /* dims[0] is the batch chosen per run (1..max_batch) */
    size_t sample_bytes;       /* bytes of one sample (of the whole tensor if !batch_dynamic) */
} nn_tensor_info;

/*
 * Load, validate and compile an ONNX model. Everything is checked before anything runs: the
 * protobuf framing, every tensor's type, shape and data extent (external data must stay inside
 * the model's folder), the opset (11-17 for the default domain), every op and its attributes,
 * and shapes through the whole graph.
 * Returns XR_E_IO (file), XR_E_INPUT (corrupt or inconsistent model), XR_E_UNSUPPORTED (an op,
 * attribute or type nn/ does not run; the message names node and opset), XR_E_LIMIT, XR_E_NOMEM.
 * params may be NULL (defaults). The caller frees *ret_model with nn_model_free().
 */
__attribute__((warn_unused_result)) xr_code nn_model_load(const char *path,
                                                          const nn_params *params,
                                                          nn_model **ret_model, xr_error *err);
/* Same from a buffer (copied as needed; buf may be freed after return). base_dir is where
 * external data files are looked up; NULL refuses external data. */
__attribute__((warn_unused_result)) xr_code nn_model_load_buffer(const void *buf, size_t n_bytes,
                                                                 const char *base_dir,
                                                                 const nn_params *params,
                                                                 nn_model **ret_model,
                                                                 xr_error *err);
/* Accepts NULL; returns NULL. Every session of the model must be freed first. */
nn_model *nn_model_free(nn_model *m);

size_t nn_model_n_inputs(const nn_model *m);
size_t nn_model_n_outputs(const nn_model *m);
/* Borrowed until nn_model_free; false when i is out of range. */
bool nn_model_input(const nn_model *m, size_t i, nn_tensor_info *ret);
bool nn_model_output(const nn_model *m, size_t i, nn_tensor_info *ret);
uint32_t nn_model_max_batch(const nn_model *m);
/* nn_params.n_threads it was loaded with. */
int nn_model_threads(const nn_model *m);

/* metadata_props, in file order; strings borrowed until nn_model_free. */
size_t nn_model_n_metadata(const nn_model *m);
bool nn_model_metadata(const nn_model *m, size_t i, const char **ret_key, const char **ret_value);
/* Value for key, or NULL when absent. */
const char *nn_model_metadata_get(const nn_model *m, const char *key);

/* Descriptive figures for nn-info. */
typedef struct nn_model_stats {
    int64_t opset;           /* default-domain opset */
    uint64_t n_parameters;   /* elements in initializers */
    size_t n_nodes_file;     /* nodes in the file */
    size_t n_steps;          /* runtime steps after folding and fusion */
    size_t n_fused;          /* nodes absorbed by fusion */
    size_t arena_bytes;      /* activation memory per session, for max_batch */
    bool side_by_side;       /* runs of n_threads samples or more give each thread whole
                              * samples (see nn_session_run) */
    uint32_t lane_batch;     /* ... lane_batch at a time */
    const char *producer;    /* producer_name + version, borrowed */
} nn_model_stats;
void nn_model_stats_get(const nn_model *m, nn_model_stats *ret);
/* Op types of the file and their node counts, sorted by name; borrowed. */
size_t nn_model_n_op_types(const nn_model *m);
bool nn_model_op_type(const nn_model *m, size_t i, const char **ret_name, size_t *ret_count);

/* The ops nn/ claims to run (the one list: docs/nn.md and the conformance runner read it).
 * NULL past the end. */
const char *nn_claimed_op(size_t i);
bool nn_op_is_claimed(const char *op_type);

/*
 * A per-thread execution context: activation arena, oneDNN stream and scratchpad, all allocated
 * here so that nn_session_run allocates nothing (with n_threads > 1, one context per thread).
 * n_threads must be the model's (nn_model_threads; 0 means that too): XR_E_CONFIG otherwise.
 * The model must outlive the session.
 */
__attribute__((warn_unused_result)) xr_code nn_session_new(const nn_model *m, int n_threads,
                                                           nn_session **ret_session,
                                                           xr_error *err);
nn_session *nn_session_free(nn_session *s);

/*
 * Run n_batch samples (1..max_batch for batch-dynamic models, exactly 1 otherwise).
 * inputs[i] holds n_batch x sample_bytes of input i (dense, row-major, the model's type);
 * outputs[i] receives n_batch x sample_bytes of output i. XR_E_INPUT for a bad n_batch or
 * NULL buffers; XR_E_INTERNAL if oneDNN fails.
 * With T > 1 threads (nn_model_stats.side_by_side) a run of n_batch >= T samples gives each
 * thread whole samples: for a convolutional model the first n_batch - n_batch % T one at a
 * time (a thread takes the next sample when it is done, so a slowed CPU holds back only its
 * own), for a product-heavy one (ViT) T near-equal chunks through a plan compiled for
 * ceil(max_batch / T) samples. The rest, and single samples, use all T threads in each step.
 */
__attribute__((warn_unused_result)) xr_code nn_session_run(nn_session *s, uint32_t n_batch,
                                                           const void *const *inputs,
                                                           void *const *outputs, xr_error *err);

#ifdef __cplusplus
}
#endif
