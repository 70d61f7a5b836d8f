/*
 * nn/ loading and validation: models are built here with the generated protobuf-c types,
 * packed, then damaged on purpose. Every rejection must be a clear error, never a crash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nn-internal.h"
#include "nn.h"

/* ---------------------------------------------------------------- a tiny model builder */

#define MAXN 16
typedef struct builder {
    Onnx__ModelProto model;
    Onnx__GraphProto graph;
    Onnx__OperatorSetIdProto opset;
    Onnx__OperatorSetIdProto *opsets[1];
    Onnx__NodeProto nodes[MAXN], *node_ptrs[MAXN];
    char *node_in[MAXN][6], *node_out[MAXN][2];
    Onnx__AttributeProto attrs[MAXN], *attr_ptrs[MAXN][1];
    Onnx__TensorProto inits[MAXN], *init_ptrs[MAXN];
    Onnx__StringStringEntryProto ext[MAXN][3], *ext_ptrs[MAXN][3];
    Onnx__ValueInfoProto vis[2 * MAXN], *in_ptrs[MAXN], *out_ptrs[MAXN];
    Onnx__TypeProto types[2 * MAXN];
    Onnx__TypeProto__Tensor ttypes[2 * MAXN];
    Onnx__TensorShapeProto shapes[2 * MAXN];
    Onnx__TensorShapeProto__Dimension dims[2 * MAXN][NN_MAX_RANK], *dim_ptrs[2 * MAXN][NN_MAX_RANK];
    Onnx__StringStringEntryProto meta[4], *meta_ptrs[4];
    int n_vis;
} builder;

static void b_init(builder *b, int64_t opset)
{
    memset(b, 0, sizeof(*b));
    b->model = (Onnx__ModelProto)ONNX__MODEL_PROTO__INIT;
    b->graph = (Onnx__GraphProto)ONNX__GRAPH_PROTO__INIT;
    b->opset = (Onnx__OperatorSetIdProto)ONNX__OPERATOR_SET_ID_PROTO__INIT;
    b->opset.domain = "";
    b->opset.has_version = 1;
    b->opset.version = opset;
    b->opsets[0] = &b->opset;
    b->model.has_ir_version = 1;
    b->model.ir_version = 8;
    b->model.n_opset_import = 1;
    b->model.opset_import = b->opsets;
    b->model.graph = &b->graph;
    b->graph.name = "g";
    b->graph.node = b->node_ptrs;
    b->graph.initializer = b->init_ptrs;
    b->graph.input = b->in_ptrs;
    b->graph.output = b->out_ptrs;
}

/* dims: -1 = symbolic "batch" */
static Onnx__ValueInfoProto *b_vi(builder *b, const char *name, int rank, const int64_t *d)
{
    int k = b->n_vis++;
    Onnx__ValueInfoProto *vi = &b->vis[k];
    *vi = (Onnx__ValueInfoProto)ONNX__VALUE_INFO_PROTO__INIT;
    b->types[k] = (Onnx__TypeProto)ONNX__TYPE_PROTO__INIT;
    b->ttypes[k] = (Onnx__TypeProto__Tensor)ONNX__TYPE_PROTO__TENSOR__INIT;
    b->shapes[k] = (Onnx__TensorShapeProto)ONNX__TENSOR_SHAPE_PROTO__INIT;
    for (int i = 0; i < rank; i++) {
        b->dims[k][i] = (Onnx__TensorShapeProto__Dimension)ONNX__TENSOR_SHAPE_PROTO__DIMENSION__INIT;
        if (d[i] < 0) {
            b->dims[k][i].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            b->dims[k][i].dim_param = "batch";
        } else {
            b->dims[k][i].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            b->dims[k][i].dim_value = d[i];
        }
        b->dim_ptrs[k][i] = &b->dims[k][i];
    }
    b->shapes[k].n_dim = (size_t)rank;
    b->shapes[k].dim = b->dim_ptrs[k];
    b->ttypes[k].has_elem_type = 1;
    b->ttypes[k].elem_type = NN_DTYPE_FLOAT;
    b->ttypes[k].shape = &b->shapes[k];
    b->types[k].value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    b->types[k].tensor_type = &b->ttypes[k];
    vi->name = (char *)name;
    vi->type = &b->types[k];
    return vi;
}

static void b_input(builder *b, const char *name, int rank, const int64_t *d)
{
    b->in_ptrs[b->graph.n_input++] = b_vi(b, name, rank, d);
}

static void b_output(builder *b, const char *name, int rank, const int64_t *d)
{
    b->out_ptrs[b->graph.n_output++] = b_vi(b, name, rank, d);
}

static Onnx__NodeProto *b_node(builder *b, const char *op, const char *name, const char *in0,
                               const char *in1, const char *out)
{
    int k = (int)b->graph.n_node++;
    Onnx__NodeProto *n = &b->nodes[k];
    *n = (Onnx__NodeProto)ONNX__NODE_PROTO__INIT;
    n->op_type = (char *)op;
    n->name = (char *)name;
    b->node_in[k][0] = (char *)in0;
    b->node_in[k][1] = (char *)in1;
    n->n_input = in1 ? 2 : 1;
    n->input = b->node_in[k];
    b->node_out[k][0] = (char *)out;
    n->n_output = 1;
    n->output = b->node_out[k];
    b->node_ptrs[k] = n;
    return n;
}

static Onnx__TensorProto *b_init_f32(builder *b, const char *name, int rank, int64_t *d,
                                     float *data, size_t n_bytes)
{
    int k = (int)b->graph.n_initializer++;
    Onnx__TensorProto *t = &b->inits[k];
    *t = (Onnx__TensorProto)ONNX__TENSOR_PROTO__INIT;
    t->name = (char *)name;
    t->n_dims = (size_t)rank;
    t->dims = d;
    t->has_data_type = 1;
    t->data_type = NN_DTYPE_FLOAT;
    if (data) {
        t->has_raw_data = 1;
        t->raw_data.data = (uint8_t *)data;
        t->raw_data.len = n_bytes;
    }
    b->init_ptrs[k] = t;
    return t;
}

static void b_external(builder *b, Onnx__TensorProto *t, const char *loc, const char *off,
                       const char *len)
{
    int k = (int)(t - b->inits);
    const char *keys[3] = {"location", "offset", "length"}, *vals[3] = {loc, off, len};
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        if (!vals[i])
            continue;
        b->ext[k][n] = (Onnx__StringStringEntryProto)ONNX__STRING_STRING_ENTRY_PROTO__INIT;
        b->ext[k][n].key = (char *)keys[i];
        b->ext[k][n].value = (char *)vals[i];
        b->ext_ptrs[k][n] = &b->ext[k][n];
        n++;
    }
    t->n_external_data = n;
    t->external_data = b->ext_ptrs[k];
    t->has_data_location = 1;
    t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    t->has_raw_data = 0;
}

static uint8_t *b_pack(builder *b, size_t *ret_n)
{
    size_t n = onnx__model_proto__get_packed_size(&b->model);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    assert_int_equal(onnx__model_proto__pack(&b->model, buf), n);
    *ret_n = n;
    return buf;
}

static xr_code load_b(builder *b, const nn_params *p, nn_model **m, xr_error *err)
{
    size_t n;
    uint8_t *buf = b_pack(b, &n);
    xr_code rc = nn_model_load_buffer(buf, n, NULL, p, m, err);
    free(buf);
    return rc;
}

/* Load b (must succeed) and read its stats. */
static nn_model *load_ok(builder *b, const nn_params *p, nn_model_stats *st)
{
    nn_model *m = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(load_b(b, p, &m, &err), XR_OK);
    nn_model_stats_get(m, st);
    return m;
}

/* y = relu(x + w), x [batch?, 4] */
static void relu_add_model(builder *b, bool dynamic)
{
    static int64_t xd[2] = {2, 4}, wd[1] = {4};
    static float w[4] = {1, -1, 0.5f, -0.5f};
    int64_t dd[2] = {dynamic ? -1 : 2, 4};
    b_init(b, 13);
    b_input(b, "x", 2, dynamic ? dd : xd);
    b_init_f32(b, "w", 1, wd, w, sizeof(w));
    b_node(b, "Add", "add0", "x", "w", "s");
    b_node(b, "Relu", "relu0", "s", NULL, "y");
    b_output(b, "y", 2, dynamic ? dd : xd);
}

/* y = x W, x [batch, 4], W constant [4, 4]: a product-heavy model (chunks side by side) */
static void matmul_model(builder *b)
{
    static int64_t xd[2] = {-1, 4}, wd[2] = {4, 4};
    static float w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (float)(i % 5) - 1.5f;
    b_init(b, 13);
    b_input(b, "x", 2, xd);
    b_init_f32(b, "w", 2, wd, w, sizeof(w));
    b_node(b, "MatMul", "mm", "x", "w", "y");
    b_output(b, "y", 2, xd);
}

/* ---------------------------------------------------------------- tests */

static void test_valid_model_runs(void **state)
{
    (void)state;
    builder b;
    relu_add_model(&b, false);
    nn_model *m = NULL;
    nn_session *s = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_OK);
    assert_int_equal(nn_session_new(m, 1, &s, &err), XR_OK);
    float x[8] = {0, 0, 0, 0, -2, 2, 1, 1}, y[8];
    const void *in[1] = {x};
    void *out[1] = {y};
    assert_int_equal(nn_session_run(s, 1, in, out, &err), XR_OK);
    const float want[8] = {1, 0, 0.5f, 0, 0, 1, 1.5f, 0.5f};
    for (int i = 0; i < 8; i++)
        assert_float_equal(y[i], want[i], 1e-6);
    /* a fixed-batch model runs exactly one batch */
    assert_int_equal(nn_session_run(s, 2, in, out, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "batch of 2"));
    nn_session_free(s);
    nn_model_free(m);
}

static void test_truncated_and_corrupt(void **state)
{
    (void)state;
    builder b;
    relu_add_model(&b, false);
    size_t n;
    uint8_t *buf = b_pack(&b, &n);
    nn_model *m = NULL;
    xr_error err = XR_ERROR_INIT;
    /* every truncation either fails cleanly or (at a field boundary) is caught by validation */
    for (size_t cut = 0; cut < n; cut++) {
        xr_code rc = nn_model_load_buffer(buf, cut, NULL, NULL, &m, &err);
        assert_int_not_equal(rc, XR_OK);
        assert_true(rc == XR_E_INPUT || rc == XR_E_UNSUPPORTED);
        assert_true(err.msg[0] != '\0');
    }
    assert_int_equal(nn_model_load_buffer(buf, 0, NULL, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "empty"));
    /* flipped bytes: never a crash */
    for (size_t i = 0; i < n; i++) {
        uint8_t *c = malloc(n);
        memcpy(c, buf, n);
        c[i] ^= 0xA5;
        if (nn_model_load_buffer(c, n, NULL, NULL, &m, &err) == XR_OK)
            m = nn_model_free(m);
        free(c);
    }
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    assert_int_equal(nn_model_load_buffer(junk, sizeof(junk), NULL, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "truncated or corrupt"));
    free(buf);
}

static void test_unsupported_op_named(void **state)
{
    (void)state;
    builder b;
    relu_add_model(&b, false);
    b.nodes[1].op_type = "FancyOp";
    nn_model *m = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "\"FancyOp\""));
    assert_non_null(strstr(err.msg, "\"relu0\""));
    assert_non_null(strstr(err.msg, "opset 13"));
    /* other domains */
    relu_add_model(&b, false);
    b.nodes[1].domain = "com.microsoft";
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "com.microsoft"));
}

static void test_opset_range(void **state)
{
    (void)state;
    builder b;
    relu_add_model(&b, false);
    b.opset.version = 18;
    nn_model *m = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "opset 18"));
    b.opset.domain = "ai.onnx.ml";
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "no default-domain opset"));
}

static void test_bad_shapes(void **state)
{
    (void)state;
    builder b;
    nn_model *m = NULL;
    xr_error err = XR_ERROR_INIT;
    relu_add_model(&b, false);
    static int64_t wd3[1] = {3};
    static float w3[3];
    b.inits[0].dims = wd3;
    b.inits[0].raw_data.data = (uint8_t *)w3;
    b.inits[0].raw_data.len = sizeof(w3);
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "\"add0\""));
    assert_non_null(strstr(err.msg, "broadcast"));
    /* declared output shape disagrees with inference */
    relu_add_model(&b, false);
    b.dims[1][1].dim_value = 5;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "declared shape"));
    /* negative dimension */
    relu_add_model(&b, false);
    b.dims[0][1].dim_value = -3;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    /* a symbolic dimension past axis 0 */
    relu_add_model(&b, false);
    b.dims[0][1].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
    b.dims[0][1].dim_param = "width";
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "\"width\""));
}

static void test_tensor_data_checked(void **state)
{
    (void)state;
    builder b;
    nn_model *m = NULL;
    xr_error err = XR_ERROR_INIT;
    relu_add_model(&b, false);
    b.inits[0].raw_data.len = 12; /* 3 floats for 4 elements */
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "\"w\""));
    assert_non_null(strstr(err.msg, "12 bytes"));
    /* element count overflow */
    relu_add_model(&b, false);
    static int64_t huge[3] = {INT64_C(1) << 40, INT64_C(1) << 40, 4};
    b.inits[0].n_dims = 3;
    b.inits[0].dims = huge;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_LIMIT);
    /* within the element limit but past the byte limit (2^28 floats = 1 GiB + 4 bytes) */
    relu_add_model(&b, false);
    static int64_t big[2] = {(INT64_C(1) << 28) + 1, 1};
    b.inits[0].n_dims = 2;
    b.inits[0].dims = big;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_LIMIT);
    assert_non_null(strstr(err.msg, "bytes, at most"));
    /* unsupported type */
    relu_add_model(&b, false);
    b.inits[0].data_type = NN_DTYPE_STRING;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "string"));
    /* unknown type */
    b.inits[0].data_type = 99;
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "99"));
}

static void test_graph_structure(void **state)
{
    (void)state;
    builder b;
    nn_model *m = NULL;
    xr_error err = XR_ERROR_INIT;
    relu_add_model(&b, false);
    b.node_in[1][0] = "nowhere";
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "\"nowhere\""));
    relu_add_model(&b, false);
    b.node_out[1][0] = "s"; /* defined twice */
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "defined twice"));
    relu_add_model(&b, false);
    b.out_ptrs[0]->name = "missing";
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "\"missing\""));
    relu_add_model(&b, false);
    b.nodes[1].n_input = 3; /* Relu takes one input */
    b.node_in[1][1] = "x";
    b.node_in[1][2] = "x";
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "3 inputs"));
}

static char tmpdir[256];

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static xr_code load_file(builder *b, nn_model **m, xr_error *err)
{
    size_t n;
    uint8_t *buf = b_pack(b, &n);
    char path[512];
    snprintf(path, sizeof(path), "%s/model/m.onnx", tmpdir);
    write_file(path, buf, n);
    free(buf);
    return nn_model_load(path, NULL, m, err);
}

static void test_external_data(void **state)
{
    (void)state;
    char p[512];
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/nn-test-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    snprintf(p, sizeof(p), "%s/model", tmpdir);
    assert_int_equal(mkdir(p, 0700), 0);
    float w[6] = {9, 9, 1, -1, 0.5f, -0.5f};
    snprintf(p, sizeof(p), "%s/model/w.bin", tmpdir);
    write_file(p, w, sizeof(w));
    snprintf(p, sizeof(p), "%s/outside.bin", tmpdir);
    write_file(p, w, sizeof(w));
    snprintf(p, sizeof(p), "%s/model/link.bin", tmpdir);
    char target[512];
    snprintf(target, sizeof(target), "%s/outside.bin", tmpdir);
    assert_int_equal(symlink(target, p), 0);

    builder b;
    nn_model *m = NULL;
    nn_session *s = NULL;
    xr_error err = XR_ERROR_INIT;
    /* good: offset 8 skips the two 9s */
    relu_add_model(&b, false);
    b_external(&b, &b.inits[0], "w.bin", "8", "16");
    assert_int_equal(load_file(&b, &m, &err), XR_OK);
    assert_int_equal(nn_session_new(m, 1, &s, &err), XR_OK);
    float x[8] = {0}, y[8];
    const void *in[1] = {x};
    void *out[1] = {y};
    assert_int_equal(nn_session_run(s, 1, in, out, &err), XR_OK);
    assert_float_equal(y[0], 1.0f, 0);
    assert_float_equal(y[2], 0.5f, 0);
    s = nn_session_free(s);
    m = nn_model_free(m);
    /* escaping the model's folder */
    const char *bad[] = {"../outside.bin", "/etc/passwd", "link.bin", "sub/../../outside.bin"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        relu_add_model(&b, false);
        b_external(&b, &b.inits[0], bad[i], NULL, NULL);
        assert_int_equal(load_file(&b, &m, &err), XR_E_INPUT);
        assert_non_null(strstr(err.msg, "escapes the model's folder"));
    }
    /* past the end of the file */
    relu_add_model(&b, false);
    b_external(&b, &b.inits[0], "w.bin", "16", NULL);
    assert_int_equal(load_file(&b, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "outside"));
    /* wrong length, missing file, bad offset */
    relu_add_model(&b, false);
    b_external(&b, &b.inits[0], "w.bin", "0", "12");
    assert_int_equal(load_file(&b, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "length 12"));
    relu_add_model(&b, false);
    b_external(&b, &b.inits[0], "nope.bin", NULL, NULL);
    assert_int_equal(load_file(&b, &m, &err), XR_E_IO);
    relu_add_model(&b, false);
    b_external(&b, &b.inits[0], "w.bin", "-5", NULL);
    assert_int_equal(load_file(&b, &m, &err), XR_E_INPUT);
    /* from a buffer there is no folder: refused */
    relu_add_model(&b, false);
    b_external(&b, &b.inits[0], "w.bin", NULL, NULL);
    assert_int_equal(load_b(&b, NULL, &m, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "buffer"));
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
}

static void test_dynamic_batch_and_metadata(void **state)
{
    (void)state;
    builder b;
    relu_add_model(&b, true);
    b.meta[0] = (Onnx__StringStringEntryProto)ONNX__STRING_STRING_ENTRY_PROTO__INIT;
    b.meta[0].key = "xreg.labels";
    b.meta[0].value = "a,b,c,d";
    b.meta_ptrs[0] = &b.meta[0];
    b.model.n_metadata_props = 1;
    b.model.metadata_props = b.meta_ptrs;
    nn_params p = nn_params_default();
    p.max_batch = 4;
    xr_error err = XR_ERROR_INIT;
    /* 1 thread: batch plan and batch-1 runs; 2 and 3: samples side by side, plus the rest */
    for (int threads = 1; threads <= 3; threads++) {
    p.n_threads = threads;
    nn_model *m = NULL;
    nn_session *s = NULL;
    assert_int_equal(load_b(&b, &p, &m, &err), XR_OK);
    assert_int_equal(nn_model_threads(m), threads);
    assert_string_equal(nn_model_metadata_get(m, "xreg.labels"), "a,b,c,d");
    assert_null(nn_model_metadata_get(m, "xreg.mean"));
    nn_tensor_info ti;
    assert_true(nn_model_input(m, 0, &ti));
    assert_true(ti.batch_dynamic);
    assert_int_equal(ti.sample_bytes, 16);
    assert_int_equal(nn_model_max_batch(m), 4);
    /* a primitive keeps the thread count it was created with: sessions must use the model's */
    assert_int_equal(nn_session_new(m, threads + 1, &s, &err), XR_E_CONFIG);
    assert_non_null(strstr(err.msg, "nn_params.n_threads"));
    assert_int_equal(nn_session_new(m, -1, &s, &err), XR_E_CONFIG);
    assert_int_equal(nn_session_new(m, 0, &s, &err), XR_OK); /* 0: the model's */
    nn_session_free(s);
    assert_int_equal(nn_session_new(m, threads, &s, &err), XR_OK);
    float x[12] = {0, 0, 0, 0, -2, 2, 1, 1, 3, 3, 3, 3}, y[12];
    const void *in[1] = {x};
    void *out[1] = {y};
    assert_int_equal(nn_session_run(s, 3, in, out, &err), XR_OK);
    assert_float_equal(y[9], 2.0f, 1e-6);
    assert_float_equal(y[11], 2.5f, 1e-6);
    /* every path gives the same rows: one sample at a time (n 1), the batch-4 plan padded
     * (n 2, 3) and full (n 4) */
    float x4[16] = {0, 0, 0, 0, -2, 2, 1, 1, 3, 3, 3, 3, -1, 0.5f, -3, 7}, y4[16], y1[16];
    const void *in4[1] = {x4};
    void *out4[1] = {y4};
    for (int r = 0; r < 4; r++) {
        const void *in1[1] = {x4 + 4 * r};
        void *out1[1] = {y1 + 4 * r};
        assert_int_equal(nn_session_run(s, 1, in1, out1, &err), XR_OK);
    }
    assert_memory_equal(y1, y, 12 * sizeof(float));
    for (uint32_t n = 1; n <= 4; n++) {
        memset(y4, 0xff, sizeof(y4));
        assert_int_equal(nn_session_run(s, n, in4, out4, &err), XR_OK);
        assert_memory_equal(y4, y1, 4 * n * sizeof(float));
        for (uint32_t i = 4 * n; i < 16; i++)
            assert_true(isnan(y4[i])); /* rows past n are not written */
    }
    assert_int_equal(nn_session_run(s, 5, in, out, &err), XR_E_INPUT);
    assert_int_equal(nn_session_run(s, 0, in, out, &err), XR_E_INPUT);
    nn_session_free(s);
    nn_model_free(m);
    }
    nn_model *m = NULL;
    p.n_threads = 0;
    assert_int_equal(load_b(&b, &p, &m, &err), XR_E_CONFIG);
    assert_non_null(strstr(err.msg, "n_threads 0"));
    p.n_threads = 1;
    p.max_batch = NN_MAX_BATCH + 1;
    assert_int_equal(load_b(&b, &p, &m, &err), XR_E_LIMIT);
}

/* Every way a batch can run gives each sample the result it gets alone: 1 thread (batch plan
 * or batch-1 runs), samples side by side (elementwise model: no product outweighs the
 * convolutions it lacks) and chunks side by side (a MatMul model), for every batch size. */
static void test_side_by_side_paths(void **state)
{
    (void)state;
    for (int kind = 0; kind < 2; kind++) {
        for (int threads = 1; threads <= 3; threads++) {
            builder b;
            if (kind)
                matmul_model(&b);
            else
                relu_add_model(&b, true);
            nn_params p = nn_params_default();
            p.max_batch = 4;
            p.n_threads = threads;
            nn_model_stats st;
            nn_model *m = load_ok(&b, &p, &st);
            nn_session *s = NULL;
            xr_error err = XR_ERROR_INIT;
            assert_int_equal(st.side_by_side, threads > 1);
            assert_int_equal(st.lane_batch, threads > 1 && kind ? 2 : 1);
            assert_int_equal(nn_session_new(m, threads, &s, &err), XR_OK);
            float x[16], y1[16], y[16];
            for (int i = 0; i < 16; i++)
                x[i] = sinf((float)i * 0.9f) * 3.0f;
            for (int r = 0; r < 4; r++) {
                const void *in1[1] = {x + 4 * r};
                void *out1[1] = {y1 + 4 * r};
                assert_int_equal(nn_session_run(s, 1, in1, out1, &err), XR_OK);
            }
            for (uint32_t n = 1; n <= 4; n++) {
                const void *in[1] = {x};
                void *out[1] = {y};
                memset(y, 0xff, sizeof(y));
                assert_int_equal(nn_session_run(s, n, in, out, &err), XR_OK);
                for (uint32_t i = 0; i < 4 * n; i++)
                    assert_float_equal(y[i], y1[i], 1e-5);
                for (uint32_t i = 4 * n; i < 16; i++)
                    assert_true(isnan(y[i]));
            }
            nn_session_free(s);
            nn_model_free(m);
        }
    }
}

/* Conv2 ; Conv1 -> BatchNormalization -> Add(conv2) -> Relu: optimized == unoptimized */
static void test_fusion_matches_reference(void **state)
{
    (void)state;
    static int64_t xd[4] = {1, 2, 5, 5}, wd[4] = {3, 2, 3, 3}, cd[1] = {3};
    static float w1[54], w2[54], bias[3], sc[3], be[3], mu[3], va[3];
    for (int i = 0; i < 54; i++) {
        w1[i] = sinf((float)i) * 0.5f;
        w2[i] = cosf((float)i * 0.7f) * 0.3f;
    }
    for (int c = 0; c < 3; c++) {
        bias[c] = 0.1f * (float)c;
        sc[c] = 1.0f + 0.2f * (float)c;
        be[c] = -0.3f + 0.1f * (float)c;
        mu[c] = 0.05f * (float)c;
        va[c] = 0.5f + (float)c;
    }
    builder b;
    b_init(&b, 13);
    int64_t yd[4] = {1, 3, 3, 3};
    b_input(&b, "x", 4, xd);
    b_init_f32(&b, "w1", 4, wd, w1, sizeof(w1));
    b_init_f32(&b, "w2", 4, wd, w2, sizeof(w2));
    b_init_f32(&b, "b1", 1, cd, bias, sizeof(bias));
    b_init_f32(&b, "sc", 1, cd, sc, sizeof(sc));
    b_init_f32(&b, "be", 1, cd, be, sizeof(be));
    b_init_f32(&b, "mu", 1, cd, mu, sizeof(mu));
    b_init_f32(&b, "va", 1, cd, va, sizeof(va));
    b_node(&b, "Conv", "conv2", "x", "w2", "c2");
    Onnx__NodeProto *c1 = b_node(&b, "Conv", "conv1", "x", "w1", "c1");
    c1->n_input = 3;
    b.node_in[1][2] = "b1";
    Onnx__NodeProto *bn = b_node(&b, "BatchNormalization", "bn", "c1", "sc", "n1");
    bn->n_input = 5;
    b.node_in[2][2] = "be";
    b.node_in[2][3] = "mu";
    b.node_in[2][4] = "va";
    b_node(&b, "Add", "add", "n1", "c2", "s");
    b_node(&b, "Relu", "relu", "s", NULL, "y");
    b_output(&b, "y", 4, yd);
    float x[50], y_opt[27], y_ref[27];
    for (int i = 0; i < 50; i++)
        x[i] = cosf((float)i * 1.3f);
    for (int opt = 0; opt < 2; opt++) {
        nn_params p = nn_params_default();
        p.optimize = opt;
        nn_model_stats st;
        nn_model *m = load_ok(&b, &p, &st);
        nn_session *s = NULL;
        xr_error err = XR_ERROR_INIT;
        assert_int_equal(st.n_fused, opt ? 3 : 0); /* BN, Add (sum), Relu */
        assert_int_equal(st.n_steps, opt ? 2 : 5);
        assert_int_equal(nn_session_new(m, 1, &s, &err), XR_OK);
        const void *in[1] = {x};
        void *out[1] = {opt ? y_opt : y_ref};
        assert_int_equal(nn_session_run(s, 1, in, out, &err), XR_OK);
        nn_session_free(s);
        nn_model_free(m);
    }
    int positive = 0;
    for (int i = 0; i < 27; i++) {
        assert_float_equal(y_opt[i], y_ref[i], 1e-5);
        positive += y_ref[i] > 0;
    }
    assert_true(positive > 0 && positive < 27); /* the Relu did something */
}

typedef struct worker_arg {
    const nn_model *m;
    const float *x;
    const float *want;
    int ok;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    nn_session *s = NULL;
    xr_error err = XR_ERROR_INIT;
    float y[8];
    const void *in[1] = {a->x};
    void *out[1] = {y};
    if (nn_session_new(a->m, 1, &s, &err))
        return NULL;
    a->ok = 1;
    for (int i = 0; i < 200 && a->ok; i++) {
        if (nn_session_run(s, 2, in, out, &err) || memcmp(y, a->want, sizeof(y)) != 0)
            a->ok = 0;
    }
    nn_session_free(s);
    return NULL;
}

/* One shared model, a session per thread, runs at the same time: same results. */
static void test_sessions_in_threads(void **state)
{
    (void)state;
    builder b;
    relu_add_model(&b, true);
    nn_params p = nn_params_default();
    p.max_batch = 2;
    nn_model *m = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(load_b(&b, &p, &m, &err), XR_OK);
    float x[8] = {0, 0, 0, 0, -2, 2, 1, 1};
    const float want[8] = {1, 0, 0.5f, 0, 0, 1, 1.5f, 0.5f};
    pthread_t t[4];
    worker_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (worker_arg){m, x, want, 0};
        assert_int_equal(pthread_create(&t[i], NULL, worker, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].ok, 1);
    }
    nn_model_free(m);
}

/* y = Conv(x, w) on [1, 8, 16, 16] (oneDNN's JIT convolution): small, but still split over
 * every thread the primitive was created for. */
static void conv_model(builder *b)
{
    static int64_t xd[4] = {1, 8, 16, 16}, wd[4] = {8, 8, 3, 3}, yd[4] = {1, 8, 14, 14};
    static float w[576];
    for (int i = 0; i < 576; i++)
        w[i] = sinf((float)i) * 0.1f;
    b_init(b, 13);
    b_input(b, "x", 4, xd);
    b_init_f32(b, "w", 4, wd, w, sizeof(w));
    b_node(b, "Conv", "conv", "x", "w", "y");
    b_output(b, "y", 4, yd);
}

/* Child side of test_threads_honoured: load the conv model for `threads`, run it, and exit
 * with the number of threads the process then has (OpenMP keeps its workers). */
static int thread_probe(int threads)
{
    builder b;
    conv_model(&b);
    nn_params p = nn_params_default();
    p.n_threads = threads;
    nn_model *m = NULL;
    nn_session *s = NULL;
    xr_error err = XR_ERROR_INIT;
    static float x[2048], y[1568];
    const void *in[1] = {x};
    void *out[1] = {y};
    if (load_b(&b, &p, &m, &err) || nn_session_new(m, threads, &s, &err))
        return 100;
    for (int i = 0; i < 3; i++)
        if (nn_session_run(s, 1, in, out, &err))
            return 101;
    int n = 0;
    char path[64];
    for (int t = 1; t < 1 << 22 && n < 64; t++) {
        snprintf(path, sizeof(path), "/proc/self/task/%d", t);
        n += access(path, F_OK) == 0;
    }
    nn_session_free(s);
    nn_model_free(m);
    return n;
}

/* A 1-thread model must not start a second OpenMP thread even where the loading thread's
 * default is more (the child inherits OMP_NUM_THREADS=4), and a 2-thread one uses 2. A fresh
 * process per count, since OpenMP workers outlive the run. */
static void test_threads_honoured(void **state)
{
    (void)state;
    for (int threads = 1; threads <= 2; threads++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            char arg[16];
            snprintf(arg, sizeof(arg), "%d", threads);
            setenv("OMP_NUM_THREADS", "4", 1);
            execl("/proc/self/exe", "test-nn-load", "--thread-probe", arg, (char *)NULL);
            _exit(102);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), threads);
    }
}

static void test_claimed_list(void **state)
{
    (void)state;
    size_t n = 0;
    while (nn_claimed_op(n))
        n++;
    assert_true(n > 40);
    assert_true(nn_op_is_claimed("Conv"));
    assert_true(nn_op_is_claimed("LayerNormalization"));
    assert_false(nn_op_is_claimed("FancyOp"));
    assert_false(nn_op_is_claimed(NULL));
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--thread-probe") == 0)
        return thread_probe(atoi(argv[2]));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_model_runs),
        cmocka_unit_test(test_truncated_and_corrupt),
        cmocka_unit_test(test_unsupported_op_named),
        cmocka_unit_test(test_opset_range),
        cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_tensor_data_checked),
        cmocka_unit_test(test_graph_structure),
        cmocka_unit_test(test_external_data),
        cmocka_unit_test(test_dynamic_batch_and_metadata),
        cmocka_unit_test(test_side_by_side_paths),
        cmocka_unit_test(test_fusion_matches_reference),
        cmocka_unit_test(test_sessions_in_threads),
        cmocka_unit_test(test_threads_honoured),
        cmocka_unit_test(test_claimed_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
