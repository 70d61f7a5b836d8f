/*
 * Graph rewrites on the folded graph, before oneDNN primitives are made:
 * - BatchNormalization after a Conv with constant weights: folded into the weights and bias;
 * - MatMul followed by Add of a constant vector: the matmul's bias;
 * - activations after Conv/MatMul/Gemm become oneDNN post-ops: Relu, LeakyRelu, Clip,
 *   Sigmoid, Tanh, HardSigmoid, HardSwish, SiLU (x * Sigmoid(x)), GELU in the Erf form
 *   (x * 0.5 * (1 + Erf(x / sqrt 2)), as PyTorch exports it);
 * - a residual Add of another tensor of the same shape: the sum post-op;
 * - a Gather of one sequence position moves up through the steps that keep positions apart,
 *   which then compute that one row (restrict_rows).
 * A rewrite applies only when the intermediate tensor has no other reader and is not a graph
 * output, so results are those of the unfused graph up to float rounding.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn-internal.h"

/* Live readers of v (each input slot counts); first and second get the first two. */
static int readers(const nn_graph *g, int v, int *first, int *second)
{
    int count = 0;
    for (size_t i = 0; i < g->n_nodes; i++) {
        const nn_node *n = &g->nodes[i];
        if (n->dead)
            continue;
        for (int k = 0; k <= n->n_in; k++) {
            int in = k < n->n_in ? n->in[k] : n->sum_in;
            if (in != v)
                continue;
            if (count == 0 && first)
                *first = (int)i;
            else if (count == 1 && second)
                *second = (int)i;
            count++;
        }
    }
    return count;
}

static bool is_op(const nn_node *n, const char *op) { return strcmp(n->op_type, op) == 0; }

static bool const_scalar(const nn_graph *g, int v, float *ret)
{
    if (v < 0 || !g->values[v].data || g->values[v].n_elems != 1 ||
        g->values[v].dtype != NN_DTYPE_FLOAT)
        return false;
    *ret = *(const float *)g->values[v].data;
    return true;
}

/* The input of binary node n that is not v (-1 when both or neither are). */
static int other_input(const nn_node *n, int v)
{
    if (n->n_in != 2)
        return -1;
    if (n->in[0] == v && n->in[1] != v)
        return n->in[1];
    if (n->in[1] == v && n->in[0] != v)
        return n->in[0];
    return -1;
}

/* A new runtime value of the given type and shape named base + suffix; -1 when there is no
 * room or memory. */
static int new_value(nn_graph *g, const char *base, const char *suffix, nn_dtype dt, int rank,
                     const int64_t *dims)
{
    if (g->n_values >= g->cap_values)
        return -1;
    int v = (int)g->n_values;
    nn_value *val = &g->values[v];
    memset(val, 0, sizeof(*val));
    val->producer = -1;
    val->view_of = -1;
    size_t l = strlen(base) + strlen(suffix) + 1;
    if (!(val->name = malloc(l)))
        return -1;
    snprintf(val->name, l, "%s%s", base, suffix);
    if (nn_value_shape(val, dt, rank, dims, NULL)) {
        free(val->name);
        return -1;
    }
    val->known = true;
    g->n_values++;
    return v;
}

/* Values made since the graph had n_values: given back (a rewrite that could not finish). */
static void drop_values(nn_graph *g, size_t n_values)
{
    while (g->n_values > n_values) {
        nn_value *v = &g->values[--g->n_values];
        free(v->name);
        free(v->data);
    }
}

/* A new constant of the given type and shape (data owned by the graph, zeroed). */
static int new_tensor(nn_graph *g, const char *base, const char *suffix, nn_dtype dt, int rank,
                      const int64_t *dims, void **ret_data)
{
    size_t n_values = g->n_values;
    int v = new_value(g, base, suffix, dt, rank, dims);
    if (v < 0)
        return -1;
    nn_value *val = &g->values[v];
    if (!(val->data = nn_aligned_alloc(val->n_bytes))) {
        drop_values(g, n_values);
        return -1;
    }
    memset(val->data, 0, val->n_bytes);
    *ret_data = val->data;
    return v;
}

static int new_const(nn_graph *g, const char *base, const char *suffix, int rank,
                     const int64_t *dims, float **ret_data)
{
    void *data;
    int v = new_tensor(g, base, suffix, NN_DTYPE_FLOAT, rank, dims, &data);
    *ret_data = data;
    return v;
}

/* Conv -> BatchNormalization: W' = W * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var+eps) */
static size_t fold_batchnorm(nn_graph *g)
{
    size_t n_done = 0;
    for (size_t i = 0; i < g->n_nodes; i++) {
        nn_node *bn = &g->nodes[i];
        if (bn->dead || !is_op(bn, "BatchNormalization"))
            continue;
        int x = bn->in[0];
        int pi = g->values[x].producer;
        if (pi < 0 || g->values[x].is_output || readers(g, x, NULL, NULL) != 1)
            continue;
        nn_node *cv = &g->nodes[pi];
        if (cv->dead || !is_op(cv, "Conv") || cv->n_post || !g->values[cv->in[1]].data ||
            (cv->n_in > 2 && cv->in[2] >= 0 && !g->values[cv->in[2]].data))
            continue;
        bool consts = true;
        for (int k = 1; k < 5; k++)
            consts &= g->values[bn->in[k]].data != NULL;
        if (!consts)
            continue;
        const nn_value *w = &g->values[cv->in[1]];
        int64_t oc = w->dims[0], per = oc ? w->n_elems / oc : 0;
        float *nw, *nb;
        int vw = new_const(g, w->name, "/bn_folded", w->rank, w->dims, &nw);
        int vb = vw < 0 ? -1 : new_const(g, w->name, "/bn_bias", 1, &oc, &nb);
        if (vw < 0 || vb < 0)
            return n_done; /* out of memory: leave the graph unfused, still correct */
        w = &g->values[cv->in[1]];
        const float *sc = g->values[bn->in[1]].data, *be = g->values[bn->in[2]].data,
                    *mu = g->values[bn->in[3]].data, *va = g->values[bn->in[4]].data;
        const float *ob = cv->n_in > 2 && cv->in[2] >= 0 ? g->values[cv->in[2]].data : NULL;
        for (int64_t c = 0; c < oc; c++) {
            double s = (double)sc[c] / sqrt((double)va[c] + bn->a.f0);
            for (int64_t k = 0; k < per; k++)
                nw[c * per + k] = (float)(((const float *)w->data)[c * per + k] * s);
            nb[c] = (float)(((ob ? ob[c] : 0.0) - mu[c]) * s + be[c]);
        }
        cv->in[1] = vw;
        cv->in[2] = vb;
        cv->n_in = 3;
        cv->out[0] = bn->out[0];
        g->values[bn->out[0]].producer = (int)pi;
        bn->dead = true;
        n_done++;
    }
    return n_done;
}

static bool add_post(nn_node *n, dnnl_alg_kind_t alg, float alpha, float beta)
{
    if (n->n_post >= NN_MAX_POST)
        return false;
    n->post[n->n_post++] = (nn_post){NN_POST_ELTWISE, alg, alpha, beta};
    return true;
}

/* The node takes over c's output: c (and the chain before it) is gone. */
static void take_output(nn_graph *g, nn_node *n, nn_node *last)
{
    n->out[0] = last->out[0];
    g->values[n->out[0]].producer = (int)(n - g->nodes);
}

/* x * 0.5 * (1 + erf(x / sqrt2)) starting at y's readers; returns the Mul that ends it. */
static nn_node *match_gelu(nn_graph *g, int y)
{
    int r1 = -1, r2 = -1;
    if (readers(g, y, &r1, &r2) != 2)
        return NULL;
    nn_node *dv = &g->nodes[r1], *m1 = &g->nodes[r2];
    if (!is_op(dv, "Div")) {
        nn_node *t = dv;
        dv = m1;
        m1 = t;
    }
    float c;
    if (!is_op(dv, "Div") || dv->in[0] != y || !const_scalar(g, dv->in[1], &c) ||
        fabsf(c - 1.41421356f) > 1e-4f)
        return NULL;
    int e = -1, a = -1, m2 = -1;
    if (readers(g, dv->out[0], &e, NULL) != 1 || !is_op(&g->nodes[e], "Erf"))
        return NULL;
    nn_node *erf = &g->nodes[e];
    if (readers(g, erf->out[0], &a, NULL) != 1 || !is_op(&g->nodes[a], "Add"))
        return NULL;
    nn_node *add = &g->nodes[a];
    if (!const_scalar(g, other_input(add, erf->out[0]), &c) || c != 1.0f)
        return NULL;
    if (!is_op(m1, "Mul") || other_input(m1, y) != add->out[0] ||
        readers(g, add->out[0], NULL, NULL) != 1)
        return NULL;
    if (readers(g, m1->out[0], &m2, NULL) != 1 || !is_op(&g->nodes[m2], "Mul") ||
        g->values[m1->out[0]].is_output)
        return NULL;
    nn_node *half = &g->nodes[m2];
    if (!const_scalar(g, other_input(half, m1->out[0]), &c) || c != 0.5f)
        return NULL;
    if (g->values[dv->out[0]].is_output || g->values[erf->out[0]].is_output ||
        g->values[add->out[0]].is_output)
        return NULL;
    dv->dead = erf->dead = add->dead = m1->dead = true;
    return half;
}

static bool same_shape(const nn_value *a, const nn_value *b)
{
    if (a->rank != b->rank || a->dtype != b->dtype)
        return false;
    for (int d = 0; d < a->rank; d++)
        if (a->dims[d] != b->dims[d])
            return false;
    return true;
}

/*
 * MatMul/Gemm result -> Reshape-like views -> Add of a residual: the views move no bytes, so
 * the residual is still the sum post-op (sequence-first attention: out-projection Gemm ->
 * Reshape -> Transpose of the size-1 batch axis -> Add). r is the first view's node.
 */
static bool sum_through_views(nn_graph *g, nn_node *n, int r)
{
    bool gemm = is_op(n, "Gemm");
    if ((!gemm && !is_op(n, "MatMul")) || n->sum_in >= 0 || n->n_post >= NN_MAX_POST ||
        (gemm && (n->a.f0 != 1.0f || (n->n_in > 2 && n->in[2] >= 0 && !g->values[n->in[2]].data))))
        return false;
    nn_node *chain[4];
    int depth = 0, v = n->out[0];
    while (r >= 0 && g->nodes[r].op->view && g->nodes[r].in[0] == v) {
        if (depth == 4)
            return false;
        chain[depth++] = &g->nodes[r];
        v = g->nodes[r].out[0];
        if (g->values[v].is_output || readers(g, v, &r, NULL) != 1)
            return false;
    }
    nn_node *c = &g->nodes[r];
    int o = other_input(c, v);
    if (depth == 0 || !is_op(c, "Add") || o < 0)
        return false;
    const nn_value *ov = &g->values[o], *cv = &g->values[c->out[0]];
    if (ov->data || ov->dtype != NN_DTYPE_FLOAT || !same_shape(ov, cv) ||
        cv->n_elems != g->values[n->out[0]].n_elems ||
        (ov->producer >= 0 && ov->producer >= (int)(n - g->nodes)))
        return false;
    n->post[n->n_post++] = (nn_post){NN_POST_SUM, dnnl_alg_kind_undef, 0, 0};
    n->sum_in = o;
    for (int i = 0; i < depth; i++)
        chain[i]->dead = true;
    c->dead = true;
    take_output(g, n, c);
    return true;
}

/* Fold what follows node n into it, one reader at a time. */
static size_t fuse_after(nn_graph *g, nn_node *n)
{
    size_t n_done = 0;
    bool conv = is_op(n, "Conv"), matmul = is_op(n, "MatMul");
    for (;;) {
        int y = n->out[0], r1 = -1, r2 = -1;
        if (g->values[y].is_output)
            break;
        int nr = readers(g, y, &r1, &r2);
        if (nr == 2 && n->n_post < NN_MAX_POST) {
            /* SiLU: Sigmoid(y) and Mul(y, sigmoid) */
            nn_node *s = &g->nodes[r1], *m = &g->nodes[r2];
            if (!is_op(s, "Sigmoid")) {
                nn_node *t = s;
                s = m;
                m = t;
            }
            if (is_op(s, "Sigmoid") && is_op(m, "Mul") && other_input(m, y) == s->out[0] &&
                !g->values[s->out[0]].is_output && readers(g, s->out[0], NULL, NULL) == 1) {
                add_post(n, dnnl_eltwise_swish, 1.0f, 0.0f);
                s->dead = m->dead = true;
                take_output(g, n, m);
                n_done += 2;
                continue;
            }
            nn_node *gl = match_gelu(g, y);
            if (gl) {
                add_post(n, dnnl_eltwise_gelu_erf, 0.0f, 0.0f);
                gl->dead = true;
                take_output(g, n, gl);
                n_done += 5;
                continue;
            }
            break;
        }
        if (nr != 1)
            break;
        if (g->nodes[r1].op->view) {
            if (!sum_through_views(g, n, r1))
                break;
            n_done += 2;
            continue;
        }
        nn_node *c = &g->nodes[r1];
        const nn_value *cv = &g->values[c->out[0]];
        if (cv->dtype != NN_DTYPE_FLOAT || c->n_out != 1)
            break;
        bool ok = false;
        if (is_op(c, "Relu"))
            ok = add_post(n, dnnl_eltwise_relu, 0.0f, 0.0f);
        else if (is_op(c, "LeakyRelu"))
            ok = add_post(n, dnnl_eltwise_relu, c->a.f0, 0.0f);
        else if (is_op(c, "Clip"))
            ok = add_post(n, dnnl_eltwise_clip_v2, c->a.f0, c->a.f1);
        else if (is_op(c, "Sigmoid"))
            ok = add_post(n, dnnl_eltwise_logistic, 0.0f, 0.0f);
        else if (is_op(c, "Tanh"))
            ok = add_post(n, dnnl_eltwise_tanh, 0.0f, 0.0f);
        else if (is_op(c, "HardSwish"))
            ok = add_post(n, dnnl_eltwise_hardswish, 0.0f, 0.0f);
        else if (is_op(c, "HardSigmoid") && n->n_post + 2 <= NN_MAX_POST)
            ok = add_post(n, dnnl_eltwise_linear, c->a.f0, c->a.f1) &&
                 add_post(n, dnnl_eltwise_clip_v2, 0.0f, 1.0f);
        else if (is_op(c, "Add")) {
            int o = other_input(c, y);
            if (o < 0)
                break;
            const nn_value *ov = &g->values[o];
            if (matmul && n->n_post == 0 && n->bias_in < 0 && ov->data &&
                ov->dtype == NN_DTYPE_FLOAT && g->values[n->in[1]].data) {
                /* bias: a vector along the last axis, every other axis 1 */
                int64_t last = g->values[y].dims[g->values[y].rank - 1];
                bool vec = ov->n_elems == last && ov->rank >= 1 && ov->dims[ov->rank - 1] == last &&
                           ov->rank <= g->values[y].rank;
                if (vec) {
                    n->bias_in = o;
                    ok = true;
                }
            } else if ((conv || matmul) && n->sum_in < 0 && n->n_post < NN_MAX_POST && !ov->data &&
                       same_shape(ov, &g->values[y]) &&
                       (ov->producer < 0 || ov->producer < (int)(n - g->nodes))) {
                n->post[n->n_post++] = (nn_post){NN_POST_SUM, dnnl_alg_kind_undef, 0, 0};
                n->sum_in = o;
                ok = true;
            }
        }
        if (!ok)
            break;
        c->dead = true;
        take_output(g, n, c);
        n_done++;
    }
    return n_done;
}

/* ReduceMean over the last axis only, keeping dims. */
static bool mean_last_axis(const nn_graph *g, const nn_node *n)
{
    const nn_value *x = &g->values[n->in[0]], *y = &g->values[n->out[0]];
    if (!is_op(n, "ReduceMean") || x->rank < 1 || y->rank != x->rank)
        return false;
    for (int d = 0; d < x->rank; d++)
        if ((n->a.axes[d] != 0) != (d == x->rank - 1))
            return false;
    return true;
}

static nn_node *sole_reader(nn_graph *g, int v, const char *op)
{
    int r = -1;
    if (g->values[v].is_output || readers(g, v, &r, NULL) != 1 || !is_op(&g->nodes[r], op))
        return NULL;
    return &g->nodes[r];
}

/*
 * The LayerNorm decomposition exporters emit below opset 17:
 *   m = ReduceMean(x); d = x - m; v = ReduceMean(Pow(d, 2)); y = d / Sqrt(v + eps)
 *   [* gamma] [+ beta]
 * becomes one LayerNormalization node (oneDNN layer_normalization at run time).
 */
static size_t map_layernorm(nn_graph *g)
{
    size_t n_done = 0;
    const nn_op *ln = nn_op_find("LayerNormalization");
    for (size_t i = 0; i < g->n_nodes; i++) {
        nn_node *r1 = &g->nodes[i];
        if (r1->dead || !mean_last_axis(g, r1))
            continue;
        int x = r1->in[0];
        nn_node *sub = sole_reader(g, r1->out[0], "Sub");
        if (!sub || sub->in[0] != x || sub->in[1] != r1->out[0])
            continue;
        int d = sub->out[0], a = -1, b = -1;
        if (g->values[d].is_output || readers(g, d, &a, &b) != 2)
            continue;
        nn_node *pw = &g->nodes[a], *dv = &g->nodes[b];
        if (!is_op(pw, "Pow")) {
            nn_node *t = pw;
            pw = dv;
            dv = t;
        }
        float c;
        if (!is_op(pw, "Pow") || !is_op(dv, "Div") || pw->in[0] != d || dv->in[0] != d ||
            !const_scalar(g, pw->in[1], &c) || c != 2.0f)
            continue;
        nn_node *r2 = sole_reader(g, pw->out[0], "ReduceMean");
        if (!r2 || !mean_last_axis(g, r2))
            continue;
        nn_node *ad = sole_reader(g, r2->out[0], "Add");
        float eps;
        if (!ad || !const_scalar(g, other_input(ad, r2->out[0]), &eps))
            continue;
        nn_node *sq = sole_reader(g, ad->out[0], "Sqrt");
        if (!sq || dv->in[1] != sq->out[0] || readers(g, sq->out[0], NULL, NULL) != 1)
            continue;
        int64_t cdim = g->values[x].dims[g->values[x].rank - 1];
        int gamma = -1, beta = -1;
        nn_node *last = dv, *mul = sole_reader(g, dv->out[0], "Mul"), *add = NULL;
        if (mul) {
            int o = other_input(mul, dv->out[0]);
            if (o >= 0 && g->values[o].data && g->values[o].n_elems == cdim &&
                g->values[o].rank == 1) {
                gamma = o;
                last = mul;
                add = sole_reader(g, mul->out[0], "Add");
                int ob = add ? other_input(add, mul->out[0]) : -1;
                if (ob >= 0 && g->values[ob].data && g->values[ob].n_elems == cdim &&
                    g->values[ob].rank == 1) {
                    beta = ob;
                    last = add;
                }
            }
        }
        int *in = realloc(r1->in, 4 * sizeof(int));
        if (!in)
            return n_done;
        r1->in = in;
        r1->in[0] = x;
        r1->in[1] = gamma;
        r1->in[2] = beta;
        r1->n_in = 3;
        r1->op = ln;
        char *name = strdup("LayerNormalization");
        if (!name)
            return n_done;
        free(r1->op_type);
        r1->op_type = name;
        r1->a.axis = g->values[x].rank - 1;
        r1->a.f0 = eps;
        sub->dead = pw->dead = r2->dead = ad->dead = sq->dead = dv->dead = true;
        if (last != dv)
            last->dead = true;
        if (mul && last == add)
            mul->dead = true;
        r1->out[0] = last->out[0];
        g->values[r1->out[0]].producer = (int)i;
        n_done += last == add ? 8 : last == mul ? 7 : 6;
    }
    return n_done;
}

/* ---------------------------------------------------------------- rows nobody reads */

/*
 * A classifier that reads one position of a sequence (ViT's class token: Gather(axis 1,
 * index 0) after the last block) needs only that position from the steps before it that keep
 * positions apart. A Gather of that one position, keeping the axis (size 1), moves up through
 * such steps while the tensor it reads has no other reader; Gathers of one tensor at the same
 * position merge, which carries it through residual branches. In ViT-B/16 the last block's
 * MLP, attention output projection and attention rows then run for 1 row instead of 197.
 */

/* Inputs of the steps a row Gather moves through (Slice's five). */
#define NN_ROW_MAX_IN 5

/* A new node at index pos, before the one there, in room the caller made (g->nodes holds at
 * least n_nodes + 1); producer indices from pos on move up. Its fields are zero but sum_in and
 * bias_in; pointers into g->nodes are stale afterwards. */
static nn_node *insert_node(nn_graph *g, size_t pos)
{
    nn_node *nodes = g->nodes;
    memmove(&nodes[pos + 1], &nodes[pos], (g->n_nodes - pos) * sizeof(nn_node));
    g->n_nodes++;
    for (size_t v = 0; v < g->n_values; v++)
        if (g->values[v].producer >= (int)pos)
            g->values[v].producer++;
    nn_node *n = &nodes[pos];
    memset(n, 0, sizeof(*n));
    n->sum_in = n->bias_in = -1;
    return n;
}

/* A runtime value shaped like v but for axis ax, of size 1; -1 when there is no room. */
static int new_row_value(nn_graph *g, int v, int ax)
{
    const nn_value *src = &g->values[v];
    int64_t dims[NN_MAX_RANK];
    memcpy(dims, src->dims, sizeof(dims));
    dims[ax] = 1;
    return new_value(g, src->name, "/row", src->dtype, src->rank, dims);
}

/* A Gather node's parts, allocated before the graph changes so that placing it cannot fail. */
typedef struct row_parts {
    char *name, *op_type;
    int *in, *out;
} row_parts;

static void row_parts_free(row_parts *r)
{
    free(r->name);
    free(r->op_type);
    free(r->in);
    free(r->out);
    memset(r, 0, sizeof(*r));
}

static bool row_parts_alloc(row_parts *r, const char *base, const char *suffix)
{
    size_t l = strlen(base) + strlen(suffix) + 1;
    if ((r->name = malloc(l)))
        snprintf(r->name, l, "%s%s", base, suffix);
    r->op_type = strdup("Gather");
    r->in = calloc(3, sizeof(int));
    r->out = calloc(2, sizeof(int));
    if (r->name && r->op_type && r->in && r->out)
        return true;
    row_parts_free(r);
    return false;
}

/* Room for n more nodes (insert_node). */
static bool reserve_nodes(nn_graph *g, size_t n)
{
    nn_node *nodes = realloc(g->nodes, (g->n_nodes + n + 1) * sizeof(nn_node));
    if (nodes)
        g->nodes = nodes;
    return nodes != NULL;
}

/* out = Gather(x, idx, axis) as node pos (room reserved), made of parts r. */
static void place_row_gather(nn_graph *g, size_t pos, row_parts *r, int x, int idx, int out,
                             int axis)
{
    nn_node *n = insert_node(g, pos);
    n->name = r->name;
    n->op_type = r->op_type;
    n->op = nn_op_find("Gather");
    n->n_in = 2;
    n->n_out = 1;
    n->in = r->in;
    n->out = r->out;
    n->in[0] = x;
    n->in[1] = idx;
    n->out[0] = out;
    n->a.axis = axis;
    g->values[out].producer = (int)pos;
    memset(r, 0, sizeof(*r));
}

/* A Gather that keeps one position of its input along n->a.axis, of size above 1. */
static bool row_gather(const nn_graph *g, const nn_node *n, int64_t *pos)
{
    if (n->dead || !is_op(n, "Gather"))
        return false;
    const nn_value *x = &g->values[n->in[0]], *ix = &g->values[n->in[1]];
    if (x->data || !ix->data || ix->dtype != NN_DTYPE_INT64 || ix->rank != 1 ||
        ix->n_elems != 1 || g->values[n->out[0]].rank != x->rank || x->dims[n->a.axis] < 2)
        return false;
    *pos = *(const int64_t *)ix->data;
    return *pos >= 0 && *pos < x->dims[n->a.axis];
}

/* Two inputs broadcast to rank r (numpy rules): the axis of each that holds output axis a,
 * unless it is absent or of size 1 there (read whole). */
static void broadcast_axes(const nn_graph *g, const nn_node *p, int a, int r, int *in_ax)
{
    for (int k = 0; k < 2; k++) {
        const nn_value *u = &g->values[p->in[k]];
        int au = a - (r - u->rank);
        if (au >= 0 && u->dims[au] != 1)
            in_ax[k] = au;
    }
}

/* Axis of input k (in_ax[k]) that holds output axis a of step p, or -1 when input k does not
 * vary along it (broadcast, a parameter, a shape). False when p combines positions along a,
 * or would need a constant input cut. */
static bool row_axes(const nn_graph *g, const nn_node *p, int a, int *in_ax)
{
    const nn_value *y = &g->values[p->out[0]];
    int r = y->rank;
    if (p->n_in > NN_ROW_MAX_IN || p->n_out < 1)
        return false;
    for (int k = 1; k < p->n_out; k++)
        if (p->out[k] >= 0)
            return false;
    for (int k = 0; k < p->n_in; k++)
        in_ax[k] = -1;
    const char *op = p->op_type;
    const nn_value *x = &g->values[p->in[0]];
    if (p->op->infer == nn_op_find("Relu")->infer || is_op(p, "Clip")) {
        in_ax[0] = a; /* the ops sharing Relu's inference are elementwise; Clip's bounds are
                       * scalars */
    } else if (p->n_in == 2 && (!strcmp(op, "Add") || !strcmp(op, "Sub") || !strcmp(op, "Mul") ||
                                !strcmp(op, "Div") || !strcmp(op, "Pow"))) {
        broadcast_axes(g, p, a, r, in_ax);
    } else if (!strcmp(op, "LayerNormalization")) {
        if (a >= p->a.axis)
            return false;
        in_ax[0] = a;
    } else if (!strcmp(op, "Softmax") || !strcmp(op, "LogSoftmax")) {
        if (a == p->a.axis || (p->a.i1 && a > p->a.axis))
            return false;
        in_ax[0] = a;
    } else if (!strcmp(op, "MatMul")) {
        const nn_value *b = &g->values[p->in[1]];
        if (a == r - 1 || x->rank < 2 || b->rank < 2)
            return false;
        if (a == r - 2) {
            in_ax[0] = x->rank - 2;
        } else {
            broadcast_axes(g, p, a, r, in_ax); /* batch axes broadcast alike */
        }
    } else if (!strcmp(op, "Gemm")) {
        if (a != 0)
            return false;
        in_ax[0] = p->a.i0 ? 1 : 0;
        if (p->n_in > 2 && p->in[2] >= 0) {
            const nn_value *c = &g->values[p->in[2]];
            if (c->rank == 2 && c->dims[0] != 1)
                return false;
        }
    } else if (!strcmp(op, "Transpose")) {
        in_ax[0] = (int)p->a.axes[a];
    } else if (!strcmp(op, "Slice")) {
        if (p->a.starts[a] != 0 || p->a.steps[a] != 1 || x->dims[a] != y->dims[a])
            return false;
        in_ax[0] = a;
    } else if (!strcmp(op, "Reshape")) {
        /* the axis survives when the elements before it and the axis itself are the same */
        int64_t before = 1;
        for (int d = 0; d < a; d++)
            before *= y->dims[d];
        int64_t acc = 1;
        int b = 0;
        while (b < x->rank && acc < before)
            acc *= x->dims[b++];
        while (b < x->rank && acc == before && x->dims[b] == 1 && y->dims[a] != 1)
            b++;
        if (b >= x->rank || acc != before || x->dims[b] != y->dims[a])
            return false;
        in_ax[0] = b;
    } else {
        return false;
    }
    for (int k = 0; k < p->n_in; k++)
        if (in_ax[k] >= 0 && (p->in[k] < 0 || g->values[p->in[k]].data))
            return false;
    return true;
}

/* The step producing x, when a Gather of x along axis a may move above it (in_ax: row_axes),
 * else -1: x has that Gather as its only reader and is no graph input or output. */
static int row_producer(const nn_graph *g, int x, int a, int *in_ax)
{
    const nn_value *xv = &g->values[x];
    if (xv->data || xv->is_output || xv->is_input || xv->producer < 0 ||
        readers(g, x, NULL, NULL) != 1)
        return -1;
    const nn_node *p = &g->nodes[xv->producer];
    if (p->dead || p->out[0] != x || !row_axes(g, p, a, in_ax))
        return -1;
    return xv->producer;
}

/* Gather node gi (row_gather) moves above the step producing its input: that step computes
 * the one position, from Gathers of its inputs inserted before it. */
static bool push_row_gather(nn_graph *g, size_t gi)
{
    int x = g->nodes[gi].in[0], idx = g->nodes[gi].in[1], y = g->nodes[gi].out[0];
    int in_ax[NN_ROW_MAX_IN], pp = row_producer(g, x, (int)g->nodes[gi].a.axis, in_ax);
    if (pp < 0)
        return false;
    size_t pi = (size_t)pp;
    const nn_node *p = &g->nodes[pi];
    /* every allocation first, so that a failure leaves the graph as it was */
    int n_new = 0, cut[NN_ROW_MAX_IN] = {-1, -1, -1, -1, -1}, shape = -1;
    for (int k = 0; k < p->n_in; k++)
        n_new += in_ax[k] >= 0;
    if (g->n_values + (size_t)n_new + 2 + g->n_nodes / 2 > g->cap_values)
        return false; /* keep room for the rewrites and layout changes after this one */
    row_parts parts[NN_ROW_MAX_IN] = {0};
    bool ok = reserve_nodes(g, (size_t)n_new);
    p = &g->nodes[pi];
    for (int k = 0; k < p->n_in && ok; k++) {
        char suffix[16];
        snprintf(suffix, sizeof(suffix), "/row%d", k);
        ok &= in_ax[k] < 0 || row_parts_alloc(&parts[k], p->name, suffix);
    }
    size_t n_values = g->n_values;
    if (ok && is_op(p, "Reshape") && p->n_in > 1 && p->in[1] >= 0) {
        const nn_value *yv = &g->values[y];
        int64_t dims[1] = {yv->rank};
        void *data;
        if ((shape = new_tensor(g, p->name, "/row_shape", NN_DTYPE_INT64, 1, dims, &data)) >= 0)
            memcpy(data, yv->dims, (size_t)yv->rank * sizeof(int64_t));
        ok &= shape >= 0;
    }
    for (int k = 0; k < p->n_in && ok; k++)
        if (in_ax[k] >= 0)
            ok &= (cut[k] = new_row_value(g, p->in[k], in_ax[k])) >= 0;
    if (!ok) {
        drop_values(g, n_values);
        for (int k = 0; k < NN_ROW_MAX_IN; k++)
            row_parts_free(&parts[k]);
        return false;
    }
    for (int k = 0; k < g->nodes[pi].n_in; k++) {
        if (cut[k] < 0)
            continue;
        place_row_gather(g, pi, &parts[k], g->nodes[pi].in[k], idx, cut[k], in_ax[k]);
        pi++;
        gi++;
        g->nodes[pi].in[k] = cut[k];
    }
    nn_node *pn = &g->nodes[pi];
    if (shape >= 0)
        pn->in[1] = shape;
    pn->out[0] = y;
    g->values[y].producer = (int)pi;
    g->values[x].producer = -1;
    g->nodes[gi].dead = true;
    return true;
}

/* x's readers, all row Gathers at one position along one axis: the first serves them all. */
static bool merge_row_gathers(nn_graph *g, int x)
{
    int first = -1, count = 0;
    int64_t pos0 = 0;
    for (size_t i = 0; i < g->n_nodes; i++) {
        const nn_node *n = &g->nodes[i];
        if (n->dead)
            continue;
        for (int k = 0; k < n->n_in; k++) {
            if (n->in[k] != x)
                continue;
            int64_t pos;
            if (k != 0 || !row_gather(g, n, &pos) || g->values[n->out[0]].is_output)
                return false;
            if (first < 0) {
                first = (int)i;
                pos0 = pos;
            } else if (pos != pos0 || n->a.axis != g->nodes[first].a.axis) {
                return false;
            }
            count++;
        }
    }
    if (count < 2)
        return false;
    int keep = g->nodes[first].out[0];
    for (size_t i = (size_t)first + 1; i < g->n_nodes; i++) {
        nn_node *n = &g->nodes[i];
        if (n->dead || n->in[0] != x)
            continue;
        n->dead = true;
        int o = n->out[0];
        for (size_t j = i + 1; j < g->n_nodes; j++)
            for (int k = 0; k < g->nodes[j].n_in; k++)
                if (g->nodes[j].in[k] == o)
                    g->nodes[j].in[k] = keep;
    }
    return true;
}

/* A Gather of one position (any index type, scalar or one entry) whose input's step keeps
 * positions apart: a row Gather is put before it, which then moves up. */
static bool seed_row_gather(nn_graph *g, size_t i)
{
    const nn_node *n = &g->nodes[i];
    int64_t pos;
    if (n->dead || !is_op(n, "Gather") || row_gather(g, n, &pos))
        return false;
    int x = n->in[0], a = (int)n->a.axis;
    const nn_value *xv = &g->values[x], *ix = &g->values[n->in[1]];
    int in_ax[NN_ROW_MAX_IN];
    if (xv->data || !ix->data || ix->n_elems != 1 || ix->rank > 1 || xv->dims[a] < 2 ||
        row_producer(g, x, a, in_ax) < 0)
        return false;
    int64_t one = 1, zero_dims[1] = {1};
    pos = ix->dtype == NN_DTYPE_INT64 ? *(const int64_t *)ix->data
                                      : ix->dtype == NN_DTYPE_INT32 ? *(const int32_t *)ix->data
                                                                    : -1 - xv->dims[a];
    if (pos < 0)
        pos += xv->dims[a];
    if (pos < 0 || pos >= xv->dims[a] || g->n_values + 3 + g->n_nodes / 2 > g->cap_values)
        return false;
    size_t n_values = g->n_values;
    void *d_pos, *d_zero;
    int v_pos = new_tensor(g, n->name, "/row_index", NN_DTYPE_INT64, 1, &one, &d_pos);
    int v_zero = v_pos < 0 ? -1
                           : new_tensor(g, n->name, "/row_zero", NN_DTYPE_INT64, ix->rank,
                                        zero_dims, &d_zero);
    int x1 = v_zero < 0 ? -1 : new_row_value(g, x, a);
    row_parts parts = {0};
    if (x1 < 0 || !row_parts_alloc(&parts, n->name, "/row") || !reserve_nodes(g, 1)) {
        drop_values(g, n_values);
        row_parts_free(&parts);
        return false;
    }
    *(int64_t *)d_pos = pos;
    place_row_gather(g, i, &parts, x, v_pos, x1, a);
    g->nodes[i + 1].in[0] = x1;
    g->nodes[i + 1].in[1] = v_zero;
    return true;
}

static size_t restrict_rows(nn_graph *g)
{
    size_t n_done = 0;
    const char *e = getenv("XREG_NN_ROWS");
    if (e && strcmp(e, "0") == 0)
        return 0; /* to compare (docs/nn.md "One row") */
    for (size_t i = 0; i < g->n_nodes; i++)
        if (seed_row_gather(g, i))
            i++; /* past the Gather just made */
    for (bool again = true; again;) {
        again = false;
        for (size_t i = 0; i < g->n_nodes; i++) {
            int64_t pos;
            if (!row_gather(g, &g->nodes[i], &pos))
                continue;
            int x = g->nodes[i].in[0];
            if (readers(g, x, NULL, NULL) > 1 && merge_row_gathers(g, x))
                again = true;
            if (!g->nodes[i].dead && push_row_gather(g, i)) {
                again = true;
                n_done++;
            }
        }
    }
    return n_done;
}

/* ---------------------------------------------------------------- in-place operands */

/* A Transpose that moves only axes of size 1 keeps every element where it was: a view. */
static size_t transpose_views(nn_graph *g)
{
    size_t n_done = 0;
    const nn_op *id = nn_op_find("Identity");
    for (size_t i = 0; i < g->n_nodes; i++) {
        nn_node *n = &g->nodes[i];
        if (n->dead || !is_op(n, "Transpose") || g->values[n->in[0]].data)
            continue;
        const nn_value *x = &g->values[n->in[0]];
        int last = -1;
        bool keeps = true;
        for (int d = 0; d < x->rank && keeps; d++) {
            int64_t a = n->a.axes[d];
            if (x->dims[a] == 1)
                continue;
            keeps = a > last;
            last = (int)a;
        }
        if (keeps) {
            n->op = id;
            n_done++;
        }
    }
    return n_done;
}

/* Row stride (elements) above which reading an operand in place costs more than the copy it
 * saves: ViT-B/16's q/k/v at batch 8 (rows 18,432 floats apart) made oneDNN's products 2.5x
 * slower than on copies; at batch 1 (2,304 apart) they cost the same. */
#define NN_VIEW_MAX_STRIDE 4096

void nn_view_plain(nn_view *v, const nn_value *val)
{
    int64_t s = 1;
    v->on = true;
    v->rank = val->rank;
    v->offset = 0;
    for (int d = val->rank - 1; d >= 0; d--) {
        v->dims[d] = val->dims[d];
        v->strides[d] = s;
        s *= val->dims[d];
    }
}

/* The same elements under another shape without moving them (numpy's no-copy reshape);
 * false when the shape needs a copy. */
static bool view_reshape(nn_view *v, int rank, const int64_t *dims)
{
    int64_t od[NN_MAX_RANK], os[NN_MAX_RANK], nd[NN_MAX_RANK], ns[NN_MAX_RANK];
    int on = 0, nn = 0;
    for (int d = 0; d < v->rank; d++)
        if (v->dims[d] != 1) {
            od[on] = v->dims[d];
            os[on++] = v->strides[d];
        }
    for (int d = 0; d < rank; d++)
        if (dims[d] != 1)
            nd[nn++] = dims[d];
    int oi = 0, oj = 1, ni = 0, nj = 1;
    while (ni < nn && oi < on) {
        int64_t np = nd[ni], op = od[oi];
        while (np != op) {
            if (np < op) {
                if (nj >= nn)
                    return false;
                np *= nd[nj++];
            } else {
                if (oj >= on)
                    return false;
                op *= od[oj++];
            }
        }
        for (int k = oi; k < oj - 1; k++)
            if (os[k] != od[k + 1] * os[k + 1])
                return false;
        ns[nj - 1] = os[oj - 1];
        for (int k = nj - 1; k > ni; k--)
            ns[k - 1] = ns[k] * nd[k];
        ni = nj++;
        oi = oj++;
    }
    if (ni < nn || oi < on)
        return false;
    int64_t inner = 1;
    for (int d = rank - 1, k = nn - 1; d >= 0; d--) {
        v->dims[d] = dims[d];
        if (dims[d] != 1) {
            v->strides[d] = ns[k];
            inner = ns[k] * nd[k];
            k--;
        } else {
            v->strides[d] = inner;
        }
    }
    v->rank = rank;
    return true;
}

/* Apply node n (Transpose, Slice, a view op, or a scalar Div/Mul) to view v. */
static bool view_step(const nn_graph *g, const nn_node *n, nn_view *v, float *scale)
{
    const nn_value *y = &g->values[n->out[0]];
    float c;
    if (is_op(n, "Div") || is_op(n, "Mul")) {
        if (!const_scalar(g, n->in[1], &c) || c == 0.0f || !isfinite(c))
            return false;
        *scale *= is_op(n, "Div") ? 1.0f / c : c;
        return true;
    }
    if (is_op(n, "Transpose")) {
        nn_view t = *v;
        for (int d = 0; d < v->rank; d++) {
            t.dims[d] = v->dims[n->a.axes[d]];
            t.strides[d] = v->strides[n->a.axes[d]];
        }
        *v = t;
        return true;
    }
    if (is_op(n, "Slice")) {
        for (int d = 0; d < v->rank; d++) {
            if (n->a.steps[d] < 1)
                return false;
            v->offset += n->a.starts[d] * v->strides[d];
            v->strides[d] *= n->a.steps[d];
            v->dims[d] = y->dims[d];
        }
        return true;
    }
    if (n->op->view)
        return view_reshape(v, y->rank, y->dims);
    return false;
}

/* The node producing v if it may be read through (one reader, not an output), else NULL. */
static nn_node *chain_link(nn_graph *g, int v)
{
    const nn_value *val = &g->values[v];
    if (val->producer < 0 || val->is_output || val->data || readers(g, v, NULL, NULL) != 1)
        return NULL;
    nn_node *p = &g->nodes[val->producer];
    if (p->dead || p->n_out != 1 || p->in[0] < 0 || g->values[p->in[0]].dtype != NN_DTYPE_FLOAT)
        return NULL;
    float c;
    if (is_op(p, "Transpose") || is_op(p, "Slice") || p->op->view)
        return p;
    if ((is_op(p, "Div") || is_op(p, "Mul")) && const_scalar(g, p->in[1], &c))
        return p;
    return NULL;
}

/* Blocked (oneDNN-chosen) layouts come only from these steps' outputs; a view needs plain. */
static bool plain_producer(const nn_graph *g, int v)
{
    int p = g->values[v].producer;
    if (p < 0)
        return !g->values[v].data;
    const nn_node *n = &g->nodes[p];
    return is_op(n, "MatMul") || is_op(n, "Gemm") || is_op(n, "Transpose") ||
           is_op(n, "Slice") || is_op(n, "Softmax") || n->op->view;
}

static bool view_fits(const nn_view *v)
{
    int r = v->rank;
    if (r < 2 || (v->strides[r - 1] != 1 && v->strides[r - 2] != 1))
        return false;
    return v->strides[r - 1] <= NN_VIEW_MAX_STRIDE && v->strides[r - 2] <= NN_VIEW_MAX_STRIDE;
}

/* MatMul operand k: read it in place through the longest chain of Slice/Reshape/Transpose
 * (and scalar Div/Mul, folded into the product's scale) that strides can express. */
static size_t absorb_operand(nn_graph *g, nn_node *n, int k)
{
    nn_node *chain[16];
    int depth = 0, v = n->in[k];
    nn_node *p;
    while (depth < 16 && (p = chain_link(g, v)) != NULL) {
        chain[depth++] = p;
        v = p->in[0];
    }
    for (; depth > 0; depth--) {
        int base = chain[depth - 1]->in[0];
        if (!plain_producer(g, base))
            continue;
        nn_view view;
        float scale = 1.0f;
        nn_view_plain(&view, &g->values[base]);
        bool ok = true;
        for (int i = depth - 1; i >= 0 && ok; i--)
            ok = view_step(g, chain[i], &view, &scale);
        if (!ok || !view_fits(&view))
            continue;
        n->in_view[k] = view;
        n->in[k] = base;
        if (scale != 1.0f)
            n->out_scale = (n->out_scale != 0.0f ? n->out_scale : 1.0f) * scale;
        for (int i = 0; i < depth; i++)
            chain[i]->dead = true;
        return (size_t)depth;
    }
    return 0;
}

/*
 * Attention's batched products (both operands computed at run time) read q, k and v where the
 * projection wrote them and write their result where the following Transpose would have put
 * it: the exporter's Slice/Reshape/Transpose copies (6% of ViT-B/16 at batch 1) disappear.
 */
static size_t absorb_views(nn_graph *g)
{
    size_t n_done = 0;
    for (size_t i = 0; i < g->n_nodes; i++) {
        nn_node *n = &g->nodes[i];
        if (n->dead || !is_op(n, "MatMul") || n->n_post || n->bias_in >= 0)
            continue;
        const nn_value *a = &g->values[n->in[0]], *b = &g->values[n->in[1]];
        const nn_value *y = &g->values[n->out[0]];
        if (a->data || b->data || a->rank < 3 || a->rank != b->rank || a->rank != y->rank)
            continue;
        n_done += absorb_operand(g, n, 0) + absorb_operand(g, n, 1);
        /* result: into the buffer of a Transpose that is its only reader */
        int r1 = -1;
        if (y->is_output || readers(g, n->out[0], &r1, NULL) != 1)
            continue;
        nn_node *t = &g->nodes[r1];
        if (!is_op(t, "Transpose") || t->op != nn_op_find("Transpose"))
            continue;
        const nn_value *ty = &g->values[t->out[0]];
        nn_view tv, yv;
        nn_view_plain(&tv, ty);
        yv = tv;
        for (int d = 0; d < ty->rank; d++) {
            yv.dims[t->a.axes[d]] = tv.dims[d];
            yv.strides[t->a.axes[d]] = tv.strides[d];
        }
        if (yv.strides[yv.rank - 1] != 1 || !view_fits(&yv))
            continue;
        n->out_view = yv;
        t->dead = true;
        take_output(g, n, t);
        n_done++;
    }
    return n_done;
}

/* ---------------------------------------------------------------- squeeze-excitation */

/* Conv 1x1, stride 1, no padding, one group, constant weights [co, ci, 1, 1] (and bias), whose
 * only post-op is alg, reading v; NULL otherwise. */
static nn_node *se_conv(nn_graph *g, int v, dnnl_alg_kind_t alg, int64_t ci, int64_t *co)
{
    nn_node *c = sole_reader(g, v, "Conv");
    if (!c || c->in[0] != v || c->n_post != 1 || c->post[0].kind != NN_POST_ELTWISE ||
        c->post[0].alg != alg || c->sum_in >= 0 || c->a.group != 1 || c->a.n_sp != 2)
        return NULL;
    if (alg == dnnl_eltwise_swish && c->post[0].alpha != 1.0f)
        return NULL;
    for (int i = 0; i < 2; i++)
        if (c->a.kernel[i] != 1 || c->a.strides[i] != 1 || c->a.pads_l[i] != 0 ||
            c->a.pads_r[i] != 0 || c->a.dil[i] != 1)
            return NULL;
    const nn_value *w = &g->values[c->in[1]];
    if (!w->data || w->dtype != NN_DTYPE_FLOAT || w->rank != 4 || w->dims[1] != ci ||
        w->dims[2] != 1 || w->dims[3] != 1)
        return NULL;
    if (c->n_in > 2 && c->in[2] >= 0 &&
        (!g->values[c->in[2]].data || g->values[c->in[2]].n_elems != w->dims[0]))
        return NULL;
    *co = w->dims[0];
    return c;
}

/*
 * EfficientNet's squeeze-excitation, x * Sigmoid(Conv(SiLU(Conv(GlobalAveragePool(x))))),
 * becomes one step: at batch 1 its four primitives per block spend more time starting than
 * computing (about 80 us per block for kilobytes of work).
 */
static size_t fuse_squeeze_excitation(nn_graph *g)
{
    size_t n_done = 0;
    for (size_t i = 0; i < g->n_nodes; i++) {
        nn_node *gp = &g->nodes[i];
        if (gp->dead || !is_op(gp, "GlobalAveragePool"))
            continue;
        int x = gp->in[0];
        const nn_value *xv = &g->values[x];
        int64_t cr, c2;
        if (xv->data || xv->dtype != NN_DTYPE_FLOAT || xv->rank != 4)
            continue;
        nn_node *k1 = se_conv(g, gp->out[0], dnnl_eltwise_swish, xv->dims[1], &cr);
        nn_node *k2 = k1 ? se_conv(g, k1->out[0], dnnl_eltwise_logistic, cr, &c2) : NULL;
        nn_node *m = k2 && c2 == xv->dims[1] ? sole_reader(g, k2->out[0], "Mul") : NULL;
        if (!m || other_input(m, k2->out[0]) != x || m->n_post || m->sum_in >= 0 ||
            g->values[gp->out[0]].is_output || g->values[k1->out[0]].is_output)
            continue;
        int *in = realloc(m->in, 5 * sizeof(int));
        char *name = strdup("SqueezeExcitation");
        if (!in || !name) {
            if (in)
                m->in = in;
            free(name);
            return n_done;
        }
        m->in = in;
        m->in[0] = x;
        m->in[1] = k1->in[1];
        m->in[2] = k1->n_in > 2 ? k1->in[2] : -1;
        m->in[3] = k2->in[1];
        m->in[4] = k2->n_in > 2 ? k2->in[2] : -1;
        m->n_in = 5;
        m->op = &nn_op_squeeze_excitation;
        free(m->op_type);
        m->op_type = name;
        gp->dead = k1->dead = k2->dead = true;
        n_done += 3;
    }
    return n_done;
}

size_t nn_graph_optimize(nn_graph *g)
{
    size_t n_done = fold_batchnorm(g) + map_layernorm(g);
    n_done += restrict_rows(g);
    n_done += transpose_views(g);
    for (size_t i = 0; i < g->n_nodes; i++) {
        nn_node *n = &g->nodes[i];
        if (n->dead || (!is_op(n, "Conv") && !is_op(n, "MatMul") && !is_op(n, "Gemm")))
            continue;
        n_done += fuse_after(g, n);
    }
    return n_done + absorb_views(g) + fuse_squeeze_excitation(g);
}
