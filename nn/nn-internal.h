/*
 * nn/ internals: the graph (values + nodes) built from an ONNX ModelProto, the op table, and the
 * compiled model/session. Not a public header: tests and the conformance runner may include it.
 *
 * DESIGN
 * Load = parse (protobuf-c, bounded) -> values for initializers and inputs -> nodes in file
 * order, each validated and shape-inferred; a node whose inputs are all constant is run at once
 * by its reference kernel and becomes a constant (this folds the Shape/Gather/Unsqueeze/Concat
 * chains exporters emit) -> dead nodes dropped -> rewrites (nn-opt.c) -> oneDNN primitives for
 * the remaining steps, weights reordered once -> memory plan by liveness (nn-exec.c).
 * A batch-dynamic model with max_batch B > 1 is compiled twice, for batch 1 and for batch B
 * (sharing reordered weights); the loader checks that shapes at batch B are those at batch 1
 * with one axis scaled by B and that no step mixes samples, so a run may pad or split.
 */
#pragma once

#include <dnnl.h>
#include <omp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nn.h"
#include "onnx.pb-c.h"
#include "xr-error.h"

/* Default-domain opsets accepted. 17 is what Debian's onnx 1.12 knows; legacy forms of the
 * claimed ops that differ in meaning (broadcast with axis, spatial 0) are refused by name. */
#define NN_OPSET_MIN 1
#define NN_OPSET_MAX 17
/* A model file: protobuf's own 2 GiB ceiling. */
#define NN_MODEL_MAX_BYTES (INT32_MAX)
/* One tensor (initializer, constant or activation): 2^31 elements and 1 GiB, far above any
 * classifier's (ViT-L's largest weight is 150 MB), so a hostile shape cannot make us allocate
 * more than that per tensor. */
#define NN_TENSOR_MAX_ELEMS (INT64_C(1) << 31)
#define NN_TENSOR_MAX_BYTES (UINT64_C(1) << 30)
/* One plan's activation arena (ResNet-101 at 224 needs ~11 MiB per sample). */
#define NN_ARENA_MAX_BYTES (UINT64_C(4) << 30)
/* Graph size: far above any classifier (ViT-B/16 unfolded has ~2,000 nodes). */
#define NN_MAX_NODES 100000
#define NN_MAX_VALUES 400000
/* Variadic inputs (Concat, Sum) and outputs (Split). */
#define NN_MAX_NODE_IO 1024
/* Largest batch a caller may ask to plan for. */
#define NN_MAX_BATCH 1024
/* OpenMP threads per session. */
#define NN_MAX_THREADS 1024
/* A run of n < B samples uses the batch-B plan, zero-padded, when n/B >= NUM/DEN, else n
 * batch-1 runs (measured: see docs/nn.md "Batch"). */
#define NN_PAD_NUM 1
#define NN_PAD_DEN 2
#define NN_ALIGN 64
/* Constant MatMul/Gemm weights are stored [N, K] when a sample has at least this many rows,
 * else [K, N] (measured with oneDNN 2.6's sgemm: docs/nn.md "Weight layouts"). */
#define NN_MATMUL_NK_ROWS 32
/* A constant-weight MatMul/Gemm with at least this many rows per sample runs as oneDNN's 1x1
 * convolution over the rows (jit_1x1 on AVX2: 1.2-2.2x its sgemm from 8 to 197 rows at ViT-B's
 * widths, 0.7x for one row; docs/nn.md "Products as 1x1 convolutions"). */
#define NN_MATMUL_CONV_ROWS 8
/* nn's own kernels (Transpose, Slice, same-shape arithmetic, squeeze-excitation sweeps) split
 * work over the session's threads from this many elements on. */
#define NN_PARALLEL_MIN_ELEMS (INT64_C(1) << 16)
/* A Conv whose last post-op is SiLU and whose output has at least this many elements applies
 * it in a pass of its own (AVX2) rather than as oneDNN's swish post-op, which costs twice as
 * much per element; below it the pass's thread start-up outweighs the gain (docs/nn.md "SiLU"). */
#define NN_SILU_PASS_MIN_ELEMS 16384

typedef struct nn_graph nn_graph;
typedef struct nn_node nn_node;
typedef struct nn_exec nn_exec;

typedef struct nn_value {
    char *name;
    nn_dtype dtype;
    int rank;
    int64_t dims[NN_MAX_RANK];
    int64_t n_elems;
    size_t n_bytes;
    void *data;      /* constants: owned, NN_ALIGN-aligned; NULL for runtime values */
    bool known;      /* shape and type inferred */
    bool is_input, is_output, is_initializer;
    bool released;   /* a constant whose data went into oneDNN's own copy and was freed */
    bool borrowed;   /* data belongs to another plan's graph (same initializer): not freed */
    int producer;    /* node index or -1 */
    int n_uses;      /* runtime consumers */
    int view_of;     /* runtime: shares the buffer of this value (-1: own buffer) */
    int last_use;    /* plan: last step reading it (through views) */
    bool blocked;    /* held in oneDNN's layout md (only oneDNN steps and reorders read it) */
    dnnl_memory_desc_t md;
    size_t offset;   /* plan: arena offset of its buffer */
} nn_value;

/* Fused post-operations, applied in order to a Conv/MatMul/Gemm result. */
typedef enum nn_post_kind { NN_POST_ELTWISE, NN_POST_SUM } nn_post_kind;
typedef struct nn_post {
    nn_post_kind kind;
    dnnl_alg_kind_t alg;
    float alpha, beta;
} nn_post;

/* Attributes parsed at inference time; one flat struct keeps the op code short. */
typedef struct nn_attrs {
    int64_t axis;
    int64_t i0, i1, i2;
    float f0, f1, f2;
    int n_sp;                        /* spatial dims of Conv/pools */
    int64_t kernel[3], strides[3], pads_l[3], pads_r[3], dil[3];
    int64_t group;
    int n_axes;
    int64_t axes[NN_MAX_RANK];       /* Transpose perm, reduce axes, Slice per-axis ... */
    int64_t starts[NN_MAX_RANK], ends[NN_MAX_RANK], steps[NN_MAX_RANK];
    int64_t *split;                  /* Split sizes, n_out entries; owned */
} nn_attrs;

/* A oneDNN argument bound at session creation: value >= 0 points into the arena (or at a
 * constant), value == -1 is the model-owned memory in mem (reordered weights, bias), -2 the
 * session's scratchpad, -3 memory borrowed from another plan's node (not freed here). */
typedef struct nn_dnnl_arg {
    int arg;
    int value;
    size_t byte_off;   /* into the value's buffer (a strided view starting inside it) */
    dnnl_memory_desc_t md;
    dnnl_memory_t mem;
} nn_dnnl_arg;

#define NN_MAX_DNNL_ARGS 8
#define NN_MAX_POST 4
#define NN_MAX_PRE 4
/* Memory objects a session keeps per step: the primitive's arguments, then the pre-reorders'
 * (from, to) pairs. */
#define NN_STEP_MEMS (NN_MAX_DNNL_ARGS + 2 * NN_MAX_PRE)

/* A layout change run just before a step: value src (as laid out) into value dst (new). */
typedef struct nn_pre {
    int src, dst;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t smd, dmd;
} nn_pre;

/* A MatMul operand or result addressed through strides inside another value's buffer: what a
 * chain of Slice/Reshape/Transpose would have copied out (nn-opt.c absorb_views). */
typedef struct nn_view {
    bool on;
    int rank;
    int64_t dims[NN_MAX_RANK], strides[NN_MAX_RANK]; /* in elements */
    int64_t offset;                                  /* elements */
} nn_view;

struct nn_node {
    const struct nn_op *op;
    char *name;
    char *op_type;
    const Onnx__NodeProto *proto; /* valid during load only */
    int n_in, n_out;
    int *in, *out;                /* value indices; -1 = omitted optional */
    bool dead;
    nn_attrs a;
    int n_post;
    nn_post post[NN_MAX_POST];
    int sum_in;                   /* value accumulated by a NN_POST_SUM, else -1 */
    /* oneDNN step */
    dnnl_primitive_t prim;
    int n_args;
    nn_dnnl_arg args[NN_MAX_DNNL_ARGS];
    size_t scratch_bytes;
    int n_pre;
    nn_pre pre[NN_MAX_PRE];
    int bias_in;                  /* MatMul: constant bias vector fused from an Add, else -1 */
    nn_view in_view[2];           /* MatMul: operands read in place (in[k] is the base value) */
    nn_view out_view;             /* MatMul: result written in place into out[0] */
    float out_scale;              /* MatMul: scalar factor folded from an operand (0: none) */
    bool post_add_c;              /* Gemm: beta*C added after the primitive (runtime C) */
    bool alpha_in_b;              /* Gemm: alpha folded into the constant B at load */
    bool silu_after;              /* Conv: the last post-op (SiLU) runs as nn's own pass */
    bool mm_conv;                 /* MatMul/Gemm: runs as a 1x1 convolution over its rows */
    struct nn_wino *wino;         /* Conv: runs as nn's Winograd step (nn-wino.c) */
};

typedef struct nn_op {
    const char *name;
    int min_in, max_in, min_out, max_out;
    /* Check attributes and input types, set output dtype/shape; may read constant inputs. */
    xr_code (*infer)(nn_graph *g, nn_node *n, xr_error *err);
    /* Reference kernel, used for constant folding and for steps without a oneDNN primitive.
     * NULL: the op runs only through prepare (oneDNN). */
    xr_code (*run)(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err);
    /* Optional: build oneDNN primitives (after fusion); NULL = run the reference kernel. */
    xr_code (*prepare)(nn_graph *g, nn_node *n, xr_error *err);
    /* Output 0 is input 0's bytes under another shape (Reshape family): a view at run time. */
    bool view;
} nn_op;

struct nn_graph {
    nn_value *values;
    size_t n_values, cap_values;
    nn_node *nodes;
    size_t n_nodes;
    int *inputs, *outputs;
    size_t n_inputs, n_outputs;
    int64_t opset;
    int64_t batch;              /* batch the shapes were inferred for */
    dnnl_engine_t engine;       /* borrowed from the model */
    dnnl_stream_t stream;       /* load-time stream for weight reorders */
    const nn_graph *donor;      /* while compiling: a plan whose reordered weights are shared */
};

/* Execution context handed to kernels. */
struct nn_exec {
    uint8_t *arena;             /* NULL while folding constants */
    dnnl_stream_t stream;
    dnnl_memory_t *mems;        /* session: per step, NN_MAX_DNNL_ARGS memory objects */
    dnnl_memory_t scratch_mem;
    void *scratch;
    size_t step;
};

/* Threads for nn's own parallel loops: the session's, or 1 inside a run that already gives
 * each thread whole samples (oneDNN does the same there), whatever OpenMP's nesting setting. */
static inline int nn_threads(void)
{
    return omp_in_parallel() ? 1 : omp_get_max_threads();
}

/* Data of value v in this context. */
static inline void *nn_ptr(const nn_graph *g, nn_exec *x, int v)
{
    const nn_value *val = &g->values[v];
    while (!val->data && val->view_of >= 0)
        val = &g->values[val->view_of];
    if (val->data)
        return val->data;
    return x->arena + val->offset;
}

/* nn-ops.c */
const nn_op *nn_op_find(const char *name);
size_t nn_elem_size(nn_dtype t);
/* Attribute lookup on the node's proto; NULL when absent. */
const Onnx__AttributeProto *nn_attr(const nn_node *n, const char *name);
int64_t nn_attr_int(const nn_node *n, const char *name, int64_t dflt);
float nn_attr_float(const nn_node *n, const char *name, float dflt);
/* Set shape of value v (computes n_elems/n_bytes, checks limits). */
xr_code nn_value_set(nn_graph *g, int v, nn_dtype dt, int rank, const int64_t *dims,
                     xr_error *err);
xr_code nn_value_shape(nn_value *val, nn_dtype dt, int rank, const int64_t *dims, xr_error *err);
/* Read a constant integer tensor (int32/int64) into out[max]; returns count or -1. */
int nn_const_ints(const nn_graph *g, int v, int64_t *out, int max);
void *nn_aligned_alloc(size_t n_bytes);
/* Convert a TensorProto (already validated) to a constant value's data; base_dir for external
 * data (NULL refuses it). */
xr_code nn_tensor_load(const Onnx__TensorProto *t, const char *base_dir, nn_value *v,
                       const char *what, xr_error *err);

/* nn-graph.c: build g from mp for a batch (used where axis 0 of an input is symbolic);
 * *ret_dynamic tells whether one was. share (or NULL): a graph built from the same mp whose
 * initializer data g borrows instead of copying (it must outlive g's use of them).
 * nn_graph_done frees everything g owns. */
xr_code nn_graph_build(const Onnx__ModelProto *mp, const char *base_dir, int64_t batch,
                       const nn_params *p, const nn_graph *share, nn_graph *g,
                       bool *ret_dynamic, xr_error *err);
void nn_graph_done(nn_graph *g);

/* nn-dnnl.c */
/* Whether this CPU runs nn's own AVX2+FMA kernels (SiLU pass, squeeze-excitation, Softmax rows,
 * Winograd); else oneDNN's primitives and the portable loops run. */
bool nn_avx2_fma(void);
xr_code nn_dnnl_check(dnnl_status_t st, const nn_node *n, const char *what, xr_error *err);
xr_code nn_conv_prepare(nn_graph *g, nn_node *n, xr_error *err);
xr_code nn_matmul_prepare(nn_graph *g, nn_node *n, xr_error *err);
xr_code nn_layernorm_prepare(nn_graph *g, nn_node *n, xr_error *err);
xr_code nn_softmax_prepare(nn_graph *g, nn_node *n, xr_error *err);
xr_code nn_pool_prepare(nn_graph *g, nn_node *n, xr_error *err);
xr_code nn_binary_prepare(nn_graph *g, nn_node *n, xr_error *err);
xr_code nn_dnnl_run(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err);
xr_code nn_matmul_ref(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err);
xr_code nn_gemm_ref(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err);
void nn_node_dnnl_free(nn_node *n);
/* After every prepare: readers that need plain row-major data get reorders of blocked inputs. */
xr_code nn_layout_fixup(nn_graph *g, xr_error *err);
/* Run n's layout reorders (session memory objects after its argument slots). */
xr_code nn_pre_run(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err);

/* nn-dnnl.c: GlobalAveragePool, Conv 1x1 + SiLU, Conv 1x1 + Sigmoid and the Mul that scales
 * by it, as one step (made only by nn-opt.c; inputs x, W1, b1, W2, b2). */
extern const nn_op nn_op_squeeze_excitation;

/* nn-wino.c: 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) or F(4x4, 3x3) on nChw8c
 * activations. */
typedef struct nn_wino nn_wino;
/* Whether n (a prepared-to-be Conv) runs so on this CPU: 3x3, stride 1, pads 1, group 1,
 * in-channels a multiple of 8, out-channels of 16, constant weights, no post-op but ReLU, and
 * outputs large enough that Winograd does fewer multiply-adds (nn_wino_mac_ratio). */
bool nn_wino_eligible(const nn_graph *g, const nn_node *n);
/* The output tile side (2 or 4) for a layer; XREG_NN_WINOGRAD=2 forces 2. */
int nn_wino_tile(int64_t h, int64_t w, int64_t cin, int64_t cout);
/* Winograd's multiply-adds over the direct sum's for this shape and tile side, tile padding
 * included. */
double nn_wino_mac_ratio(int64_t batch, int64_t h, int64_t w, int64_t cin, int64_t cout, int m);
/* Weights w [cout][cin][3][3] transformed for tile side m (2 or 4) and packed; NULL when out
 * of memory. */
nn_wino *nn_wino_new(const float *w, int64_t cout, int64_t cin, int m);
/* The tile side z was made for. */
int nn_wino_m(const nn_wino *z);
/* Another plan's transformed weights, shared (freed with the donor). */
nn_wino *nn_wino_borrow(const nn_wino *donor);
void nn_wino_free(nn_wino *z);
size_t nn_wino_scratch_bytes(const nn_wino *z, int64_t batch, int64_t h, int64_t w);
/* y = conv(x) + bias (may be NULL), then ReLU when relu; x [batch][cin/8][h][w][8],
 * y [batch][cout/8][h][w][8]; scratch of nn_wino_scratch_bytes. */
void nn_wino_run(const nn_wino *z, const float *x, const float *bias, bool relu, float *y,
                 int64_t batch, int64_t h, int64_t w, float *scratch, int threads);

/* nn-opt.c: fusions; returns the number of nodes absorbed. */
size_t nn_graph_optimize(nn_graph *g);
/* v = val's own row-major layout, as a view that is on */
void nn_view_plain(nn_view *v, const nn_value *val);
