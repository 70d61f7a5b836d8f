/*
 * The op table: per op, attribute parsing and shape inference (infer) and a reference kernel
 * (run) used for constant folding and for the light steps that have no oneDNN primitive.
 * Conv, MatMul and Gemm run on oneDNN (nn-dnnl.c). The table below is the one list of claimed
 * ops (docs/nn.md and tests/nn/conformance read it through nn_claimed_op()).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn-internal.h"

#define IN(i) (&g->values[n->in[i]])
#define OUTV(i) (&g->values[n->out[i]])
#define HAS(i) ((i) < n->n_in && n->in[i] >= 0)
#define HASOUT(i) ((i) < n->n_out && n->out[i] >= 0)

__attribute__((format(printf, 4, 5))) static xr_code node_err(const nn_node *n, xr_code code,
                                                               xr_error *err, const char *fmt,
                                                               ...)
{
    char buf[XR_ERROR_MSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return xr_error_set(err, code, "node \"%s\" (%s): %s", n->name, n->op_type, buf);
}
#define BAD(...) node_err(n, XR_E_INPUT, err, __VA_ARGS__)
#define UNSUP(...) node_err(n, XR_E_UNSUPPORTED, err, __VA_ARGS__)

static const char *const dtype_names[NN_DTYPE_MAX] = {
    "undefined", "float", "uint8", "int8",   "uint16", "int16", "int32",
    "int64",     "string", "bool", "float16", "double", "uint32", "uint64"};

const char *nn_dtype_name(nn_dtype t)
{
    return (unsigned)t < NN_DTYPE_MAX ? dtype_names[t] : "unknown";
}

size_t nn_elem_size(nn_dtype t)
{
    switch (t) {
    case NN_DTYPE_FLOAT: case NN_DTYPE_INT32: case NN_DTYPE_UINT32: return 4;
    case NN_DTYPE_UINT8: case NN_DTYPE_INT8: case NN_DTYPE_BOOL: return 1;
    case NN_DTYPE_UINT16: case NN_DTYPE_INT16: case NN_DTYPE_FLOAT16: return 2;
    case NN_DTYPE_INT64: case NN_DTYPE_DOUBLE: case NN_DTYPE_UINT64: return 8;
    default: return 0;
    }
}

size_t nn_dtype_size(nn_dtype t) { return t == NN_DTYPE_FLOAT16 ? 0 : nn_elem_size(t); }

void *nn_aligned_alloc(size_t n_bytes)
{
    size_t n = (n_bytes + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
    void *p = aligned_alloc(NN_ALIGN, n ? n : NN_ALIGN);
    if (p)
        memset(p, 0, n ? n : NN_ALIGN);
    return p;
}

const Onnx__AttributeProto *nn_attr(const nn_node *n, const char *name)
{
    if (!n->proto)
        return NULL;
    for (size_t i = 0; i < n->proto->n_attribute; i++)
        if (n->proto->attribute[i]->name && strcmp(n->proto->attribute[i]->name, name) == 0)
            return n->proto->attribute[i];
    return NULL;
}

int64_t nn_attr_int(const nn_node *n, const char *name, int64_t dflt)
{
    const Onnx__AttributeProto *a = nn_attr(n, name);
    return a && a->has_i ? a->i : dflt;
}

float nn_attr_float(const nn_node *n, const char *name, float dflt)
{
    const Onnx__AttributeProto *a = nn_attr(n, name);
    return a && a->has_f ? a->f : dflt;
}

static const char *attr_string(const nn_node *n, const char *name, const char *dflt, char *buf,
                               size_t n_buf)
{
    const Onnx__AttributeProto *a = nn_attr(n, name);
    if (!a || !a->has_s)
        return dflt;
    size_t l = a->s.len < n_buf - 1 ? a->s.len : n_buf - 1;
    memcpy(buf, a->s.data, l);
    buf[l] = '\0';
    return buf;
}

/* ints attribute into out (at most max); -1 when absent, -2 when too long. */
static int attr_ints(const nn_node *n, const char *name, int64_t *out, int max)
{
    const Onnx__AttributeProto *a = nn_attr(n, name);
    if (!a)
        return -1;
    if (a->n_ints > (size_t)max)
        return -2;
    for (size_t i = 0; i < a->n_ints; i++)
        out[i] = a->ints[i];
    return (int)a->n_ints;
}

xr_code nn_value_set(nn_graph *g, int v, nn_dtype dt, int rank, const int64_t *dims,
                     xr_error *err)
{
    return nn_value_shape(&g->values[v], dt, rank, dims, err);
}

xr_code nn_value_shape(nn_value *val, nn_dtype dt, int rank, const int64_t *dims, xr_error *err)
{
    if (rank < 0 || rank > NN_MAX_RANK)
        return xr_error_set(err, XR_E_UNSUPPORTED, "tensor \"%s\" has rank %d, at most %d supported",
                            val->name, rank, NN_MAX_RANK);
    if (nn_elem_size(dt) == 0)
        return xr_error_set(err, XR_E_UNSUPPORTED, "tensor \"%s\" has type %s, not supported",
                            val->name, nn_dtype_name(dt));
    int64_t count = 1;
    for (int i = 0; i < rank; i++) {
        if (dims[i] < 0)
            return xr_error_set(err, XR_E_INPUT, "tensor \"%s\" has dimension %d of %lld",
                                val->name, i, (long long)dims[i]);
        if (dims[i] && count > NN_TENSOR_MAX_ELEMS / dims[i])
            return xr_error_set(err, XR_E_LIMIT,
                                "tensor \"%s\" has more than %lld elements", val->name,
                                (long long)NN_TENSOR_MAX_ELEMS);
        count *= dims[i];
        val->dims[i] = dims[i];
    }
    if ((uint64_t)count * nn_elem_size(dt) > NN_TENSOR_MAX_BYTES)
        return xr_error_set(err, XR_E_LIMIT, "tensor \"%s\" would take %llu bytes, at most %llu",
                            val->name, (unsigned long long)count * nn_elem_size(dt),
                            (unsigned long long)NN_TENSOR_MAX_BYTES);
    val->dtype = dt;
    val->rank = rank;
    val->n_elems = count;
    val->n_bytes = (size_t)count * nn_elem_size(dt);
    val->known = true;
    return XR_OK;
}

int nn_const_ints(const nn_graph *g, int v, int64_t *out, int max)
{
    const nn_value *val = &g->values[v];
    if (!val->data || val->n_elems > max)
        return -1;
    for (int64_t i = 0; i < val->n_elems; i++) {
        if (val->dtype == NN_DTYPE_INT64)
            out[i] = ((const int64_t *)val->data)[i];
        else if (val->dtype == NN_DTYPE_INT32)
            out[i] = ((const int32_t *)val->data)[i];
        else
            return -1;
    }
    return (int)val->n_elems;
}

static bool is_const(const nn_graph *g, const nn_node *n, int i)
{
    return HAS(i) && IN(i)->data != NULL;
}

static xr_code need_float(nn_graph *g, nn_node *n, int i, xr_error *err)
{
    if (IN(i)->dtype != NN_DTYPE_FLOAT)
        return UNSUP("input %d \"%s\" is %s; only float is supported", i, IN(i)->name,
                     nn_dtype_name(IN(i)->dtype));
    return XR_OK;
}

static xr_code same_as_input(nn_graph *g, nn_node *n, int o, int i, xr_error *err)
{
    return nn_value_set(g, n->out[o], IN(i)->dtype, IN(i)->rank, IN(i)->dims, err);
}

static int norm_axis(int64_t axis, int rank)
{
    return (int)(axis < 0 ? axis + rank : axis);
}

/* ---------------------------------------------------------------- unary float ops */

enum unary {
    U_RELU, U_SIGMOID, U_TANH, U_ERF, U_SQRT, U_EXP, U_LOG, U_ABS, U_NEG, U_RECIP, U_FLOOR,
    U_CEIL, U_LEAKY, U_ELU, U_HSIG, U_HSWISH, U_CLIP, U_SOFTPLUS,
};

static int unary_kind(const char *op)
{
    static const char *const names[] = {"Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp",
                                        "Log", "Abs", "Neg", "Reciprocal", "Floor", "Ceil",
                                        "LeakyRelu", "Elu", "HardSigmoid", "HardSwish", "Clip",
                                        "Softplus"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(op, names[i]) == 0)
            return (int)i;
    return -1;
}

static double load_as_double(const void *p, nn_dtype t, int64_t i);
static void store_from_double(void *p, nn_dtype t, int64_t i, double v);
static bool numeric(nn_dtype t);

static xr_code infer_unary(nn_graph *g, nn_node *n, xr_error *err)
{
    int k = unary_kind(n->op_type);
    bool int_ok = (k == U_RELU || k == U_ABS || k == U_NEG || k == U_CLIP) &&
                  numeric(IN(0)->dtype) && IN(0)->dtype != NN_DTYPE_BOOL;
    if (!int_ok) {
        xr_code rc = need_float(g, n, 0, err);
        if (rc)
            return rc;
    }
    n->a.i0 = k;
    switch (k) {
    case U_LEAKY: n->a.f0 = nn_attr_float(n, "alpha", 0.01f); break;
    case U_ELU: n->a.f0 = nn_attr_float(n, "alpha", 1.0f); break;
    case U_HSIG:
        n->a.f0 = nn_attr_float(n, "alpha", 0.2f);
        n->a.f1 = nn_attr_float(n, "beta", 0.5f);
        break;
    case U_CLIP:
        n->a.f0 = -INFINITY;
        n->a.f1 = INFINITY;
        if (g->opset < 11) {
            n->a.f0 = nn_attr_float(n, "min", -INFINITY);
            n->a.f1 = nn_attr_float(n, "max", INFINITY);
        }
        for (int i = 1; i <= 2; i++) {
            if (!HAS(i))
                continue;
            if (!is_const(g, n, i))
                return UNSUP("input %d (clip bound) is not constant", i);
            if (IN(i)->dtype != IN(0)->dtype || IN(i)->n_elems != 1)
                return BAD("input %d (clip bound) must be a scalar of the input's type", i);
            (i == 1 ? &n->a.f0 : &n->a.f1)[0] = (float)load_as_double(IN(i)->data, IN(i)->dtype, 0);
        }
        break;
    default: break;
    }
    return same_as_input(g, n, 0, 0, err);
}

static xr_code run_unary(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    if (IN(0)->dtype != NN_DTYPE_FLOAT) {
        const void *pa = nn_ptr(g, x, n->in[0]);
        void *py = nn_ptr(g, x, n->out[0]);
        for (int64_t i = 0; i < IN(0)->n_elems; i++) {
            double v = load_as_double(pa, IN(0)->dtype, i);
            switch ((int)n->a.i0) {
            case U_RELU: v = v > 0 ? v : 0; break;
            case U_ABS: v = v < 0 ? -v : v; break;
            case U_NEG: v = -v; break;
            default: v = v < n->a.f0 ? n->a.f0 : v > n->a.f1 ? n->a.f1 : v; break;
            }
            store_from_double(py, IN(0)->dtype, i, v);
        }
        return XR_OK;
    }
    const float *a = nn_ptr(g, x, n->in[0]);
    float *y = nn_ptr(g, x, n->out[0]);
    int64_t cnt = IN(0)->n_elems;
    float p0 = n->a.f0, p1 = n->a.f1;
    switch ((int)n->a.i0) {
    case U_RELU: for (int64_t i = 0; i < cnt; i++) y[i] = a[i] > 0 ? a[i] : 0.0f; break;
    case U_SIGMOID: for (int64_t i = 0; i < cnt; i++) y[i] = 1.0f / (1.0f + expf(-a[i])); break;
    case U_TANH: for (int64_t i = 0; i < cnt; i++) y[i] = tanhf(a[i]); break;
    case U_ERF: for (int64_t i = 0; i < cnt; i++) y[i] = erff(a[i]); break;
    case U_SQRT: for (int64_t i = 0; i < cnt; i++) y[i] = sqrtf(a[i]); break;
    case U_EXP: for (int64_t i = 0; i < cnt; i++) y[i] = expf(a[i]); break;
    case U_LOG: for (int64_t i = 0; i < cnt; i++) y[i] = logf(a[i]); break;
    case U_ABS: for (int64_t i = 0; i < cnt; i++) y[i] = fabsf(a[i]); break;
    case U_NEG: for (int64_t i = 0; i < cnt; i++) y[i] = -a[i]; break;
    case U_RECIP: for (int64_t i = 0; i < cnt; i++) y[i] = 1.0f / a[i]; break;
    case U_FLOOR: for (int64_t i = 0; i < cnt; i++) y[i] = floorf(a[i]); break;
    case U_CEIL: for (int64_t i = 0; i < cnt; i++) y[i] = ceilf(a[i]); break;
    case U_LEAKY: for (int64_t i = 0; i < cnt; i++) y[i] = a[i] >= 0 ? a[i] : p0 * a[i]; break;
    case U_ELU:
        for (int64_t i = 0; i < cnt; i++) y[i] = a[i] >= 0 ? a[i] : p0 * (expf(a[i]) - 1.0f);
        break;
    case U_HSIG:
        for (int64_t i = 0; i < cnt; i++) y[i] = fmaxf(0.0f, fminf(1.0f, p0 * a[i] + p1));
        break;
    case U_HSWISH:
        for (int64_t i = 0; i < cnt; i++)
            y[i] = a[i] * fmaxf(0.0f, fminf(1.0f, a[i] / 6.0f + 0.5f));
        break;
    case U_CLIP:
        for (int64_t i = 0; i < cnt; i++) {
            float v = a[i] < p0 ? p0 : a[i];
            y[i] = v > p1 ? p1 : v;
        }
        break;
    case U_SOFTPLUS: for (int64_t i = 0; i < cnt; i++) y[i] = log1pf(expf(a[i])); break;
    default: return xr_error_set(err, XR_E_INTERNAL, "unary kind %lld", (long long)n->a.i0);
    }
    return XR_OK;
}

/* ---------------------------------------------------------------- broadcasting */

static xr_code broadcast_shape(const nn_node *n, const nn_value *const *ins, int n_ins,
                               int *ret_rank, int64_t *dims, xr_error *err)
{
    int rank = 0;
    for (int k = 0; k < n_ins; k++)
        rank = ins[k]->rank > rank ? ins[k]->rank : rank;
    for (int d = 0; d < rank; d++) {
        int64_t dim = 1;
        for (int k = 0; k < n_ins; k++) {
            int off = rank - ins[k]->rank;
            if (d < off)
                continue;
            int64_t e = ins[k]->dims[d - off];
            if (e == dim || e == 1)
                continue;
            if (dim != 1)
                return BAD("inputs cannot broadcast: dimension %d is %lld and %lld", d,
                           (long long)dim, (long long)e);
            dim = e;
        }
        dims[d] = dim;
    }
    *ret_rank = rank;
    return XR_OK;
}

/* Element strides of v laid out against an output of rank/dims (0 on broadcast axes). */
static void bcast_strides(const nn_value *v, int rank, const int64_t *dims, int64_t *st)
{
    int off = rank - v->rank;
    int64_t s = 1;
    for (int d = rank - 1; d >= 0; d--) {
        if (d < off || v->dims[d - off] == 1) {
            st[d] = 0;
        } else {
            st[d] = s;
            s *= v->dims[d - off];
        }
        (void)dims;
    }
}

/* Walks an output of rank/dims; calls body on each innermost run with three offsets. */
typedef struct bcast_it {
    int rank;
    int64_t dims[NN_MAX_RANK], idx[NN_MAX_RANK];
    int64_t st[3][NN_MAX_RANK];
    int64_t off[3];
    int64_t inner;
    int64_t n_outer;
} bcast_it;

static void bcast_init(bcast_it *it, const nn_value *out, const nn_value *const *ins, int n_ins)
{
    memset(it, 0, sizeof(*it));
    it->rank = out->rank;
    memcpy(it->dims, out->dims, sizeof(it->dims));
    for (int k = 0; k < n_ins; k++)
        bcast_strides(ins[k], out->rank, out->dims, it->st[k]);
    it->inner = out->rank ? out->dims[out->rank - 1] : 1;
    it->n_outer = it->inner ? out->n_elems / it->inner : 0;
}

static void bcast_next(bcast_it *it)
{
    for (int d = it->rank - 2; d >= 0; d--) {
        it->idx[d]++;
        for (int k = 0; k < 3; k++)
            it->off[k] += it->st[k][d];
        if (it->idx[d] < it->dims[d])
            return;
        for (int k = 0; k < 3; k++)
            it->off[k] -= it->st[k][d] * it->dims[d];
        it->idx[d] = 0;
    }
}

/* ---------------------------------------------------------------- binary ops */

enum binary { B_ADD, B_SUB, B_MUL, B_DIV, B_POW, B_EQ, B_LESS, B_GREATER, B_MAX, B_MIN };

static int binary_kind(const char *op)
{
    static const char *const names[] = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less",
                                        "Greater", "Max", "Min"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(op, names[i]) == 0)
            return (int)i;
    return -1;
}

static bool numeric(nn_dtype t)
{
    return t != NN_DTYPE_STRING && t != NN_DTYPE_FLOAT16 && t != NN_DTYPE_UNDEFINED &&
           t < NN_DTYPE_MAX;
}

static xr_code infer_binary(nn_graph *g, nn_node *n, xr_error *err)
{
    int k = binary_kind(n->op_type);
    n->a.i0 = k;
    if ((k == B_MAX || k == B_MIN) && n->n_in != 2) {
        const nn_value *ins[NN_MAX_NODE_IO];
        for (int i = 0; i < n->n_in; i++) {
            if (!HAS(i) || IN(i)->dtype != IN(0)->dtype || !numeric(IN(0)->dtype))
                return BAD("input %d is missing or of another type", i);
            ins[i] = IN(i);
        }
        int rank;
        int64_t dims[NN_MAX_RANK];
        xr_code rc = broadcast_shape(n, ins, n->n_in, &rank, dims, err);
        return rc ? rc : nn_value_set(g, n->out[0], IN(0)->dtype, rank, dims, err);
    }
    if (g->opset < 7 && nn_attr_int(n, "broadcast", 0) && nn_attr(n, "axis") &&
        nn_attr_int(n, "axis", 0) != IN(0)->rank - IN(1)->rank)
        return UNSUP("legacy broadcast with axis (opset %lld) is not supported",
                     (long long)g->opset);
    nn_dtype ta = IN(0)->dtype, tb = IN(1)->dtype;
    if (!numeric(ta) || !numeric(tb) || ta == NN_DTYPE_BOOL || tb == NN_DTYPE_BOOL)
        return UNSUP("input types %s and %s are not supported", nn_dtype_name(ta),
                     nn_dtype_name(tb));
    if (k == B_POW) {
        if (ta != NN_DTYPE_FLOAT && ta != NN_DTYPE_DOUBLE && ta != NN_DTYPE_INT32 &&
            ta != NN_DTYPE_INT64)
            return UNSUP("base type %s is not supported", nn_dtype_name(ta));
    } else if (ta != tb) {
        return BAD("input types differ: %s and %s", nn_dtype_name(ta), nn_dtype_name(tb));
    }
    const nn_value *ins[2] = {IN(0), IN(1)};
    int rank;
    int64_t dims[NN_MAX_RANK];
    xr_code rc = broadcast_shape(n, ins, 2, &rank, dims, err);
    if (rc)
        return rc;
    nn_dtype to = (k == B_EQ || k == B_LESS || k == B_GREATER) ? NN_DTYPE_BOOL : ta;
    return nn_value_set(g, n->out[0], to, rank, dims, err);
}

#define BIN_CASE(T, OT, EXPR)                                                                  \
    do {                                                                                       \
        const T *A = pa;                                                                       \
        const T *B = pb;                                                                       \
        OT *Y = py;                                                                            \
        for (int64_t o = 0; o < it.n_outer; o++) {                                             \
            const T *ra = A + it.off[0], *rb = B + it.off[1];                                  \
            OT *ry = Y + o * it.inner;                                                         \
            for (int64_t i = 0; i < it.inner; i++) {                                           \
                T a = ra[i * sa], b = rb[i * sb];                                              \
                ry[i] = (OT)(EXPR);                                                            \
            }                                                                                  \
            bcast_next(&it);                                                                   \
        }                                                                                      \
    } while (0)

#define BIN_ALL(T)                                                                             \
    switch (k) {                                                                               \
    case B_ADD: BIN_CASE(T, T, a + b); break;                                                  \
    case B_SUB: BIN_CASE(T, T, a - b); break;                                                  \
    case B_MUL: BIN_CASE(T, T, a * b); break;                                                  \
    case B_DIV: BIN_CASE(T, T, a / b); break;                                                  \
    case B_MAX: BIN_CASE(T, T, a > b ? a : b); break;                                          \
    case B_MIN: BIN_CASE(T, T, a < b ? a : b); break;                                          \
    case B_EQ: BIN_CASE(T, uint8_t, a == b); break;                                            \
    case B_LESS: BIN_CASE(T, uint8_t, a < b); break;                                           \
    case B_GREATER: BIN_CASE(T, uint8_t, a > b); break;                                        \
    default: break;                                                                            \
    }

static double load_as_double(const void *p, nn_dtype t, int64_t i)
{
    switch (t) {
    case NN_DTYPE_FLOAT: return ((const float *)p)[i];
    case NN_DTYPE_DOUBLE: return ((const double *)p)[i];
    case NN_DTYPE_INT32: return ((const int32_t *)p)[i];
    case NN_DTYPE_INT64: return (double)((const int64_t *)p)[i];
    case NN_DTYPE_UINT8: return ((const uint8_t *)p)[i];
    case NN_DTYPE_INT8: return ((const int8_t *)p)[i];
    case NN_DTYPE_UINT16: return ((const uint16_t *)p)[i];
    case NN_DTYPE_INT16: return ((const int16_t *)p)[i];
    case NN_DTYPE_UINT32: return ((const uint32_t *)p)[i];
    case NN_DTYPE_UINT64: return (double)((const uint64_t *)p)[i];
    case NN_DTYPE_BOOL: return ((const uint8_t *)p)[i] != 0;
    default: return 0;
    }
}

static void store_from_double(void *p, nn_dtype t, int64_t i, double v)
{
    switch (t) {
    case NN_DTYPE_FLOAT: ((float *)p)[i] = (float)v; break;
    case NN_DTYPE_DOUBLE: ((double *)p)[i] = v; break;
    case NN_DTYPE_INT32: ((int32_t *)p)[i] = (int32_t)v; break;
    case NN_DTYPE_INT64: ((int64_t *)p)[i] = (int64_t)v; break;
    case NN_DTYPE_UINT8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    case NN_DTYPE_INT8: ((int8_t *)p)[i] = (int8_t)v; break;
    case NN_DTYPE_UINT16: ((uint16_t *)p)[i] = (uint16_t)v; break;
    case NN_DTYPE_INT16: ((int16_t *)p)[i] = (int16_t)v; break;
    case NN_DTYPE_UINT32: ((uint32_t *)p)[i] = (uint32_t)v; break;
    case NN_DTYPE_UINT64: ((uint64_t *)p)[i] = (uint64_t)v; break;
    case NN_DTYPE_BOOL: ((uint8_t *)p)[i] = v != 0; break;
    default: break;
    }
}

static xr_code run_variadic(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    /* y = in0 broadcast, then y = op(y, in_i) element by element */
    const nn_value *o = OUTV(0);
    void *py = nn_ptr(g, x, n->out[0]);
    for (int i = 0; i < n->n_in; i++) {
        const nn_value *ins[2] = {o, IN(i)};
        const void *pb = nn_ptr(g, x, n->in[i]);
        bcast_it it;
        bcast_init(&it, o, ins, 2);
        int64_t sb = o->rank ? it.st[1][o->rank - 1] : 0;
        for (int64_t oo = 0; oo < it.n_outer; oo++) {
            for (int64_t j = 0; j < it.inner; j++) {
                int64_t at = oo * it.inner + j;
                double b = load_as_double(pb, IN(i)->dtype, it.off[1] + j * sb);
                double a = i ? load_as_double(py, o->dtype, at) : b;
                double r = n->a.i0 == B_MAX ? (a > b ? a : b) : (a < b ? a : b);
                if (o->dtype == NN_DTYPE_FLOAT)
                    ((float *)py)[at] = (float)r;
                else
                    store_from_double(py, o->dtype, at, r);
            }
            bcast_next(&it);
        }
    }
    (void)err;
    return XR_OK;
}

static xr_code run_binary(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    if (n->n_in != 2)
        return run_variadic(g, n, x, err);
    const nn_value *ins[2] = {IN(0), IN(1)};
    const void *pa = nn_ptr(g, x, n->in[0]), *pb = nn_ptr(g, x, n->in[1]);
    void *py = nn_ptr(g, x, n->out[0]);
    int k = (int)n->a.i0;
    int64_t ne = OUTV(0)->n_elems;
    if (ins[0]->dtype == NN_DTYPE_FLOAT && ins[0]->n_elems == ne && ins[1]->n_elems == ne &&
        ne >= NN_PARALLEL_MIN_ELEMS && k <= B_DIV) {
        /* same-shape float arithmetic (a residual Add the matmul could not take): threads */
        const float *fa = pa, *fb = pb;
        float *fy = py;
#pragma omp parallel for schedule(static) num_threads(nn_threads())
        for (int64_t i = 0; i < ne; i++)
            fy[i] = k == B_ADD ? fa[i] + fb[i] : k == B_SUB ? fa[i] - fb[i]
                  : k == B_MUL ? fa[i] * fb[i] : fa[i] / fb[i];
        return XR_OK;
    }
    bcast_it it;
    bcast_init(&it, OUTV(0), ins, 2);
    int64_t sa = OUTV(0)->rank ? it.st[0][OUTV(0)->rank - 1] : 0;
    int64_t sb = OUTV(0)->rank ? it.st[1][OUTV(0)->rank - 1] : 0;
    if (k == B_POW) {
        nn_dtype ta = IN(0)->dtype, tb = IN(1)->dtype;
        for (int64_t o = 0; o < it.n_outer; o++) {
            for (int64_t i = 0; i < it.inner; i++) {
                double a = load_as_double(pa, ta, it.off[0] + i * sa);
                double b = load_as_double(pb, tb, it.off[1] + i * sb);
                double r = (ta == NN_DTYPE_FLOAT) ? (double)powf((float)a, (float)b) : pow(a, b);
                store_from_double(py, ta, o * it.inner + i, r);
            }
            bcast_next(&it);
        }
        return XR_OK;
    }
    switch (IN(0)->dtype) {
    case NN_DTYPE_FLOAT: BIN_ALL(float); break;
    case NN_DTYPE_DOUBLE: BIN_ALL(double); break;
    case NN_DTYPE_INT32: BIN_ALL(int32_t); break;
    case NN_DTYPE_INT64: BIN_ALL(int64_t); break;
    case NN_DTYPE_UINT8: BIN_ALL(uint8_t); break;
    case NN_DTYPE_INT8: BIN_ALL(int8_t); break;
    case NN_DTYPE_UINT16: BIN_ALL(uint16_t); break;
    case NN_DTYPE_INT16: BIN_ALL(int16_t); break;
    case NN_DTYPE_UINT32: BIN_ALL(uint32_t); break;
    case NN_DTYPE_UINT64: BIN_ALL(uint64_t); break;
    default:
        return xr_error_set(err, XR_E_INTERNAL, "binary op on %s",
                            nn_dtype_name(IN(0)->dtype));
    }
    return XR_OK;
}

/* Where(cond, X, Y) */
static xr_code infer_where(nn_graph *g, nn_node *n, xr_error *err)
{
    if (IN(0)->dtype != NN_DTYPE_BOOL)
        return BAD("condition is %s, must be bool", nn_dtype_name(IN(0)->dtype));
    if (IN(1)->dtype != IN(2)->dtype || !numeric(IN(1)->dtype))
        return BAD("X and Y types differ or are not numeric: %s and %s",
                   nn_dtype_name(IN(1)->dtype), nn_dtype_name(IN(2)->dtype));
    const nn_value *ins[3] = {IN(0), IN(1), IN(2)};
    int rank;
    int64_t dims[NN_MAX_RANK];
    xr_code rc = broadcast_shape(n, ins, 3, &rank, dims, err);
    return rc ? rc : nn_value_set(g, n->out[0], IN(1)->dtype, rank, dims, err);
}

static xr_code run_where(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *ins[3] = {IN(0), IN(1), IN(2)};
    const uint8_t *c = nn_ptr(g, x, n->in[0]);
    const uint8_t *a = nn_ptr(g, x, n->in[1]), *b = nn_ptr(g, x, n->in[2]);
    uint8_t *y = nn_ptr(g, x, n->out[0]);
    size_t es = nn_elem_size(OUTV(0)->dtype);
    bcast_it it;
    bcast_init(&it, OUTV(0), ins, 3);
    int r = OUTV(0)->rank;
    int64_t s0 = r ? it.st[0][r - 1] : 0, s1 = r ? it.st[1][r - 1] : 0, s2 = r ? it.st[2][r - 1] : 0;
    for (int64_t o = 0; o < it.n_outer; o++) {
        for (int64_t i = 0; i < it.inner; i++) {
            bool cv = c[it.off[0] + i * s0];
            const uint8_t *src = cv ? a + (it.off[1] + i * s1) * es : b + (it.off[2] + i * s2) * es;
            memcpy(y + (o * it.inner + i) * es, src, es);
        }
        bcast_next(&it);
    }
    return XR_OK;
}

/* ---------------------------------------------------------------- copies and views */

static xr_code run_copy(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    void *src = nn_ptr(g, x, n->in[0]), *dst = nn_ptr(g, x, n->out[0]);
    if (src != dst)
        memmove(dst, src, OUTV(0)->n_bytes);
    return XR_OK;
}

static xr_code infer_identity(nn_graph *g, nn_node *n, xr_error *err)
{
    return same_as_input(g, n, 0, 0, err);
}

static xr_code infer_dropout(nn_graph *g, nn_node *n, xr_error *err)
{
    if (g->opset >= 12 && HAS(2)) {
        if (!is_const(g, n, 2))
            return UNSUP("training_mode must be a constant");
        if (IN(2)->n_elems != 1 || IN(2)->dtype != NN_DTYPE_BOOL)
            return BAD("training_mode must be a bool scalar");
        if (*(const uint8_t *)IN(2)->data)
            return UNSUP("training_mode true is not supported (inference only)");
    }
    if (g->opset < 12 && nn_attr_int(n, "is_test", 1) == 0 && g->opset < 7)
        return UNSUP("training mode");
    xr_code rc = same_as_input(g, n, 0, 0, err);
    if (!rc && HASOUT(1))
        rc = nn_value_set(g, n->out[1], NN_DTYPE_BOOL, IN(0)->rank, IN(0)->dims, err);
    return rc;
}

static xr_code run_dropout(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    xr_code rc = run_copy(g, n, x, err);
    if (!rc && HASOUT(1))
        memset(nn_ptr(g, x, n->out[1]), 1, OUTV(1)->n_bytes);
    return rc;
}

/* Reshape(data, shape) */
static xr_code infer_reshape(nn_graph *g, nn_node *n, xr_error *err)
{
    int64_t shape[NN_MAX_RANK];
    int rank;
    if (g->opset < 5) {
        if ((rank = attr_ints(n, "shape", shape, NN_MAX_RANK)) < 0)
            return BAD("shape attribute missing or longer than %d", NN_MAX_RANK);
    } else {
        if (!HAS(1))
            return BAD("shape input is missing");
        if (!is_const(g, n, 1))
            return UNSUP("shape input \"%s\" is not constant after folding", IN(1)->name);
        if ((rank = nn_const_ints(g, n->in[1], shape, NN_MAX_RANK)) < 0)
            return BAD("shape input must be an int64 tensor of at most %d values", NN_MAX_RANK);
    }
    bool allowzero = g->opset >= 14 && nn_attr_int(n, "allowzero", 0);
    int infer_at = -1;
    int64_t known = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] == 0 && !allowzero) {
            if (i >= IN(0)->rank)
                return BAD("shape[%d] is 0 but input has rank %d", i, IN(0)->rank);
            shape[i] = IN(0)->dims[i];
        }
        if (shape[i] == -1) {
            if (infer_at >= 0)
                return BAD("more than one -1 in shape");
            infer_at = i;
        } else if (shape[i] < 0) {
            return BAD("shape[%d] is %lld", i, (long long)shape[i]);
        } else {
            known *= shape[i];
        }
    }
    if (infer_at >= 0) {
        if (known == 0 || IN(0)->n_elems % known)
            return BAD("cannot reshape %lld elements with -1", (long long)IN(0)->n_elems);
        shape[infer_at] = IN(0)->n_elems / known;
    } else if (known != IN(0)->n_elems) {
        return BAD("cannot reshape %lld elements into %lld", (long long)IN(0)->n_elems,
                   (long long)known);
    }
    return nn_value_set(g, n->out[0], IN(0)->dtype, rank, shape, err);
}

static xr_code infer_flatten(nn_graph *g, nn_node *n, xr_error *err)
{
    int r = IN(0)->rank;
    int axis = norm_axis(nn_attr_int(n, "axis", 1), r);
    if (axis < 0 || axis > r)
        return BAD("axis %lld out of range for rank %d", (long long)nn_attr_int(n, "axis", 1), r);
    int64_t d[2] = {1, 1};
    for (int i = 0; i < r; i++)
        d[i < axis ? 0 : 1] *= IN(0)->dims[i];
    return nn_value_set(g, n->out[0], IN(0)->dtype, 2, d, err);
}

static xr_code infer_squeeze_unsqueeze(nn_graph *g, nn_node *n, xr_error *err)
{
    bool unsq = strcmp(n->op_type, "Unsqueeze") == 0;
    int64_t axes[NN_MAX_RANK];
    int na = -1;
    if (g->opset < 13) {
        na = attr_ints(n, "axes", axes, NN_MAX_RANK);
        if (na == -2)
            return BAD("too many axes");
    } else if (HAS(1)) {
        if (!is_const(g, n, 1))
            return UNSUP("axes input is not constant");
        if ((na = nn_const_ints(g, n->in[1], axes, NN_MAX_RANK)) < 0)
            return BAD("axes must be int64, at most %d", NN_MAX_RANK);
    }
    int r = IN(0)->rank;
    int64_t out[NN_MAX_RANK];
    bool mark[NN_MAX_RANK + NN_MAX_RANK] = {0};
    if (unsq) {
        if (na < 0)
            return BAD("axes are required");
        int ro = r + na;
        if (ro > NN_MAX_RANK)
            return UNSUP("result rank %d above %d", ro, NN_MAX_RANK);
        for (int i = 0; i < na; i++) {
            int a = norm_axis(axes[i], ro);
            if (a < 0 || a >= ro || mark[a])
                return BAD("axis %lld invalid or repeated for rank %d", (long long)axes[i], ro);
            mark[a] = true;
        }
        for (int i = 0, j = 0; i < ro; i++)
            out[i] = mark[i] ? 1 : IN(0)->dims[j++];
        return nn_value_set(g, n->out[0], IN(0)->dtype, ro, out, err);
    }
    if (na < 0) {
        for (int i = 0; i < r; i++)
            mark[i] = IN(0)->dims[i] == 1;
    } else {
        for (int i = 0; i < na; i++) {
            int a = norm_axis(axes[i], r);
            if (a < 0 || a >= r || IN(0)->dims[a] != 1)
                return BAD("cannot squeeze axis %lld of a rank-%d input", (long long)axes[i], r);
            mark[a] = true;
        }
    }
    int ro = 0;
    for (int i = 0; i < r; i++)
        if (!mark[i])
            out[ro++] = IN(0)->dims[i];
    return nn_value_set(g, n->out[0], IN(0)->dtype, ro, out, err);
}

/* ---------------------------------------------------------------- Shape, Constant, Cast ... */

static xr_code infer_shape(nn_graph *g, nn_node *n, xr_error *err)
{
    int r = IN(0)->rank;
    int64_t start = g->opset >= 15 ? nn_attr_int(n, "start", 0) : 0;
    int64_t end = g->opset >= 15 ? nn_attr_int(n, "end", r) : r;
    if (start < 0)
        start += r;
    if (end < 0)
        end += r;
    start = start < 0 ? 0 : start > r ? r : start;
    end = end < 0 ? 0 : end > r ? r : end;
    int64_t len = end > start ? end - start : 0;
    n->a.i0 = start;
    return nn_value_set(g, n->out[0], NN_DTYPE_INT64, 1, &len, err);
}

static xr_code run_shape(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    int64_t *y = nn_ptr(g, x, n->out[0]);
    for (int64_t i = 0; i < OUTV(0)->n_elems; i++)
        y[i] = IN(0)->dims[n->a.i0 + i];
    return XR_OK;
}

static xr_code infer_constant(nn_graph *g, nn_node *n, xr_error *err)
{
    const Onnx__AttributeProto *a;
    nn_value *v = OUTV(0);
    if ((a = nn_attr(n, "value")) && a->t) {
        xr_code rc = nn_tensor_load(a->t, NULL, v, "constant", err);
        return rc ? node_err(n, rc, err, "%s", err ? err->msg : "bad tensor") : XR_OK;
    }
    int64_t d = 0;
    if ((a = nn_attr(n, "value_float")) && a->has_f) {
        xr_code rc = nn_value_set(g, n->out[0], NN_DTYPE_FLOAT, 0, &d, err);
        if (!rc && !(v->data = nn_aligned_alloc(4)))
            return xr_error_set(err, XR_E_NOMEM, "out of memory");
        if (!rc)
            *(float *)v->data = a->f;
        return rc;
    }
    if ((a = nn_attr(n, "value_int")) && a->has_i) {
        xr_code rc = nn_value_set(g, n->out[0], NN_DTYPE_INT64, 0, &d, err);
        if (!rc && !(v->data = nn_aligned_alloc(8)))
            return xr_error_set(err, XR_E_NOMEM, "out of memory");
        if (!rc)
            *(int64_t *)v->data = a->i;
        return rc;
    }
    bool fl = false;
    if ((a = nn_attr(n, "value_ints")) || ((a = nn_attr(n, "value_floats")) && (fl = true))) {
        d = fl ? (int64_t)a->n_floats : (int64_t)a->n_ints;
        xr_code rc = nn_value_set(g, n->out[0], fl ? NN_DTYPE_FLOAT : NN_DTYPE_INT64, 1, &d, err);
        if (rc)
            return rc;
        if (!(v->data = nn_aligned_alloc(v->n_bytes)))
            return xr_error_set(err, XR_E_NOMEM, "out of memory");
        if (v->n_bytes)
            memcpy(v->data, fl ? (void *)a->floats : (void *)a->ints, v->n_bytes);
        return XR_OK;
    }
    return UNSUP("only value, value_float(s) and value_int(s) constants are supported");
}

static xr_code infer_constant_of_shape(nn_graph *g, nn_node *n, xr_error *err)
{
    int64_t shape[NN_MAX_RANK];
    int r;
    if (!is_const(g, n, 0))
        return UNSUP("shape input is not constant");
    if ((r = nn_const_ints(g, n->in[0], shape, NN_MAX_RANK)) < 0)
        return BAD("shape must be int64 with at most %d values", NN_MAX_RANK);
    nn_dtype dt = NN_DTYPE_FLOAT;
    const Onnx__AttributeProto *a = nn_attr(n, "value");
    n->a.f0 = 0;
    if (a && a->t) {
        nn_value tmp = {.name = "value", .view_of = -1};
        xr_code rc = nn_tensor_load(a->t, NULL, &tmp, "value", err);
        if (rc)
            return rc;
        if (tmp.n_elems != 1) {
            free(tmp.data);
            return BAD("value must have one element");
        }
        dt = tmp.dtype;
        memcpy(&n->a.i1, tmp.data, nn_elem_size(dt)); /* the fill bytes */
        free(tmp.data);
    }
    n->a.i0 = dt;
    return nn_value_set(g, n->out[0], dt, r, shape, err);
}

static xr_code run_constant_of_shape(const nn_graph *g, const nn_node *n, nn_exec *x,
                                     xr_error *err)
{
    (void)err;
    uint8_t *y = nn_ptr(g, x, n->out[0]);
    size_t es = nn_elem_size(OUTV(0)->dtype);
    for (int64_t i = 0; i < OUTV(0)->n_elems; i++)
        memcpy(y + i * es, &n->a.i1, es);
    return XR_OK;
}

static xr_code infer_cast(nn_graph *g, nn_node *n, xr_error *err)
{
    int64_t to = nn_attr_int(n, "to", 0);
    if (to <= 0 || to >= NN_DTYPE_MAX || !numeric((nn_dtype)to) || !numeric(IN(0)->dtype))
        return UNSUP("cast from %s to %s is not supported", nn_dtype_name(IN(0)->dtype),
                     nn_dtype_name((nn_dtype)to));
    return nn_value_set(g, n->out[0], (nn_dtype)to, IN(0)->rank, IN(0)->dims, err);
}

static xr_code run_cast(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const void *a = nn_ptr(g, x, n->in[0]);
    void *y = nn_ptr(g, x, n->out[0]);
    nn_dtype ti = IN(0)->dtype, to = OUTV(0)->dtype;
    for (int64_t i = 0; i < IN(0)->n_elems; i++) {
        if (ti == NN_DTYPE_INT64 && to == NN_DTYPE_INT64)
            ((int64_t *)y)[i] = ((const int64_t *)a)[i];
        else if (ti == NN_DTYPE_INT64 && to == NN_DTYPE_INT32)
            ((int32_t *)y)[i] = (int32_t)((const int64_t *)a)[i];
        else if (ti == NN_DTYPE_INT32 && to == NN_DTYPE_INT64)
            ((int64_t *)y)[i] = ((const int32_t *)a)[i];
        else
            store_from_double(y, to, i, load_as_double(a, ti, i));
    }
    return XR_OK;
}

/* ---------------------------------------------------------------- Concat, Gather, Slice ... */

static xr_code infer_concat(nn_graph *g, nn_node *n, xr_error *err)
{
    const nn_value *a0 = IN(0);
    int r = a0->rank;
    const Onnx__AttributeProto *aa = nn_attr(n, "axis");
    if (!aa && g->opset >= 4)
        return BAD("axis attribute is required");
    int axis = norm_axis(nn_attr_int(n, "axis", 1), r);
    if (axis < 0 || axis >= r)
        return BAD("axis %lld out of range for rank %d", (long long)nn_attr_int(n, "axis", 1), r);
    int64_t dims[NN_MAX_RANK];
    memcpy(dims, a0->dims, sizeof(dims));
    dims[axis] = 0;
    for (int i = 0; i < n->n_in; i++) {
        if (!HAS(i))
            return BAD("input %d is empty", i);
        const nn_value *v = IN(i);
        if (v->rank != r || v->dtype != a0->dtype)
            return BAD("input %d \"%s\" has rank %d type %s; expected rank %d type %s", i,
                       v->name, v->rank, nn_dtype_name(v->dtype), r, nn_dtype_name(a0->dtype));
        for (int d = 0; d < r; d++)
            if (d != axis && v->dims[d] != a0->dims[d])
                return BAD("input %d \"%s\" has dimension %d of %lld, expected %lld", i,
                           v->name, d, (long long)v->dims[d], (long long)a0->dims[d]);
        dims[axis] += v->dims[axis];
    }
    n->a.axis = axis;
    return nn_value_set(g, n->out[0], a0->dtype, r, dims, err);
}

static xr_code run_concat(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *o = OUTV(0);
    size_t es = nn_elem_size(o->dtype);
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < n->a.axis; d++)
        outer *= o->dims[d];
    for (int d = (int)n->a.axis + 1; d < o->rank; d++)
        inner *= o->dims[d];
    uint8_t *y = nn_ptr(g, x, n->out[0]);
    size_t row = (size_t)(o->dims[n->a.axis] * inner) * es;
    size_t at = 0;
    for (int i = 0; i < n->n_in; i++) {
        const uint8_t *a = nn_ptr(g, x, n->in[i]);
        size_t chunk = (size_t)(IN(i)->dims[n->a.axis] * inner) * es;
        for (int64_t k = 0; k < outer; k++)
            memcpy(y + k * row + at, a + k * chunk, chunk);
        at += chunk;
    }
    return XR_OK;
}

static xr_code infer_split(nn_graph *g, nn_node *n, xr_error *err)
{
    int r = IN(0)->rank;
    int axis = norm_axis(nn_attr_int(n, "axis", 0), r);
    if (axis < 0 || axis >= r)
        return BAD("axis out of range for rank %d", r);
    n->a.axis = axis;
    if (!(n->a.split = calloc((size_t)n->n_out, sizeof(int64_t))))
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    int ns = -1;
    if (g->opset < 13) {
        const Onnx__AttributeProto *a = nn_attr(n, "split");
        if (a) {
            if (a->n_ints != (size_t)n->n_out)
                return BAD("split has %zu values for %d outputs", a->n_ints, n->n_out);
            for (size_t i = 0; i < a->n_ints; i++)
                n->a.split[i] = a->ints[i];
            ns = n->n_out;
        }
    } else if (HAS(1)) {
        if (!is_const(g, n, 1))
            return UNSUP("split input is not constant");
        if (IN(1)->n_elems != n->n_out ||
            nn_const_ints(g, n->in[1], n->a.split, n->n_out) != n->n_out)
            return BAD("split must be int64 with one value per output (%d)", n->n_out);
        ns = n->n_out;
    }
    int64_t total = IN(0)->dims[axis];
    if (ns < 0) {
        int64_t each = (total + n->n_out - 1) / n->n_out;
        for (int i = 0; i < n->n_out; i++) {
            int64_t left = total - each * i;
            n->a.split[i] = left < 0 ? 0 : left < each ? left : each;
        }
    }
    int64_t sum = 0;
    for (int i = 0; i < n->n_out; i++) {
        if (n->a.split[i] < 0)
            return BAD("split[%d] is negative", i);
        sum += n->a.split[i];
    }
    if (sum != total)
        return BAD("split sizes add to %lld, axis has %lld", (long long)sum, (long long)total);
    for (int i = 0; i < n->n_out; i++) {
        int64_t dims[NN_MAX_RANK];
        memcpy(dims, IN(0)->dims, sizeof(dims));
        dims[axis] = n->a.split[i];
        if (HASOUT(i)) {
            xr_code rc = nn_value_set(g, n->out[i], IN(0)->dtype, r, dims, err);
            if (rc)
                return rc;
        }
    }
    return XR_OK;
}

static xr_code run_split(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *a = IN(0);
    size_t es = nn_elem_size(a->dtype);
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < n->a.axis; d++)
        outer *= a->dims[d];
    for (int d = (int)n->a.axis + 1; d < a->rank; d++)
        inner *= a->dims[d];
    const uint8_t *src = nn_ptr(g, x, n->in[0]);
    size_t row = (size_t)(a->dims[n->a.axis] * inner) * es, at = 0;
    for (int i = 0; i < n->n_out; i++) {
        size_t chunk = (size_t)(n->a.split[i] * inner) * es;
        if (HASOUT(i)) {
            uint8_t *y = nn_ptr(g, x, n->out[i]);
            for (int64_t k = 0; k < outer; k++)
                memcpy(y + k * chunk, src + k * row + at, chunk);
        }
        at += chunk;
    }
    return XR_OK;
}

static xr_code infer_gather(nn_graph *g, nn_node *n, xr_error *err)
{
    const nn_value *d = IN(0), *ix = IN(1);
    int axis = norm_axis(nn_attr_int(n, "axis", 0), d->rank);
    if (axis < 0 || axis >= d->rank)
        return BAD("axis out of range for rank %d", d->rank);
    if (ix->dtype != NN_DTYPE_INT64 && ix->dtype != NN_DTYPE_INT32)
        return BAD("indices are %s, must be int32 or int64", nn_dtype_name(ix->dtype));
    int ro = d->rank - 1 + ix->rank;
    if (ro > NN_MAX_RANK)
        return UNSUP("result rank %d above %d", ro, NN_MAX_RANK);
    int64_t dims[NN_MAX_RANK];
    int k = 0;
    for (int i = 0; i < axis; i++)
        dims[k++] = d->dims[i];
    for (int i = 0; i < ix->rank; i++)
        dims[k++] = ix->dims[i];
    for (int i = axis + 1; i < d->rank; i++)
        dims[k++] = d->dims[i];
    if (ix->data) {
        for (int64_t i = 0; i < ix->n_elems; i++) {
            int64_t v = load_as_double(ix->data, ix->dtype, i);
            if (v < -d->dims[axis] || v >= d->dims[axis])
                return BAD("index %lld out of range [%lld, %lld)", (long long)v,
                           (long long)-d->dims[axis], (long long)d->dims[axis]);
        }
    }
    n->a.axis = axis;
    return nn_value_set(g, n->out[0], d->dtype, ro, dims, err);
}

static xr_code run_gather(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    const nn_value *d = IN(0), *ix = IN(1);
    size_t es = nn_elem_size(d->dtype);
    int64_t outer = 1, inner = 1, ax = d->dims[n->a.axis];
    for (int i = 0; i < n->a.axis; i++)
        outer *= d->dims[i];
    for (int i = (int)n->a.axis + 1; i < d->rank; i++)
        inner *= d->dims[i];
    const uint8_t *src = nn_ptr(g, x, n->in[0]);
    const void *idx = nn_ptr(g, x, n->in[1]);
    uint8_t *y = nn_ptr(g, x, n->out[0]);
    size_t chunk = (size_t)inner * es;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < ix->n_elems; j++) {
            int64_t v = ix->dtype == NN_DTYPE_INT64 ? ((const int64_t *)idx)[j]
                                                   : ((const int32_t *)idx)[j];
            if (v < 0)
                v += ax;
            if (v < 0 || v >= ax)
                return BAD("index %lld out of range", (long long)v);
            memcpy(y + (o * ix->n_elems + j) * chunk, src + (o * ax + v) * chunk, chunk);
        }
    return XR_OK;
}

static xr_code infer_slice(nn_graph *g, nn_node *n, xr_error *err)
{
    const nn_value *d = IN(0);
    int r = d->rank;
    int64_t st[NN_MAX_RANK], en[NN_MAX_RANK], ax[NN_MAX_RANK], sp[NN_MAX_RANK];
    int ns, ne, na = -1, nsp = -1;
    if (g->opset < 10) {
        ns = attr_ints(n, "starts", st, NN_MAX_RANK);
        ne = attr_ints(n, "ends", en, NN_MAX_RANK);
        na = attr_ints(n, "axes", ax, NN_MAX_RANK);
    } else {
        for (int i = 1; i < n->n_in; i++)
            if (HAS(i) && !is_const(g, n, i))
                return UNSUP("input %d is not constant", i);
        ns = nn_const_ints(g, n->in[1], st, NN_MAX_RANK);
        ne = nn_const_ints(g, n->in[2], en, NN_MAX_RANK);
        if (HAS(3))
            na = nn_const_ints(g, n->in[3], ax, NN_MAX_RANK);
        if (HAS(4))
            nsp = nn_const_ints(g, n->in[4], sp, NN_MAX_RANK);
    }
    if (ns < 0 || ne != ns || (na >= 0 && na != ns) || (nsp >= 0 && nsp != ns) || ns > r)
        return BAD("starts/ends/axes/steps must be int tensors of equal length at most rank %d", r);
    for (int i = 0; i < r; i++) {
        n->a.starts[i] = 0;
        n->a.ends[i] = d->dims[i];
        n->a.steps[i] = 1;
    }
    bool seen[NN_MAX_RANK] = {0};
    int64_t dims[NN_MAX_RANK];
    memcpy(dims, d->dims, sizeof(dims));
    for (int i = 0; i < ns; i++) {
        int a = na >= 0 ? norm_axis(ax[i], r) : i;
        if (a < 0 || a >= r || seen[a])
            return BAD("axis %d invalid or repeated", a);
        seen[a] = true;
        int64_t step = nsp >= 0 ? sp[i] : 1, dim = d->dims[a];
        if (step == 0)
            return BAD("step 0 on axis %d", a);
        int64_t s = st[i], e = en[i];
        if (s < 0)
            s += dim;
        if (e < 0)
            e += dim;
        if (step > 0) {
            s = s < 0 ? 0 : s > dim ? dim : s;
            e = e < 0 ? 0 : e > dim ? dim : e;
            dims[a] = e > s ? (e - s + step - 1) / step : 0;
        } else {
            s = s < 0 ? -1 : s > dim - 1 ? dim - 1 : s;
            e = e < -1 ? -1 : e > dim - 1 ? dim - 1 : e;
            dims[a] = s > e ? (s - e + (-step) - 1) / (-step) : 0;
        }
        n->a.starts[a] = s;
        n->a.steps[a] = step;
    }
    return nn_value_set(g, n->out[0], d->dtype, r, dims, err);
}

static xr_code run_slice(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *d = IN(0), *o = OUTV(0);
    size_t es = nn_elem_size(d->dtype);
    const uint8_t *src = nn_ptr(g, x, n->in[0]);
    uint8_t *y = nn_ptr(g, x, n->out[0]);
    int r = d->rank;
    if (o->n_elems == 0)
        return XR_OK;
    if (r == 0) {
        memcpy(y, src, es);
        return XR_OK;
    }
    int64_t sst[NN_MAX_RANK], idx[NN_MAX_RANK] = {0};
    int64_t s = 1;
    for (int i = r - 1; i >= 0; i--) {
        sst[i] = s;
        s *= d->dims[i];
    }
    /* rows along the last axis: one memcpy when its step is 1 */
    int64_t inner = o->dims[r - 1], st = n->a.steps[r - 1];
    if (st == 1 && r >= 2 && o->n_elems >= NN_PARALLEL_MIN_ELEMS) {
        int64_t rows = o->n_elems / inner;
#pragma omp parallel for schedule(static) num_threads(nn_threads())
        for (int64_t row = 0; row < rows; row++) {
            int64_t rem = row, off = n->a.starts[r - 1];
            for (int i = r - 2; i >= 0; i--) {
                off += (n->a.starts[i] + (rem % o->dims[i]) * n->a.steps[i]) * sst[i];
                rem /= o->dims[i];
            }
            memcpy(y + row * inner * (int64_t)es, src + off * (int64_t)es, (size_t)inner * es);
        }
        return XR_OK;
    }
    for (int64_t k = 0; k < o->n_elems; k += inner) {
        int64_t off = n->a.starts[r - 1];
        for (int i = 0; i < r - 1; i++)
            off += (n->a.starts[i] + idx[i] * n->a.steps[i]) * sst[i];
        if (st == 1) {
            memcpy(y + k * es, src + off * es, (size_t)inner * es);
        } else {
            for (int64_t j = 0; j < inner; j++)
                memcpy(y + (k + j) * es, src + (off + j * st) * es, es);
        }
        for (int i = r - 2; i >= 0; i--) {
            if (++idx[i] < o->dims[i])
                break;
            idx[i] = 0;
        }
    }
    return XR_OK;
}

static xr_code infer_expand(nn_graph *g, nn_node *n, xr_error *err)
{
    int64_t shape[NN_MAX_RANK];
    int r;
    if (!is_const(g, n, 1))
        return UNSUP("shape input is not constant");
    if ((r = nn_const_ints(g, n->in[1], shape, NN_MAX_RANK)) < 0)
        return BAD("shape must be int64 with at most %d values", NN_MAX_RANK);
    nn_value tmp = {.rank = r};
    memcpy(tmp.dims, shape, sizeof(shape));
    const nn_value *ins[2] = {IN(0), &tmp};
    int rank;
    int64_t dims[NN_MAX_RANK];
    xr_code rc = broadcast_shape(n, ins, 2, &rank, dims, err);
    return rc ? rc : nn_value_set(g, n->out[0], IN(0)->dtype, rank, dims, err);
}

static xr_code run_expand(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *ins[1] = {IN(0)};
    size_t es = nn_elem_size(IN(0)->dtype);
    const uint8_t *a = nn_ptr(g, x, n->in[0]);
    uint8_t *y = nn_ptr(g, x, n->out[0]);
    bcast_it it;
    bcast_init(&it, OUTV(0), ins, 1);
    int64_t sa = OUTV(0)->rank ? it.st[0][OUTV(0)->rank - 1] : 0;
    for (int64_t o = 0; o < it.n_outer; o++) {
        for (int64_t i = 0; i < it.inner; i++)
            memcpy(y + (o * it.inner + i) * es, a + (it.off[0] + i * sa) * es, es);
        bcast_next(&it);
    }
    return XR_OK;
}

static xr_code infer_transpose(nn_graph *g, nn_node *n, xr_error *err)
{
    int r = IN(0)->rank;
    int np = attr_ints(n, "perm", n->a.axes, NN_MAX_RANK);
    if (np < 0)
        for (int i = 0; i < r; i++)
            n->a.axes[i] = r - 1 - i;
    else if (np != r)
        return BAD("perm has %d entries for rank %d", np, r);
    bool seen[NN_MAX_RANK] = {0};
    int64_t dims[NN_MAX_RANK];
    for (int i = 0; i < r; i++) {
        int64_t p = n->a.axes[i];
        if (p < 0 || p >= r || seen[p])
            return BAD("perm is not a permutation of 0..%d", r - 1);
        seen[p] = true;
        dims[i] = IN(0)->dims[p];
    }
    return nn_value_set(g, n->out[0], IN(0)->dtype, r, dims, err);
}

static xr_code run_transpose(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *d = IN(0), *o = OUTV(0);
    int r = d->rank;
    size_t es = nn_elem_size(d->dtype);
    int64_t ist[NN_MAX_RANK], st[NN_MAX_RANK], idx[NN_MAX_RANK] = {0}, s = 1;
    for (int i = r - 1; i >= 0; i--) {
        ist[i] = s;
        s *= d->dims[i];
    }
    for (int i = 0; i < r; i++)
        st[i] = ist[n->a.axes[i]];
    const uint8_t *src = nn_ptr(g, x, n->in[0]);
    uint8_t *y = nn_ptr(g, x, n->out[0]);
    int64_t inner = r ? o->dims[r - 1] : 1, sin = r ? st[r - 1] : 0;
    if (o->n_elems == 0)
        return XR_OK;
    if (es == 4 && r >= 2 && o->n_elems >= NN_PARALLEL_MIN_ELEMS) {
        /* rows of the output in parallel: memory-bound, so the second thread pays */
        int64_t rows = o->n_elems / inner;
#pragma omp parallel for schedule(static) num_threads(nn_threads())
        for (int64_t row = 0; row < rows; row++) {
            int64_t rem = row, off = 0;
            for (int i = r - 2; i >= 0; i--) {
                off += (rem % o->dims[i]) * st[i];
                rem /= o->dims[i];
            }
            const float *fs = (const float *)src + off;
            float *fy = (float *)y + row * inner;
            if (sin == 1)
                memcpy(fy, fs, (size_t)inner * sizeof(float));
            else
                for (int64_t i = 0; i < inner; i++)
                    fy[i] = fs[i * sin];
        }
        return XR_OK;
    }
    for (int64_t k = 0; k < o->n_elems; k += inner) {
        int64_t off = 0;
        for (int i = 0; i < r - 1; i++)
            off += idx[i] * st[i];
        if (es == 4) {
            const float *fs = (const float *)src + off;
            float *fy = (float *)y + k;
            for (int64_t i = 0; i < inner; i++)
                fy[i] = fs[i * sin];
        } else {
            for (int64_t i = 0; i < inner; i++)
                memcpy(y + (k + i) * es, src + (off + i * sin) * es, es);
        }
        for (int i = r - 2; i >= 0; i--) {
            if (++idx[i] < o->dims[i])
                break;
            idx[i] = 0;
        }
    }
    return XR_OK;
}

/* ---------------------------------------------------------------- reductions, softmax, norms */

static xr_code infer_reduce(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = need_float(g, n, 0, err);
    if (rc)
        return rc;
    int r = IN(0)->rank;
    int na = -1;
    bool sum = strcmp(n->op_type, "ReduceSum") == 0;
    n->a.i0 = sum;
    if (sum && g->opset >= 13) {
        if (HAS(1)) {
            if (!is_const(g, n, 1))
                return UNSUP("axes input is not constant");
            if ((na = nn_const_ints(g, n->in[1], n->a.axes, NN_MAX_RANK)) < 0)
                return BAD("axes must be int64");
        }
        if (na <= 0 && nn_attr_int(n, "noop_with_empty_axes", 0)) {
            n->a.i1 = 1; /* identity */
            return same_as_input(g, n, 0, 0, err);
        }
    } else {
        na = attr_ints(n, "axes", n->a.axes, NN_MAX_RANK);
        if (na == -2)
            return BAD("too many axes");
    }
    bool mark[NN_MAX_RANK] = {0};
    if (na <= 0) {
        for (int i = 0; i < r; i++)
            mark[i] = true;
    } else {
        for (int i = 0; i < na; i++) {
            int a = norm_axis(n->a.axes[i], r);
            if (a < 0 || a >= r)
                return BAD("axis %lld out of range for rank %d", (long long)n->a.axes[i], r);
            mark[a] = true;
        }
    }
    bool keep = nn_attr_int(n, "keepdims", 1) != 0;
    int64_t dims[NN_MAX_RANK];
    int ro = 0;
    n->a.n_axes = r;
    for (int i = 0; i < r; i++) {
        n->a.axes[i] = mark[i];
        if (!mark[i])
            dims[ro++] = IN(0)->dims[i];
        else if (keep)
            dims[ro++] = 1;
    }
    return nn_value_set(g, n->out[0], NN_DTYPE_FLOAT, ro, dims, err);
}

static xr_code run_reduce(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    if (n->a.i1)
        return run_copy(g, n, x, err);
    const nn_value *d = IN(0);
    int r = d->rank;
    const float *a = nn_ptr(g, x, n->in[0]);
    float *y = nn_ptr(g, x, n->out[0]);
    /* output strides laid against the input's axes (0 on reduced ones) */
    int64_t ost[NN_MAX_RANK], idx[NN_MAX_RANK] = {0}, s = 1, cnt = 1;
    for (int i = r - 1; i >= 0; i--) {
        ost[i] = n->a.axes[i] ? 0 : s;
        if (!n->a.axes[i])
            s *= d->dims[i];
        else
            cnt *= d->dims[i];
    }
    int64_t n_out = OUTV(0)->n_elems;
    double *acc = NULL;
    /* accumulate in the output buffer (float); short reductions keep enough precision */
    for (int64_t i = 0; i < n_out; i++)
        y[i] = 0;
    (void)acc;
    int64_t inner = r ? d->dims[r - 1] : 1, sin = r ? ost[r - 1] : 0;
    for (int64_t k = 0; k < d->n_elems; k += inner) {
        int64_t off = 0;
        for (int i = 0; i < r - 1; i++)
            off += idx[i] * ost[i];
        if (sin == 0) {
            float t = 0;
            for (int64_t i = 0; i < inner; i++)
                t += a[k + i];
            y[off] += t;
        } else {
            for (int64_t i = 0; i < inner; i++)
                y[off + i] += a[k + i];
        }
        for (int i = r - 2; i >= 0; i--) {
            if (++idx[i] < d->dims[i])
                break;
            idx[i] = 0;
        }
    }
    if (!n->a.i0 && cnt > 0)
        for (int64_t i = 0; i < n_out; i++)
            y[i] /= (float)cnt;
    return XR_OK;
}

static xr_code infer_softmax(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = need_float(g, n, 0, err);
    if (rc)
        return rc;
    int r = IN(0)->rank;
    int axis = norm_axis(nn_attr_int(n, "axis", g->opset < 13 ? 1 : -1), r);
    if (axis < 0 || axis >= (r ? r : 1))
        return BAD("axis out of range for rank %d", r);
    n->a.axis = axis;
    n->a.i0 = strcmp(n->op_type, "LogSoftmax") == 0;
    n->a.i1 = g->opset < 13; /* coerce to 2-D: normalize over all axes from axis on */
    return same_as_input(g, n, 0, 0, err);
}

static xr_code run_softmax(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *d = IN(0);
    int64_t outer = 1, len = 1, inner = 1;
    for (int i = 0; i < d->rank; i++) {
        if (i < n->a.axis)
            outer *= d->dims[i];
        else if (i == n->a.axis || n->a.i1)
            len *= d->dims[i];
        else
            inner *= d->dims[i];
    }
    const float *a = nn_ptr(g, x, n->in[0]);
    float *y = nn_ptr(g, x, n->out[0]);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t in = 0; in < inner; in++) {
            const float *p = a + o * len * inner + in;
            float *q = y + o * len * inner + in;
            float mx = -INFINITY;
            for (int64_t i = 0; i < len; i++)
                mx = fmaxf(mx, p[i * inner]);
            float sum = 0;
            for (int64_t i = 0; i < len; i++) {
                float e = expf(p[i * inner] - mx);
                q[i * inner] = e;
                sum += e;
            }
            if (n->a.i0) {
                float ls = logf(sum);
                for (int64_t i = 0; i < len; i++)
                    q[i * inner] = p[i * inner] - mx - ls;
            } else {
                float inv = 1.0f / sum;
                for (int64_t i = 0; i < len; i++)
                    q[i * inner] *= inv;
            }
        }
    return XR_OK;
}

static xr_code infer_layernorm(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = need_float(g, n, 0, err);
    if (rc)
        return rc;
    int r = IN(0)->rank;
    int axis = norm_axis(nn_attr_int(n, "axis", -1), r);
    if (axis < 0 || axis >= r)
        return BAD("axis out of range for rank %d", r);
    n->a.axis = axis;
    n->a.f0 = nn_attr_float(n, "epsilon", 1e-5f);
    int64_t norm = 1;
    for (int i = axis; i < r; i++)
        norm *= IN(0)->dims[i];
    for (int i = 1; i <= 2; i++) {
        if (!HAS(i))
            continue;
        if ((rc = need_float(g, n, i, err)))
            return rc;
        /* scale/bias broadcast to the normalized shape; we accept exactly it or its tail */
        const nn_value *w = IN(i);
        if (w->n_elems != norm && w->n_elems != 1) {
            int64_t tail = 1;
            for (int d = 0; d < w->rank; d++)
                tail *= w->dims[d];
            return BAD("input %d has %lld elements, normalized shape has %lld", i,
                       (long long)tail, (long long)norm);
        }
    }
    if ((rc = same_as_input(g, n, 0, 0, err)))
        return rc;
    int64_t sd[NN_MAX_RANK];
    for (int i = 0; i < r; i++)
        sd[i] = i < axis ? IN(0)->dims[i] : 1;
    for (int o = 1; o <= 2; o++)
        if (HASOUT(o) && (rc = nn_value_set(g, n->out[o], NN_DTYPE_FLOAT, r, sd, err)))
            return rc;
    return XR_OK;
}

static xr_code run_layernorm(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *d = IN(0);
    int64_t outer = 1, len = 1;
    for (int i = 0; i < d->rank; i++)
        *(i < n->a.axis ? &outer : &len) *= d->dims[i];
    const float *a = nn_ptr(g, x, n->in[0]);
    const float *w = HAS(1) ? nn_ptr(g, x, n->in[1]) : NULL;
    const float *b = HAS(2) ? nn_ptr(g, x, n->in[2]) : NULL;
    int64_t wn = HAS(1) ? IN(1)->n_elems : 0, bn = HAS(2) ? IN(2)->n_elems : 0;
    float *y = nn_ptr(g, x, n->out[0]);
    float *mo = HASOUT(1) ? nn_ptr(g, x, n->out[1]) : NULL;
    float *io = HASOUT(2) ? nn_ptr(g, x, n->out[2]) : NULL;
    for (int64_t o = 0; o < outer; o++) {
        const float *p = a + o * len;
        float *q = y + o * len;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < len; i++)
            mean += p[i];
        mean /= (double)len;
        for (int64_t i = 0; i < len; i++)
            var += ((double)p[i] - mean) * ((double)p[i] - mean);
        var /= (double)len;
        float inv = (float)(1.0 / sqrt(var + n->a.f0));
        float m = (float)mean;
        for (int64_t i = 0; i < len; i++) {
            float v = (p[i] - m) * inv;
            if (w)
                v *= w[wn == 1 ? 0 : i];
            if (b)
                v += b[bn == 1 ? 0 : i];
            q[i] = v;
        }
        if (mo)
            mo[o] = m;
        if (io)
            io[o] = inv;
    }
    return XR_OK;
}

static xr_code infer_batchnorm(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc;
    if (n->n_out > 1 || nn_attr_int(n, "training_mode", 0))
        return UNSUP("training mode (more than one output) is not supported");
    for (int i = 0; i < 5; i++)
        if ((rc = need_float(g, n, i, err)))
            return rc;
    if (IN(0)->rank < 2)
        return BAD("input rank %d, at least 2 expected", IN(0)->rank);
    int64_t c = IN(0)->dims[1];
    for (int i = 1; i < 5; i++)
        if (IN(i)->n_elems != c)
            return BAD("input %d \"%s\" has %lld elements for %lld channels", i, IN(i)->name,
                       (long long)IN(i)->n_elems, (long long)c);
    if (g->opset < 9 && nn_attr_int(n, "spatial", 1) == 0)
        return UNSUP("spatial 0 (opset %lld) is not supported", (long long)g->opset);
    n->a.f0 = nn_attr_float(n, "epsilon", 1e-5f);
    return same_as_input(g, n, 0, 0, err);
}

static xr_code run_batchnorm(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *d = IN(0);
    int64_t nb = d->dims[0], c = d->dims[1], sp = (c && nb) ? d->n_elems / (c * nb) : 0;
    const float *a = nn_ptr(g, x, n->in[0]), *sc = nn_ptr(g, x, n->in[1]),
                *bi = nn_ptr(g, x, n->in[2]), *mu = nn_ptr(g, x, n->in[3]),
                *va = nn_ptr(g, x, n->in[4]);
    float *y = nn_ptr(g, x, n->out[0]);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t ch = 0; ch < c; ch++) {
            float s = sc[ch] / sqrtf(va[ch] + n->a.f0), t = bi[ch] - mu[ch] * s;
            const float *p = a + (b * c + ch) * sp;
            float *q = y + (b * c + ch) * sp;
            for (int64_t i = 0; i < sp; i++)
                q[i] = p[i] * s + t;
        }
    return XR_OK;
}

/* ---------------------------------------------------------------- pooling */

/* Kernel/strides/pads/dilations for Conv and pools; k from W for Conv. */
static xr_code infer_window(nn_graph *g, nn_node *n, const int64_t *kernel_from_w, int64_t *out,
                            xr_error *err)
{
    (void)g;
    const nn_value *d = IN(0);
    int sp = d->rank - 2;
    if (sp < 1 || sp > 3)
        return UNSUP("%d spatial dimensions; 1 to 3 supported", sp);
    n->a.n_sp = sp;
    int64_t tmp[2 * 3];
    int k = attr_ints(n, "kernel_shape", n->a.kernel, 3);
    if (k < 0 && kernel_from_w) {
        memcpy(n->a.kernel, kernel_from_w, sizeof(int64_t) * sp);
        k = sp;
    }
    if (k != sp)
        return BAD("kernel_shape has %d values for %d spatial dimensions", k, sp);
    for (int i = 0; i < sp; i++) {
        n->a.strides[i] = 1;
        n->a.dil[i] = 1;
        n->a.pads_l[i] = n->a.pads_r[i] = 0;
    }
    int c;
    if ((c = attr_ints(n, "strides", tmp, 3)) >= 0) {
        if (c != sp)
            return BAD("strides has %d values for %d spatial dimensions", c, sp);
        memcpy(n->a.strides, tmp, sizeof(int64_t) * sp);
    }
    if ((c = attr_ints(n, "dilations", tmp, 3)) >= 0) {
        if (c != sp)
            return BAD("dilations has %d values for %d spatial dimensions", c, sp);
        memcpy(n->a.dil, tmp, sizeof(int64_t) * sp);
    }
    if ((c = attr_ints(n, "pads", tmp, 6)) >= 0) {
        if (c != 2 * sp)
            return BAD("pads has %d values for %d spatial dimensions", c, sp);
        for (int i = 0; i < sp; i++) {
            n->a.pads_l[i] = tmp[i];
            n->a.pads_r[i] = tmp[sp + i];
        }
    }
    bool ceil_mode = nn_attr_int(n, "ceil_mode", 0) != 0;
    char apbuf[32];
    const char *ap = attr_string(n, "auto_pad", "NOTSET", apbuf, sizeof(apbuf));
    for (int i = 0; i < sp; i++) {
        int64_t in = d->dims[2 + i], kk = n->a.kernel[i], s = n->a.strides[i], dl = n->a.dil[i];
        if (kk < 1 || s < 1 || dl < 1 || n->a.pads_l[i] < 0 || n->a.pads_r[i] < 0)
            return BAD("kernel %lld, stride %lld, dilation %lld, pads must be positive",
                       (long long)kk, (long long)s, (long long)dl);
        int64_t ek = (kk - 1) * dl + 1;
        if (strcmp(ap, "SAME_UPPER") == 0 || strcmp(ap, "SAME_LOWER") == 0) {
            int64_t o = (in + s - 1) / s;
            int64_t pad = (o - 1) * s + ek - in;
            pad = pad < 0 ? 0 : pad;
            n->a.pads_l[i] = strcmp(ap, "SAME_UPPER") == 0 ? pad / 2 : pad - pad / 2;
            n->a.pads_r[i] = pad - n->a.pads_l[i];
            out[i] = o;
            continue;
        } else if (strcmp(ap, "VALID") == 0) {
            n->a.pads_l[i] = n->a.pads_r[i] = 0;
        } else if (strcmp(ap, "NOTSET") != 0) {
            return BAD("auto_pad \"%s\" is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID", ap);
        }
        int64_t span = in + n->a.pads_l[i] + n->a.pads_r[i] - ek;
        if (span < 0)
            return BAD("window %lld larger than padded input %lld on axis %d", (long long)ek,
                       (long long)(in + n->a.pads_l[i] + n->a.pads_r[i]), 2 + i);
        out[i] = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
        /* the last window must start inside the input or left padding */
        if (ceil_mode && (out[i] - 1) * s >= in + n->a.pads_l[i])
            out[i]--;
    }
    return XR_OK;
}

static xr_code infer_pool(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    bool global = strncmp(n->op_type, "Global", 6) == 0;
    n->a.i0 = strstr(n->op_type, "Max") != NULL;
    if (!(n->a.i0 && numeric(IN(0)->dtype) && IN(0)->dtype != NN_DTYPE_BOOL) &&
        (rc = need_float(g, n, 0, err)))
        return rc;
    int64_t dims[NN_MAX_RANK];
    memcpy(dims, IN(0)->dims, sizeof(dims));
    if (global) {
        int sp = IN(0)->rank - 2;
        if (sp < 1 || sp > 3)
            return UNSUP("%d spatial dimensions; 1 to 3 supported", sp);
        n->a.n_sp = sp;
        for (int i = 0; i < sp; i++) {
            n->a.kernel[i] = IN(0)->dims[2 + i];
            n->a.strides[i] = n->a.dil[i] = 1;
            n->a.pads_l[i] = n->a.pads_r[i] = 0;
            dims[2 + i] = 1;
        }
    } else {
        n->a.i2 = nn_attr_int(n, "storage_order", 0);
        if (n->a.i2 && HASOUT(1) && IN(0)->rank != 4)
            return UNSUP("storage_order 1 is supported for 2-D pooling only");
        if ((rc = infer_window(g, n, NULL, dims + 2, err)))
            return rc;
    }
    n->a.i1 = nn_attr_int(n, "count_include_pad", 0);
    if ((rc = nn_value_set(g, n->out[0], IN(0)->dtype, IN(0)->rank, dims, err)))
        return rc;
    if (HASOUT(1))
        rc = nn_value_set(g, n->out[1], NN_DTYPE_INT64, IN(0)->rank, dims, err);
    return rc;
}

static xr_code run_pool(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *d = IN(0), *o = OUTV(0);
    int sp = n->a.n_sp;
    int64_t id[3] = {1, 1, 1}, od[3] = {1, 1, 1}, k[3] = {1, 1, 1}, s[3] = {1, 1, 1},
            p[3] = {0, 0, 0}, dl[3] = {1, 1, 1}, pe[3] = {0, 0, 0};
    for (int i = 0; i < sp; i++) {
        id[i] = d->dims[2 + i];
        od[i] = o->dims[2 + i];
        k[i] = n->a.kernel[i];
        s[i] = n->a.strides[i];
        p[i] = n->a.pads_l[i];
        pe[i] = n->a.pads_r[i];
        dl[i] = n->a.dil[i];
    }
    bool mx = n->a.i0, cip = n->a.i1;
    int64_t planes = d->dims[0] * d->dims[1], isz = id[0] * id[1] * id[2],
            osz = od[0] * od[1] * od[2];
    const void *a0 = nn_ptr(g, x, n->in[0]);
    void *y0 = nn_ptr(g, x, n->out[0]);
    const float *a = a0;
    float *y = y0;
    bool fl = d->dtype == NN_DTYPE_FLOAT;
    int64_t *ix = HASOUT(1) ? nn_ptr(g, x, n->out[1]) : NULL;
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *src = a + pl * isz;
        for (int64_t o0 = 0; o0 < od[0]; o0++)
            for (int64_t o1 = 0; o1 < od[1]; o1++)
                for (int64_t o2 = 0; o2 < od[2]; o2++) {
                    float acc = mx ? -INFINITY : 0;
                    int64_t cnt = 0, best = 0;
                    for (int64_t k0 = 0; k0 < k[0]; k0++) {
                        int64_t i0 = o0 * s[0] - p[0] + k0 * dl[0];
                        for (int64_t k1 = 0; k1 < k[1]; k1++) {
                            int64_t i1 = o1 * s[1] - p[1] + k1 * dl[1];
                            for (int64_t k2 = 0; k2 < k[2]; k2++) {
                                int64_t i2 = o2 * s[2] - p[2] + k2 * dl[2];
                                bool inside = i0 >= 0 && i0 < id[0] && i1 >= 0 && i1 < id[1] &&
                                              i2 >= 0 && i2 < id[2];
                                if (!inside) {
                                    /* padding counts only inside the declared pads */
                                    if (!mx && cip && i0 < id[0] + pe[0] && i1 < id[1] + pe[1] &&
                                        i2 < id[2] + pe[2])
                                        cnt++;
                                    continue;
                                }
                                int64_t at = (i0 * id[1] + i1) * id[2] + i2;
                                float v = fl ? src[at]
                                             : (float)load_as_double(a0, d->dtype, pl * isz + at);
                                if (mx) {
                                    if (v > acc) {
                                        acc = v;
                                        best = at;
                                    }
                                } else {
                                    acc += v;
                                    cnt++;
                                }
                            }
                        }
                    }
                    int64_t oi = pl * osz + (o0 * od[1] + o1) * od[2] + o2;
                    float r = mx ? acc : (cnt ? acc / (float)cnt : 0);
                    if (fl)
                        y[oi] = r;
                    else
                        store_from_double(y0, d->dtype, oi, r);
                    if (ix && n->a.i2) /* column-major within the plane (2-D only) */
                        best = (best % id[1]) * id[0] + best / id[1];
                    if (ix)
                        ix[oi] = pl * isz + best;
                }
    }
    return XR_OK;
}

/* ---------------------------------------------------------------- Conv, MatMul, Gemm */

static xr_code infer_conv(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc;
    for (int i = 0; i < n->n_in; i++)
        if (HAS(i) && (rc = need_float(g, n, i, err)))
            return rc;
    const nn_value *d = IN(0), *w = IN(1);
    if (w->rank != d->rank)
        return BAD("weights rank %d differs from input rank %d", w->rank, d->rank);
    n->a.group = nn_attr_int(n, "group", 1);
    int64_t c = d->rank > 1 ? d->dims[1] : 0, m = w->dims[0];
    if (n->a.group < 1 || c % n->a.group || m % n->a.group || w->dims[1] * n->a.group != c)
        return BAD("group %lld does not fit %lld input channels and weights [%lld, %lld, ...]",
                   (long long)n->a.group, (long long)c, (long long)m, (long long)w->dims[1]);
    if (HAS(2) && (IN(2)->rank != 1 || IN(2)->dims[0] != m))
        return BAD("bias \"%s\" must have %lld elements", IN(2)->name, (long long)m);
    int64_t dims[NN_MAX_RANK];
    dims[0] = d->dims[0];
    dims[1] = m;
    if ((rc = infer_window(g, n, w->dims + 2, dims + 2, err)))
        return rc;
    return nn_value_set(g, n->out[0], NN_DTYPE_FLOAT, d->rank, dims, err);
}

static xr_code infer_matmul(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc;
    if ((rc = need_float(g, n, 0, err)) || (rc = need_float(g, n, 1, err)))
        return rc;
    const nn_value *a = IN(0), *b = IN(1);
    if (a->rank < 1 || b->rank < 1)
        return BAD("inputs must have rank 1 or more");
    /* promote 1-D operands, broadcast batch dims */
    nn_value pa = *a, pb = *b;
    if (a->rank == 1) {
        pa.rank = 2;
        pa.dims[0] = 1;
        pa.dims[1] = a->dims[0];
    }
    if (b->rank == 1) {
        pb.rank = 2;
        pb.dims[0] = b->dims[0];
        pb.dims[1] = 1;
    }
    if (pa.dims[pa.rank - 1] != pb.dims[pb.rank - 2])
        return BAD("inner dimensions differ: %lld and %lld", (long long)pa.dims[pa.rank - 1],
                   (long long)pb.dims[pb.rank - 2]);
    nn_value ba = pa, bb = pb;
    ba.rank -= 2;
    bb.rank -= 2;
    const nn_value *ins[2] = {&ba, &bb};
    int rank;
    int64_t dims[NN_MAX_RANK];
    if ((rc = broadcast_shape(n, ins, 2, &rank, dims, err)))
        return rc;
    if (a->rank > 1)
        dims[rank++] = pa.dims[pa.rank - 2];
    if (b->rank > 1)
        dims[rank++] = pb.dims[pb.rank - 1];
    return nn_value_set(g, n->out[0], NN_DTYPE_FLOAT, rank, dims, err);
}

static xr_code infer_gemm(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc;
    for (int i = 0; i < n->n_in; i++)
        if (HAS(i) && (rc = need_float(g, n, i, err)))
            return rc;
    const nn_value *a = IN(0), *b = IN(1);
    if (a->rank != 2 || b->rank != 2)
        return BAD("A and B must be 2-D, got ranks %d and %d", a->rank, b->rank);
    n->a.i0 = nn_attr_int(n, "transA", 0);
    n->a.i1 = nn_attr_int(n, "transB", 0);
    n->a.f0 = nn_attr_float(n, "alpha", 1.0f);
    n->a.f1 = nn_attr_float(n, "beta", 1.0f);
    int64_t m = n->a.i0 ? a->dims[1] : a->dims[0], k = n->a.i0 ? a->dims[0] : a->dims[1];
    int64_t k2 = n->a.i1 ? b->dims[1] : b->dims[0], nn = n->a.i1 ? b->dims[0] : b->dims[1];
    if (k != k2)
        return BAD("inner dimensions differ: %lld and %lld", (long long)k, (long long)k2);
    int64_t dims[2] = {m, nn};
    if (HAS(2)) {
        nn_value o = {.rank = 2, .dims = {m, nn}};
        const nn_value *ins[2] = {&o, IN(2)};
        int r;
        int64_t bd[NN_MAX_RANK];
        if ((rc = broadcast_shape(n, ins, 2, &r, bd, err)))
            return rc;
        if (r != 2 || bd[0] != m || bd[1] != nn)
            return BAD("C does not broadcast to [%lld, %lld]", (long long)m, (long long)nn);
    }
    return nn_value_set(g, n->out[0], NN_DTYPE_FLOAT, 2, dims, err);
}

/* ---------------------------------------------------------------- the table */

#define UN(nm) {nm, 1, 1, 1, 1, infer_unary, run_unary, NULL, false}
#define BI(nm) {nm, 2, 2, 1, 1, infer_binary, run_binary, NULL, false}

static const nn_op ops[] = {
    UN("Abs"), UN("Ceil"), UN("Elu"), UN("Erf"), UN("Exp"), UN("Floor"), UN("HardSigmoid"),
    UN("HardSwish"), UN("LeakyRelu"), UN("Log"), UN("Neg"), UN("Reciprocal"), UN("Relu"),
    UN("Sigmoid"), UN("Softplus"), UN("Sqrt"), UN("Tanh"),
    {"Clip", 1, 3, 1, 1, infer_unary, run_unary, NULL, false},
    {"Add", 2, 2, 1, 1, infer_binary, run_binary, nn_binary_prepare, false}, BI("Sub"),
    {"Mul", 2, 2, 1, 1, infer_binary, run_binary, nn_binary_prepare, false}, BI("Div"), BI("Pow"), BI("Equal"), BI("Less"),
    BI("Greater"),
    {"Max", 1, NN_MAX_NODE_IO, 1, 1, infer_binary, run_binary, NULL, false},
    {"Min", 1, NN_MAX_NODE_IO, 1, 1, infer_binary, run_binary, NULL, false},
    {"Where", 3, 3, 1, 1, infer_where, run_where, NULL, false},
    {"Identity", 1, 1, 1, 1, infer_identity, run_copy, NULL, true},
    {"Dropout", 1, 3, 1, 2, infer_dropout, run_dropout, NULL, false},
    {"Reshape", 1, 2, 1, 1, infer_reshape, run_copy, NULL, true},
    {"Flatten", 1, 1, 1, 1, infer_flatten, run_copy, NULL, true},
    {"Squeeze", 1, 2, 1, 1, infer_squeeze_unsqueeze, run_copy, NULL, true},
    {"Unsqueeze", 1, 2, 1, 1, infer_squeeze_unsqueeze, run_copy, NULL, true},
    {"Shape", 1, 1, 1, 1, infer_shape, run_shape, NULL, false},
    {"Constant", 0, 0, 1, 1, infer_constant, NULL, NULL, false},
    {"ConstantOfShape", 1, 1, 1, 1, infer_constant_of_shape, run_constant_of_shape, NULL, false},
    {"Cast", 1, 1, 1, 1, infer_cast, run_cast, NULL, false},
    {"Concat", 1, NN_MAX_NODE_IO, 1, 1, infer_concat, run_concat, NULL, false},
    {"Split", 1, 2, 1, NN_MAX_NODE_IO, infer_split, run_split, NULL, false},
    {"Gather", 2, 2, 1, 1, infer_gather, run_gather, NULL, false},
    {"Slice", 1, 5, 1, 1, infer_slice, run_slice, NULL, false},
    {"Expand", 2, 2, 1, 1, infer_expand, run_expand, NULL, false},
    {"Transpose", 1, 1, 1, 1, infer_transpose, run_transpose, NULL, false},
    {"ReduceMean", 1, 1, 1, 1, infer_reduce, run_reduce, NULL, false},
    {"ReduceSum", 1, 2, 1, 1, infer_reduce, run_reduce, NULL, false},
    {"Softmax", 1, 1, 1, 1, infer_softmax, run_softmax, nn_softmax_prepare, false},
    {"LogSoftmax", 1, 1, 1, 1, infer_softmax, run_softmax, nn_softmax_prepare, false},
    {"LayerNormalization", 1, 3, 1, 3, infer_layernorm, run_layernorm, nn_layernorm_prepare,
     false},
    {"BatchNormalization", 5, 5, 1, 5, infer_batchnorm, run_batchnorm, NULL, false},
    {"MaxPool", 1, 1, 1, 2, infer_pool, run_pool, nn_pool_prepare, false},
    {"AveragePool", 1, 1, 1, 1, infer_pool, run_pool, NULL, false},
    {"GlobalAveragePool", 1, 1, 1, 1, infer_pool, run_pool, nn_pool_prepare, false},
    {"GlobalMaxPool", 1, 1, 1, 1, infer_pool, run_pool, NULL, false},
    {"Conv", 2, 3, 1, 1, infer_conv, NULL, nn_conv_prepare, false},
    {"MatMul", 2, 2, 1, 1, infer_matmul, nn_matmul_ref, nn_matmul_prepare, false},
    {"Gemm", 2, 3, 1, 1, infer_gemm, nn_gemm_ref, nn_matmul_prepare, false},
};

const nn_op *nn_op_find(const char *name)
{
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (strcmp(ops[i].name, name) == 0)
            return &ops[i];
    return NULL;
}

const char *nn_claimed_op(size_t i)
{
    return i < sizeof(ops) / sizeof(ops[0]) ? ops[i].name : NULL;
}

bool nn_op_is_claimed(const char *op_type) { return op_type && nn_op_find(op_type) != NULL; }
