/*
 * oneDNN steps: Conv (convolution), MatMul and Gemm (matmul), with fused post-ops. Constant
 * weights are reordered once, here, into the layout the primitive chose (format_tag_any);
 * activations stay in plain row-major layouts so every other step can read them.
 * Every primitive uses a user scratchpad so that concurrent sessions never share one.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "nn-internal.h"
#include "nn-simd.h"

#define IN(i) (&g->values[n->in[i]])
#define OUTV(i) (&g->values[n->out[i]])
#define HAS(i) ((i) < n->n_in && n->in[i] >= 0)

static const char *status_name(dnnl_status_t st)
{
    switch (st) {
    case dnnl_success: return "success";
    case dnnl_out_of_memory: return "out of memory";
    case dnnl_invalid_arguments: return "invalid arguments";
    case dnnl_unimplemented: return "no implementation for these shapes";
    case dnnl_iterator_ends: return "iterator ends";
    case dnnl_runtime_error: return "runtime error";
    case dnnl_not_required: return "not required";
    default: return "unrecognized status";
    }
}

xr_code nn_dnnl_check(dnnl_status_t st, const nn_node *n, const char *what, xr_error *err)
{
    if (st == dnnl_success)
        return XR_OK;
    xr_code code = st == dnnl_out_of_memory ? XR_E_NOMEM
                   : st == dnnl_unimplemented ? XR_E_UNSUPPORTED
                                              : XR_E_INTERNAL;
    return xr_error_set(err, code, "node \"%s\" (%s): oneDNN %s: %s (%d)", n ? n->name : "-",
                        n ? n->op_type : "-", what, status_name(st), (int)st);
}

#define CK(call, what)                                                                         \
    do {                                                                                       \
        if ((rc = nn_dnnl_check((call), n, (what), err)))                                      \
            goto out;                                                                          \
    } while (0)

static dnnl_format_tag_t plain_tag(int rank)
{
    static const dnnl_format_tag_t tags[] = {dnnl_a, dnnl_a, dnnl_ab, dnnl_abc, dnnl_abcd,
                                             dnnl_abcde, dnnl_abcdef};
    return rank >= 1 && rank <= 6 ? tags[rank] : dnnl_format_tag_undef;
}

static xr_code plain_md(const nn_node *n, dnnl_memory_desc_t *md, int rank, const int64_t *dims,
                        xr_error *err)
{
    dnnl_dims_t d;
    xr_code rc = XR_OK;
    if (rank < 1 || rank > 6)
        return xr_error_set(err, XR_E_UNSUPPORTED, "node \"%s\" (%s): rank %d not supported",
                            n->name, n->op_type, rank);
    for (int i = 0; i < rank; i++)
        d[i] = dims[i];
    CK(dnnl_memory_desc_init_by_tag(md, rank, d, dnnl_f32, plain_tag(rank)), "memory desc");
out:
    return rc;
}

static void add_arg(nn_node *n, int arg, int value, const dnnl_memory_desc_t *md,
                    dnnl_memory_t mem)
{
    nn_dnnl_arg *a = &n->args[n->n_args++];
    a->arg = arg;
    a->value = value;
    a->md = *md;
    a->mem = mem;
}

static xr_code make_attr(nn_node *n, dnnl_primitive_attr_t *ret, xr_error *err)
{
    xr_code rc = XR_OK;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    int n_post = n->n_post - (n->silu_after ? 1 : 0); /* that one runs after the primitive */
    CK(dnnl_primitive_attr_create(&attr), "attr");
    CK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad");
    if (n->out_scale != 0.0f)
        CK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &n->out_scale), "output scale");
    if (n_post) {
        CK(dnnl_post_ops_create(&po), "post-ops");
        for (int i = 0; i < n_post; i++) {
            const nn_post *p = &n->post[i];
            if (p->kind == NN_POST_SUM)
                CK(dnnl_post_ops_append_sum(po, 1.0f), "sum post-op");
            else
                CK(dnnl_post_ops_append_eltwise(po, 1.0f, p->alg, p->alpha, p->beta),
                   "eltwise post-op");
        }
        CK(dnnl_primitive_attr_set_post_ops(attr, po), "set post-ops");
    }
    *ret = attr;
    attr = NULL;
out:
    if (po)
        dnnl_post_ops_destroy(po);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

/* Reorder constant data (plain layout user_md at src) into a new memory of layout md. */
static xr_code reorder_const(nn_graph *g, nn_node *n, const dnnl_memory_desc_t *user_md,
                             void *src, const dnnl_memory_desc_t *md, dnnl_memory_t *ret,
                             xr_error *err)
{
    xr_code rc = XR_OK;
    dnnl_memory_t um = NULL, m = NULL;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t r = NULL;
    CK(dnnl_memory_create(&um, user_md, g->engine, src), "weights memory");
    CK(dnnl_memory_create(&m, md, g->engine, DNNL_MEMORY_ALLOCATE), "weights memory");
    CK(dnnl_reorder_primitive_desc_create(&rpd, user_md, g->engine, md, g->engine, NULL),
       "weights reorder");
    CK(dnnl_primitive_create(&r, rpd), "weights reorder");
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, um}, {DNNL_ARG_TO, m}};
    CK(dnnl_primitive_execute(r, g->stream, 2, args), "weights reorder");
    CK(dnnl_stream_wait(g->stream), "weights reorder");
    *ret = m;
    m = NULL;
out:
    if (r)
        dnnl_primitive_destroy(r);
    if (rpd)
        dnnl_primitive_desc_destroy(rpd);
    if (um)
        dnnl_memory_destroy(um);
    if (m)
        dnnl_memory_destroy(m);
    return rc;
}

/* The donor plan's reordered copy of the same weights in the same layout, or NULL. The plans
 * are built from one file, so the same node index, node name and weight tensor name and
 * shape designate the same data. */
static dnnl_memory_t donor_weights(const nn_graph *g, const nn_node *n, int wv,
                                   const dnnl_memory_desc_t *wmd)
{
    const nn_graph *d = g->donor;
    size_t i = (size_t)(n - g->nodes);
    if (!d || i >= d->n_nodes || (size_t)wv >= d->n_values)
        return NULL;
    const nn_node *dn = &d->nodes[i];
    const nn_value *a = &g->values[wv], *b = &d->values[wv];
    if (dn->dead || !dn->prim || strcmp(dn->name, n->name) || strcmp(dn->op_type, n->op_type) ||
        dn->n_in < 2 || dn->in[1] != wv || strcmp(a->name, b->name) || a->n_bytes != b->n_bytes ||
        a->rank != b->rank || memcmp(a->dims, b->dims, sizeof(a->dims)))
        return NULL;
    for (int k = 0; k < dn->n_args; k++)
        if (dn->args[k].arg == DNNL_ARG_WEIGHTS && (dn->args[k].value == -1 ||
                                                     dn->args[k].value == -3) &&
            dnnl_memory_desc_equal(&dn->args[k].md, wmd))
            return dn->args[k].mem;
    return NULL;
}

/* Primitive + scratchpad from pd (owned, destroyed here); binds weights (value wv, reordered
 * once when constant, from wdata when given: a copy the caller derived from wv's data). */
static xr_code finish_pd(nn_graph *g, nn_node *n, dnnl_primitive_desc_t pd, int wv,
                         const dnnl_memory_desc_t *w_user_md, void *wdata, xr_error *err)
{
    xr_code rc = XR_OK;
    if (wv >= 0) {
        const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        void *src = wdata ? wdata : g->values[wv].data;
        dnnl_memory_t dm = src ? donor_weights(g, n, wv, wmd) : NULL;
        if (dm) {
            add_arg(n, DNNL_ARG_WEIGHTS, -3, wmd, dm);
        } else if (src) {
            dnnl_memory_t wm = NULL;
            if ((rc = reorder_const(g, n, w_user_md, src, wmd, &wm, err)))
                goto out;
            add_arg(n, DNNL_ARG_WEIGHTS, -1, wmd, wm);
        } else {
            add_arg(n, DNNL_ARG_WEIGHTS, wv, wmd, NULL);
        }
    }
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    n->scratch_bytes = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if (n->scratch_bytes)
        add_arg(n, DNNL_ARG_SCRATCHPAD, -2, smd, NULL);
    CK(dnnl_primitive_create(&n->prim, pd), "primitive");
out:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    return rc;
}

static xr_code finish(nn_graph *g, nn_node *n, const void *op_desc, int wv,
                      const dnnl_memory_desc_t *w_user_md, void *wdata, xr_error *err)
{
    xr_code rc = XR_OK;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    if ((rc = make_attr(n, &attr, err)))
        return rc;
    CK(dnnl_primitive_desc_create(&pd, op_desc, attr, g->engine, NULL), "primitive descriptor");
    rc = finish_pd(g, n, pd, wv, w_user_md, wdata, err);
    pd = NULL;
out:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

static bool md_is_plain(const nn_node *n, const dnnl_memory_desc_t *md, const nn_value *v)
{
    dnnl_memory_desc_t p;
    if (plain_md(n, &p, v->rank, v->dims, NULL))
        return false;
    return dnnl_memory_desc_equal(&p, md) != 0;
}

/* Layout of value v as it is held. */
static xr_code value_md(const nn_node *n, const nn_value *v, dnnl_memory_desc_t *md, xr_error *err)
{
    if (v->blocked) {
        *md = v->md;
        return XR_OK;
    }
    return plain_md(n, md, v->rank, v->dims, err);
}

/* Replace the value in *slot by a copy laid out as want, made by a reorder before n runs. */
static xr_code add_pre(nn_graph *g, nn_node *n, int *slot, const dnnl_memory_desc_t *want,
                       xr_error *err)
{
    xr_code rc = XR_OK;
    if (n->n_pre >= NN_MAX_PRE)
        return xr_error_set(err, XR_E_INTERNAL, "node \"%s\": too many layout changes", n->name);
    if (g->n_values >= g->cap_values)
        return xr_error_set(err, XR_E_LIMIT, "too many tensors after rewrites");
    int src = *slot, dst = (int)g->n_values;
    nn_value *sv = &g->values[src], *dv = &g->values[dst];
    memset(dv, 0, sizeof(*dv));
    size_t l = strlen(sv->name) + 16;
    if (!(dv->name = malloc(l)))
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    snprintf(dv->name, l, "%s/reorder%d", sv->name, n->n_pre);
    g->n_values++;
    if ((rc = nn_value_shape(dv, sv->dtype, sv->rank, sv->dims, err)))
        return rc;
    dv->producer = (int)(n - g->nodes);
    dv->view_of = -1;
    dv->md = *want;
    dv->blocked = !md_is_plain(n, want, dv);
    dv->n_bytes = dnnl_memory_desc_get_size(want);
    nn_pre *p = &n->pre[n->n_pre];
    dnnl_primitive_desc_t rpd = NULL;
    if ((rc = value_md(n, sv, &p->smd, err)))
        return rc;
    p->dmd = *want;
    CK(dnnl_reorder_primitive_desc_create(&rpd, &p->smd, g->engine, &p->dmd, g->engine, NULL),
       "layout reorder");
    CK(dnnl_primitive_create(&p->prim, rpd), "layout reorder");
    p->src = src;
    p->dst = dst;
    n->n_pre++;
    *slot = dst;
out:
    if (rpd)
        dnnl_primitive_desc_destroy(rpd);
    return rc;
}

xr_code nn_layout_fixup(nn_graph *g, xr_error *err)
{
    xr_code rc = XR_OK;
    for (size_t i = 0; i < g->n_nodes; i++) {
        nn_node *n = &g->nodes[i];
        if (n->dead)
            continue;
        /* these oneDNN steps read any layout; MatMul/Gemm and reference kernels want plain */
        bool any = (n->prim && (strcmp(n->op_type, "Conv") == 0 || strcmp(n->op_type, "Add") == 0 ||
                                strcmp(n->op_type, "Mul") == 0 || strstr(n->op_type, "Pool"))) ||
                   n->op == &nn_op_squeeze_excitation || n->wino; /* read nChw8c themselves */
        for (int k = any ? n->n_in : 0; k < n->n_in; k++) {
            if (n->in[k] < 0 || !g->values[n->in[k]].blocked)
                continue;
            dnnl_memory_desc_t md;
            if ((rc = plain_md(n, &md, g->values[n->in[k]].rank, g->values[n->in[k]].dims, err)) ||
                (rc = add_pre(g, n, &n->in[k], &md, err)))
                return rc;
        }
    }
    return rc;
}

/* ---------------------------------------------------------------- SiLU pass */

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static void silu_avx2(float *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(p + i, silu8_avx2(_mm256_loadu_ps(p + i)));
    for (; i < n; i++)
        p[i] = p[i] / (1.0f + expf(-p[i]));
}

/* p[i] = 1 / (1 + exp(-p[i])) */
__attribute__((target("avx2,fma"))) static void sigmoid_avx2(float *p, size_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(p + i, _mm256_div_ps(one, _mm256_add_ps(one, exp_neg_avx2(
                                                                    _mm256_loadu_ps(p + i)))));
    for (; i < n; i++)
        p[i] = 1.0f / (1.0f + expf(-p[i]));
}

/* nChw8c: per 8-channel block, the mean over hw pixels, and the scaling by s */
__attribute__((target("avx2,fma"))) static void pool8_avx2(const float *p, int64_t hw, float inv,
                                                           float *mean)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= hw; i += 2) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i * 8));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i * 8 + 8));
    }
    if (i < hw)
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i * 8));
    _mm256_storeu_ps(mean, _mm256_mul_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(inv)));
}

__attribute__((target("avx2,fma"))) static void scale8_avx2(const float *p, int64_t hw,
                                                            const float *s, float *q)
{
    __m256 sv = _mm256_loadu_ps(s);
    for (int64_t i = 0; i < hw; i++)
        _mm256_storeu_ps(q + i * 8, _mm256_mul_ps(_mm256_loadu_ps(p + i * 8), sv));
}
#endif

bool nn_avx2_fma(void)
{
#if defined(__x86_64__)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

/* SiLU in place over n floats, split over the session's threads in 64-byte-aligned chunks. */
static void silu_pass(float *p, size_t n)
{
#if defined(__x86_64__)
#pragma omp parallel num_threads(nn_threads())
    {
        size_t t = (size_t)omp_get_thread_num(), k = (size_t)omp_get_num_threads();
        size_t chunk = ((n + k - 1) / k + 15) & ~(size_t)15;
        size_t s = t * chunk, e = s + chunk < n ? s + chunk : n;
        if (s < n)
            silu_avx2(p + s, e - s);
    }
#else
    (void)p;
    (void)n;
#endif
}

/* ---------------------------------------------------------------- squeeze-excitation */

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static float hsum_avx2(__m256 v)
{
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b,
                                                          int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float r = hsum_avx2(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        r += a[i] * b[i];
    return r;
}
#endif

static float dot(const float *a, const float *b, int64_t n)
{
#if defined(__x86_64__)
    if (nn_avx2_fma())
        return dot_avx2(a, b, n);
#endif
    float r = 0.0f;
    for (int64_t i = 0; i < n; i++)
        r += a[i] * b[i];
    return r;
}

static void set_layout(const nn_node *n, nn_value *y, const dnnl_memory_desc_t *md);

/* SiLU (silu) or Sigmoid in place over n floats. */
static void act(float *p, int64_t n, bool silu)
{
#if defined(__x86_64__)
    if (nn_avx2_fma()) {
        if (silu)
            silu_avx2(p, (size_t)n);
        else
            sigmoid_avx2(p, (size_t)n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        p[i] = silu ? p[i] / (1.0f + expf(-p[i])) : 1.0f / (1.0f + expf(-p[i]));
}

/* Layout of x (and y): plain NCHW, or oneDNN's nChw8c (channels padded to 8 with zeros);
 * any other blocked layout is reordered to plain first. */
static xr_code se_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    const nn_value *x = IN(0);
    int64_t cp = (x->dims[1] + 7) / 8 * 8;
    n->a.i1 = 0;
    /* means and scales per sample (channels padded to 8), the hidden layer */
    n->scratch_bytes = (size_t)(x->dims[0] * (2 * cp + IN(1)->dims[0])) * sizeof(float);
    if (x->blocked) {
        dnnl_memory_desc_t b8;
        dnnl_dims_t d = {x->dims[0], x->dims[1], x->dims[2], x->dims[3]};
        CK(dnnl_memory_desc_init_by_tag(&b8, 4, d, dnnl_f32, dnnl_aBcd8b), "squeeze-excitation");
        if (dnnl_memory_desc_equal(&b8, &x->md)) {
            n->a.i1 = 8;
            set_layout(n, OUTV(0), &x->md);
            return XR_OK;
        }
        dnnl_memory_desc_t p;
        if ((rc = plain_md(n, &p, 4, x->dims, err)) || (rc = add_pre(g, n, &n->in[0], &p, err)))
            return rc;
    }
out:
    return rc;
}

/* Rows of the second product per job: sigmoid_avx2 runs on whole vectors. */
#define SE_ROWS 16

/* y = x * sigmoid(W2 silu(W1 mean(x) + b1) + b2), per sample, over channels. The two sweeps
 * over x (pooling, scaling) and the two products run on the session's threads in one region:
 * at EfficientNet's last stage (1152 channels, 7x7) the products read 442 KB of weights for
 * 56 KB of x, so they are split too. */
static xr_code se_run(const nn_graph *g, const nn_node *n, nn_exec *xe, xr_error *err)
{
    (void)err;
    const nn_value *xv = IN(0);
    int64_t nb = xv->dims[0], c = xv->dims[1], hw = xv->dims[2] * xv->dims[3];
    int64_t cr = IN(1)->dims[0], blk = n->a.i1 ? n->a.i1 : 1, cp = (c + blk - 1) / blk * blk;
    int64_t nblk = cp / blk, total = nb * nblk, row_jobs = (c + SE_ROWS - 1) / SE_ROWS;
    const float *x = nn_ptr(g, xe, n->in[0]), *w1 = nn_ptr(g, xe, n->in[1]),
                *w2 = nn_ptr(g, xe, n->in[3]);
    const float *b1 = HAS(2) ? nn_ptr(g, xe, n->in[2]) : NULL;
    const float *b2 = HAS(4) ? nn_ptr(g, xe, n->in[4]) : NULL;
    float *y = nn_ptr(g, xe, n->out[0]);
    float *mean = xe->scratch, *sc = mean + nb * cp, *hid = sc + nb * cp; /* se_prepare */
    float inv = 1.0f / (float)hw;
    bool v8 = blk == 8 && nn_avx2_fma();
    /* below NN_PARALLEL_MIN_ELEMS of activations and weights read, a second thread costs more */
    bool par = nb * (cp * hw + 2 * c * cr) >= NN_PARALLEL_MIN_ELEMS;
#pragma omp parallel if (par) num_threads(nn_threads())
    {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < total; t++) {
            const float *p = x + t * blk * hw;
            float *m = mean + t * blk;
#if defined(__x86_64__)
            if (v8) {
                pool8_avx2(p, hw, inv, m);
                continue;
            }
#endif
            float acc[8] = {0};
            for (int64_t i = 0; i < hw; i++)
                for (int64_t j = 0; j < blk; j++)
                    acc[j] += p[i * blk + j];
            for (int64_t j = 0; j < blk; j++)
                m[j] = acc[j] * inv;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nb * cr; t++) {
            int64_t s = t / cr, o = t % cr;
            hid[t] = dot(w1 + o * c, mean + s * cp, c) + (b1 ? b1[o] : 0.0f);
        }
#pragma omp single
        act(hid, nb * cr, true);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nb * row_jobs; t++) {
            int64_t s = t / row_jobs, o0 = t % row_jobs * SE_ROWS;
            int64_t o1 = o0 + SE_ROWS < c ? o0 + SE_ROWS : c;
            float *z = sc + s * cp;
            for (int64_t o = o0; o < o1; o++)
                z[o] = dot(w2 + o * cr, hid + s * cr, cr) + (b2 ? b2[o] : 0.0f);
            act(z + o0, o1 - o0, false);
            if (o1 == c)
                for (int64_t o = c; o < cp; o++)
                    z[o] = 0.0f; /* padding lanes stay 0 */
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < total; t++) {
            const float *p = x + t * blk * hw, *z = sc + t * blk;
            float *q = y + t * blk * hw;
#if defined(__x86_64__)
            if (v8) {
                scale8_avx2(p, hw, z, q);
                continue;
            }
#endif
            for (int64_t i = 0; i < hw; i++)
                for (int64_t j = 0; j < blk; j++)
                    q[i * blk + j] = p[i * blk + j] * z[j];
        }
    }
    return XR_OK;
}

const nn_op nn_op_squeeze_excitation = {"SqueezeExcitation", 5, 5, 1, 1, NULL, se_run,
                                        se_prepare, false};

/* ---------------------------------------------------------------- Winograd convolutions */

static xr_code wino_step(const nn_graph *g, const nn_node *n, nn_exec *xe, xr_error *err)
{
    (void)err;
    const nn_value *x = IN(0);
    nn_wino_run(n->wino, nn_ptr(g, xe, n->in[0]), HAS(2) ? nn_ptr(g, xe, n->in[2]) : NULL,
                n->n_post > 0, nn_ptr(g, xe, n->out[0]), x->dims[0], x->dims[2], x->dims[3],
                xe->scratch, nn_threads());
    return XR_OK;
}

/* A Conv that nn_conv_prepare hands to nn-wino.c: no oneDNN primitive, nChw8c in and out. */
static const nn_op nn_op_conv_winograd = {"Conv", 2, 3, 1, 1, NULL, wino_step, NULL, false};

/* Input reordered to nChw8c if it is held otherwise; weights transformed once per model (the
 * batch plan borrows the batch-1 plan's). */
static xr_code wino_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    const nn_value *x = IN(0), *w = IN(1), *y = OUTV(0);
    dnnl_memory_desc_t xmd, xb, yb;
    dnnl_dims_t xd = {x->dims[0], x->dims[1], x->dims[2], x->dims[3]},
                yd = {y->dims[0], y->dims[1], y->dims[2], y->dims[3]};
    CK(dnnl_memory_desc_init_by_tag(&xb, 4, xd, dnnl_f32, dnnl_aBcd8b), "Winograd source");
    CK(dnnl_memory_desc_init_by_tag(&yb, 4, yd, dnnl_f32, dnnl_aBcd8b), "Winograd result");
    if ((rc = value_md(n, x, &xmd, err)) ||
        (!dnnl_memory_desc_equal(&xmd, &xb) && (rc = add_pre(g, n, &n->in[0], &xb, err))))
        return rc;
    set_layout(n, OUTV(0), &yb);
    size_t i = (size_t)(n - g->nodes);
    const nn_node *dn = g->donor && i < g->donor->n_nodes ? &g->donor->nodes[i] : NULL;
    int m = nn_wino_tile(x->dims[2], x->dims[3], x->dims[1], w->dims[0]);
    if (dn && dn->wino && strcmp(dn->name, n->name) == 0 && dn->in[1] == n->in[1] &&
        nn_wino_m(dn->wino) == m)
        n->wino = nn_wino_borrow(dn->wino);
    else
        n->wino = nn_wino_new(w->data, w->dims[0], w->dims[1], m);
    if (!n->wino)
        return xr_error_set(err, XR_E_NOMEM, "out of memory transforming the weights of \"%s\"",
                            n->name);
    n->scratch_bytes = nn_wino_scratch_bytes(n->wino, x->dims[0], x->dims[2], x->dims[3]);
    n->op = &nn_op_conv_winograd;
out:
    return rc;
}

xr_code nn_conv_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc;
    if (nn_wino_eligible(g, n))
        return wino_prepare(g, n, err);
    const nn_value *x = IN(0), *w = IN(1), *y = OUTV(0);
    dnnl_memory_desc_t smd, dmd, wmd, wuser, bmd, xmd;
    dnnl_primitive_attr_t attr = NULL; /* before the first CK: its "goto out" frees them */
    dnnl_primitive_desc_t pd = NULL;
    if ((rc = value_md(n, x, &xmd, err)))
        return rc;
    /* weights: [G, OC/G, IC/G, k...] when grouped */
    int64_t wd[NN_MAX_RANK];
    int wr = w->rank;
    if (n->a.group > 1) {
        wd[0] = n->a.group;
        wd[1] = w->dims[0] / n->a.group;
        for (int i = 1; i < w->rank; i++)
            wd[i + 1] = w->dims[i];
        wr++;
    } else {
        memcpy(wd, w->dims, sizeof(wd));
    }
    if ((rc = plain_md(n, &wuser, wr, wd, err)))
        return rc;
    dnnl_dims_t d;
    for (int i = 0; i < wr; i++)
        d[i] = wd[i];
    if (w->data)
        CK(dnnl_memory_desc_init_by_tag(&wmd, wr, d, dnnl_f32, dnnl_format_tag_any), "weights");
    else
        wmd = wuser;
    if (HAS(2) && (rc = plain_md(n, &bmd, 1, IN(2)->dims, err)))
        return rc;
    dnnl_dims_t st, dl, pl, pr;
    for (int i = 0; i < n->a.n_sp; i++) {
        st[i] = n->a.strides[i];
        dl[i] = n->a.dil[i] - 1;
        pl[i] = n->a.pads_l[i];
        pr[i] = n->a.pads_r[i];
    }
    /* Let oneDNN choose activation layouts (blocked for AVX2) unless the output must be plain:
     * a graph output, or a residual held plain. Try that first; fall back to plain. */
    dnnl_dims_t xd, yd;
    for (int i = 0; i < x->rank; i++) {
        xd[i] = x->dims[i];
        yd[i] = y->dims[i];
    }
    bool plain_out = y->is_output || !w->data ||
                     (n->sum_in >= 0 && !g->values[n->sum_in].blocked);
    dnnl_convolution_desc_t cd;
    const nn_post *last = n->n_post ? &n->post[n->n_post - 1] : NULL;
    n->silu_after = last && last->kind == NN_POST_ELTWISE && last->alg == dnnl_eltwise_swish &&
                    last->alpha == 1.0f && y->dtype == NN_DTYPE_FLOAT &&
                    y->n_elems >= NN_SILU_PASS_MIN_ELEMS && nn_avx2_fma();
    if ((rc = make_attr(n, &attr, err)))
        return rc;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool any = attempt == 0 && w->data;
        CK(dnnl_memory_desc_init_by_tag(&smd, x->rank, xd, dnnl_f32,
                                        any ? dnnl_format_tag_any : plain_tag(x->rank)), "src");
        if (any && !plain_out && n->sum_in >= 0)
            dmd = g->values[n->sum_in].md;
        else
            CK(dnnl_memory_desc_init_by_tag(&dmd, y->rank, yd, dnnl_f32,
                                            any && !plain_out ? dnnl_format_tag_any
                                                              : plain_tag(y->rank)), "dst");
        CK(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference,
                                                      dnnl_convolution_direct, &smd, &wmd,
                                                      HAS(2) ? &bmd : NULL, &dmd, st, dl, pl, pr),
           "convolution desc");
        dnnl_status_t s2 = dnnl_primitive_desc_create(&pd, &cd, attr, g->engine, NULL);
        if (s2 == dnnl_success)
            break;
        pd = NULL;
        if (attempt == 1)
            CK(s2, "primitive descriptor");
    }
    smd = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    dmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    if (!dnnl_memory_desc_equal(&smd, &xmd) && (rc = add_pre(g, n, &n->in[0], &smd, err)))
        goto out;
    if (n->sum_in >= 0) {
        dnnl_memory_desc_t rmd;
        if ((rc = value_md(n, &g->values[n->sum_in], &rmd, err)))
            goto out;
        if (!dnnl_memory_desc_equal(&rmd, &dmd) && (rc = add_pre(g, n, &n->sum_in, &dmd, err)))
            goto out;
    }
    {
        nn_value *yv = &g->values[n->out[0]];
        yv->md = dmd;
        yv->blocked = !md_is_plain(n, &dmd, yv);
        if (yv->blocked)
            yv->n_bytes = dnnl_memory_desc_get_size(&dmd);
    }
    add_arg(n, DNNL_ARG_SRC, n->in[0], &smd, NULL);
    add_arg(n, DNNL_ARG_DST, n->out[0], &dmd, NULL);
    if (HAS(2))
        add_arg(n, DNNL_ARG_BIAS, n->in[2], &bmd, NULL);
    rc = finish_pd(g, n, pd, n->in[1], &wuser, NULL, err);
    pd = NULL;
out:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

/* md of rank r with dims right-aligned (leading 1s), optionally transposing the last two. */
static xr_code mm_md(const nn_node *n, dnnl_memory_desc_t *md, int r, int rank,
                     const int64_t *dims, bool trans, bool any, xr_error *err)
{
    xr_code rc = XR_OK;
    dnnl_dims_t d = {0}, s = {0};
    for (int i = 0; i < r; i++)
        d[i] = i < r - rank ? 1 : dims[i - (r - rank)];
    if (trans) {
        /* logical [.., K, N] over data stored [.., N, K] */
        dnnl_dim_t t = d[r - 1];
        d[r - 1] = d[r - 2];
        d[r - 2] = t;
        int64_t acc = 1;
        s[r - 2] = 1;
        s[r - 1] = d[r - 2];
        acc = d[r - 1] * d[r - 2];
        for (int i = r - 3; i >= 0; i--) {
            s[i] = acc;
            acc *= d[i];
        }
        CK(dnnl_memory_desc_init_by_strides(md, r, d, dnnl_f32, s), "matmul desc");
    } else {
        CK(dnnl_memory_desc_init_by_tag(md, r, d, dnnl_f32,
                                        any ? dnnl_format_tag_any : plain_tag(r)),
           "matmul desc");
    }
out:
    return rc;
}

/* md of a strided view (nn-opt.c absorb_views) */
static xr_code view_md(const nn_node *n, const nn_view *v, dnnl_memory_desc_t *md, xr_error *err)
{
    xr_code rc = XR_OK;
    dnnl_dims_t d, s;
    for (int i = 0; i < v->rank; i++) {
        d[i] = v->dims[i];
        s[i] = v->strides[i];
    }
    CK(dnnl_memory_desc_init_by_strides(md, v->rank, d, dnnl_f32, s), "matmul view desc");
out:
    return rc;
}

/* Arguments of n bound to value v start v's byte_off bytes into its buffer. */
static void arg_offset(nn_node *n, int arg, const nn_view *v)
{
    for (int i = 0; i < n->n_args; i++)
        if (n->args[i].arg == arg)
            n->args[i].byte_off = (size_t)v->offset * sizeof(float);
}

/* MatMul over operands and result held in place (absorb_views): rank-equal, no broadcast. */
static xr_code matmul_views_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    nn_view va, vb, vy;
    const nn_value *a = IN(0), *b = IN(1), *y = OUTV(0);
    if (n->in_view[0].on)
        va = n->in_view[0];
    else
        nn_view_plain(&va, a);
    if (n->in_view[1].on)
        vb = n->in_view[1];
    else
        nn_view_plain(&vb, b);
    if (n->out_view.on)
        vy = n->out_view;
    else
        nn_view_plain(&vy, y);
    if (a->blocked || b->blocked || y->blocked || va.rank != vb.rank || va.rank != vy.rank)
        return xr_error_set(err, XR_E_INTERNAL, "node \"%s\" (MatMul): in-place operands of "
                            "another layout or rank", n->name);
    dnnl_memory_desc_t amd, bmd, ymd;
    if ((rc = view_md(n, &va, &amd, err)) || (rc = view_md(n, &vb, &bmd, err)) ||
        (rc = view_md(n, &vy, &ymd, err)))
        return rc;
    dnnl_matmul_desc_t md;
    CK(dnnl_matmul_desc_init(&md, &amd, &bmd, NULL, &ymd), "matmul desc");
    add_arg(n, DNNL_ARG_SRC, n->in[0], &amd, NULL);
    add_arg(n, DNNL_ARG_DST, n->out[0], &ymd, NULL);
    arg_offset(n, DNNL_ARG_SRC, &va);
    arg_offset(n, DNNL_ARG_DST, &vy);
    if ((rc = finish(g, n, &md, n->in[1], &bmd, NULL, err)))
        return rc;
    arg_offset(n, DNNL_ARG_WEIGHTS, &vb);
out:
    return rc;
}

static bool mm_conv_enabled(void)
{
    const char *e = getenv("XREG_NN_MATMUL_CONV");
    return !(e && strcmp(e, "0") == 0);
}

/* A product's bias: a copy of the constant bias (n_bytes), owned by n, or value bias_v. */
static xr_code add_bias(nn_graph *g, nn_node *n, const float *bias, int bias_v,
                        const dnnl_memory_desc_t *md, size_t n_bytes, xr_error *err)
{
    xr_code rc = XR_OK;
    if (bias) {
        dnnl_memory_t m = NULL;
        CK(dnnl_memory_create(&m, md, g->engine, DNNL_MEMORY_ALLOCATE), "bias memory");
        add_arg(n, DNNL_ARG_BIAS, -1, md, m); /* freed with n from here on */
        void *h = NULL;
        CK(dnnl_memory_get_data_handle(m, &h), "bias memory");
        memcpy(h, bias, n_bytes);
    } else if (bias_v >= 0) {
        add_arg(n, DNNL_ARG_BIAS, bias_v, md, NULL);
    }
out:
    return rc;
}

/* The product [M, K] x [K, N] (+ bias, post-ops) as a 1x1 convolution over M pixels of K
 * channels, nwc: the same bytes as the row-major operands. oneDNN 2.6's jit_1x1 kernel keeps
 * its blocked weights from load on, where its sgemm packs B on every call (docs/nn.md
 * "Products as 1x1 convolutions"). Sets *taken only when oneDNN offers that kernel; else n is
 * left untouched for the matmul. w: alpha-scaled weights or NULL; bias: a constant bias or
 * NULL; bias_v: a fused bias value or -1. */
static xr_code matmul_conv(nn_graph *g, nn_node *n, int64_t m, int64_t k, int64_t nn, bool tb,
                           float *w, const float *bias, int bias_v, bool *taken, xr_error *err)
{
    xr_code rc = XR_OK;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_desc_t smd, wmd, wuser, cmd, ymd;
    dnnl_dims_t sd = {1, k, m}, wd = {nn, k, 1}, yd = {1, nn, m}, cd = {nn};
    /* B is [K, N] row-major, or [N, K] for Gemm's transB: oiw with its strides */
    dnnl_dims_t ws = {tb ? k : 1, tb ? 1 : nn, 1}, st = {1}, pad = {0};
    CK(dnnl_memory_desc_init_by_tag(&smd, 3, sd, dnnl_f32, dnnl_nwc), "matmul conv desc");
    CK(dnnl_memory_desc_init_by_tag(&ymd, 3, yd, dnnl_f32, dnnl_nwc), "matmul conv desc");
    CK(dnnl_memory_desc_init_by_tag(&wmd, 3, wd, dnnl_f32, dnnl_format_tag_any),
       "matmul conv desc");
    CK(dnnl_memory_desc_init_by_strides(&wuser, 3, wd, dnnl_f32, ws), "matmul conv desc");
    CK(dnnl_memory_desc_init_by_tag(&cmd, 1, cd, dnnl_f32, dnnl_a), "matmul conv desc");
    dnnl_convolution_desc_t cdesc;
    CK(dnnl_convolution_forward_desc_init(&cdesc, dnnl_forward_inference,
                                          dnnl_convolution_direct, &smd, &wmd,
                                          (bias || bias_v >= 0) ? &cmd : NULL, &ymd, st, pad, pad),
       "matmul conv desc");
    if ((rc = make_attr(n, &attr, err)))
        return rc;
    /* only the 1x1 kernel pays; any other implementation (no AVX2) keeps the matmul */
    const char *impl = NULL;
    if (dnnl_primitive_desc_create(&pd, &cdesc, attr, g->engine, NULL) != dnnl_success ||
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success ||
        !impl || strncmp(impl, "jit_1x1", 7) != 0)
        goto out;
    add_arg(n, DNNL_ARG_SRC, n->in[0], &smd, NULL);
    add_arg(n, DNNL_ARG_DST, n->out[0], &ymd, NULL);
    if ((rc = add_bias(g, n, bias, bias_v, &cmd, (size_t)nn * sizeof(float), err)))
        goto out;
    rc = finish_pd(g, n, pd, n->in[1], &wuser, w, err);
    pd = NULL;
    n->mm_conv = true;
    *taken = true;
out:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return rc;
}

xr_code nn_matmul_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    bool gemm = strcmp(n->op_type, "Gemm") == 0;
    if (n->in_view[0].on || n->in_view[1].on || n->out_view.on)
        return matmul_views_prepare(g, n, err);
    const nn_value *a = IN(0), *b = IN(1), *y = OUTV(0);
    int64_t ad[NN_MAX_RANK], bd[NN_MAX_RANK], yd[NN_MAX_RANK];
    int ar = a->rank, br = b->rank, yr = y->rank;
    memcpy(ad, a->dims, sizeof(ad));
    memcpy(bd, b->dims, sizeof(bd));
    memcpy(yd, y->dims, sizeof(yd));
    /* 1-D operands: [K] -> [1,K] and [K] -> [K,1]; the output keeps both axes here */
    (void)yr;
    if (ar == 1) {
        ad[1] = ad[0];
        ad[0] = 1;
        ar = 2;
    }
    if (br == 1) {
        bd[1] = 1;
        br = 2;
    }
    /* [.., M, K] x [K, N]: one [M', K] x [K, N] product (row-major A is already that), not
     * a batch of small ones; sequence-first attention gives M = 1 per batch otherwise */
    if (!gemm && b->rank == 2 && ar > 2) {
        int64_t mm = 1;
        for (int i = 0; i < ar - 1; i++)
            mm *= ad[i];
        ad[0] = mm;
        ad[1] = ad[ar - 1];
        ar = 2;
    }
    int r = ar > br ? ar : br;
    if (r > 6)
        return xr_error_set(err, XR_E_UNSUPPORTED, "node \"%s\" (%s): rank %d above 6",
                            n->name, n->op_type, r);
    for (int i = 0; i < r - 2; i++) {
        int ia = i - (r - ar), ib = i - (r - br);
        int64_t da = ia >= 0 ? ad[ia] : 1, db = ib >= 0 ? bd[ib] : 1;
        yd[i] = da == 1 ? db : da;
    }
    yd[r - 2] = gemm && n->a.i0 ? ad[1] : ad[ar - 2];
    yd[r - 1] = gemm && n->a.i1 ? bd[0] : bd[br - 1];
    yr = r;
    bool ta = gemm && n->a.i0, tb = gemm && n->a.i1;
    bool bconst = b->data != NULL;
    dnnl_memory_desc_t amd, bmd, buser, ymd, cmd;
    if ((rc = mm_md(n, &amd, r, ar, ad, ta, false, err)) ||
        (rc = mm_md(n, &buser, r, br, bd, tb, false, err)) ||
        (rc = mm_md(n, &ymd, r, yr, yd, false, false, err)))
        return rc;
    /* Layout and kernel are decided on the rows per sample, so the batch-1 and batch-B plans
     * choose alike and share one copy of the weights. */
    int64_t rows = ta ? ad[ar - 1] : 1;
    for (int i = 0; i < ar - 1 && !ta; i++)
        rows *= ad[i];
    if (g->batch > 1 && rows % g->batch == 0)
        rows /= g->batch;
    if (bconst) {
        /* oneDNN's AVX2 sgemm packs B on every call; from [K, N] rows it runs at 58% of its
         * [N, K] speed when N is 3072 (ViT's MLP: 4 KiB-aliased strides), while [N, K] is
         * 2x slower for a few rows (a classifier head). */
        int64_t ld[NN_MAX_RANK];
        memcpy(ld, bd, sizeof(ld));
        bool store_nk = rows >= NN_MATMUL_NK_ROWS;
        if (tb != store_nk) {
            ld[br - 1] = bd[br - 2];
            ld[br - 2] = bd[br - 1];
        }
        if ((rc = mm_md(n, &bmd, r, br, ld, store_nk, !store_nk, err)))
            return rc;
    } else {
        bmd = buser;
    }
    /* bias: Gemm's C (constant, scaled by beta) or a fused MatMul bias */
    float *wscaled = NULL, *bias = NULL;
    int bias_v = -1;
    n->post_add_c = false;
    n->alpha_in_b = false;
    if (gemm) {
        float alpha = n->a.f0, beta = n->a.f1;
        if (alpha != 1.0f && bconst) {
            /* fold alpha into B once */
            if (!(wscaled = nn_aligned_alloc(b->n_bytes)))
                return xr_error_set(err, XR_E_NOMEM, "out of memory");
            for (int64_t i = 0; i < b->n_elems; i++)
                wscaled[i] = alpha * ((const float *)b->data)[i];
            n->alpha_in_b = true;
        }
        if (HAS(2)) {
            const nn_value *c = IN(2);
            if (c->data && (alpha == 1.0f || bconst) && beta != 0.0f) {
                int64_t cd[2] = {1, 1};
                for (int i = 0; i < c->rank; i++)
                    cd[2 - c->rank + i] = c->dims[i];
                if (!(bias = nn_aligned_alloc(c->n_bytes))) {
                    free(wscaled);
                    return xr_error_set(err, XR_E_NOMEM, "out of memory");
                }
                for (int64_t i = 0; i < c->n_elems; i++)
                    bias[i] = beta * ((const float *)c->data)[i];
                if ((rc = plain_md(n, &cmd, 2, cd, err)))
                    goto out;
            } else if (beta != 0.0f) {
                n->post_add_c = true;
            }
        }
    } else if (n->bias_in >= 0) {
        const nn_value *c = &g->values[n->bias_in];
        int64_t cd[NN_MAX_RANK];
        for (int i = 0; i < r; i++)
            cd[i] = 1;
        cd[r - 1] = c->n_elems;
        bias_v = n->bias_in;
        if ((rc = plain_md(n, &cmd, r, cd, err)))
            goto out;
    }
    /* a convolution's bias is one value per output channel: a Gemm C of [1] or [M, N] keeps
     * the matmul, whose bias broadcasts */
    if (bconst && !ta && r == 2 && rows >= NN_MATMUL_CONV_ROWS && !n->post_add_c &&
        (!bias || IN(2)->n_elems == yd[1]) && mm_conv_enabled()) {
        bool taken = false;
        if ((rc = matmul_conv(g, n, ad[0], ad[1], yd[1], tb, wscaled, bias, bias_v, &taken,
                              err)) ||
            taken)
            goto out;
    }
    dnnl_matmul_desc_t md;
    CK(dnnl_matmul_desc_init(&md, &amd, &bmd, (bias || bias_v >= 0) ? &cmd : NULL, &ymd),
       "matmul desc");
    add_arg(n, DNNL_ARG_SRC, n->in[0], &amd, NULL);
    add_arg(n, DNNL_ARG_DST, n->out[0], &ymd, NULL);
    if ((rc = add_bias(g, n, bias, bias_v, &cmd, bias ? IN(2)->n_bytes : 0, err)))
        goto out;
    rc = finish(g, n, &md, n->in[1], &buser, wscaled, err);
out:
    free(wscaled);
    free(bias);
    return rc;
}

/* Gemm output scaling and runtime C, applied after the primitive. */
static void gemm_post(const nn_graph *g, const nn_node *n, nn_exec *x)
{
    float *y = nn_ptr(g, x, n->out[0]);
    const nn_value *yv = OUTV(0);
    int64_t m = yv->dims[0], nn = yv->dims[1];
    /* B's data is released after load, so whether alpha is in B was recorded then */
    if (n->a.f0 != 1.0f && !n->alpha_in_b)
        for (int64_t i = 0; i < m * nn; i++)
            y[i] *= n->a.f0;
    if (!n->post_add_c)
        return;
    const nn_value *c = IN(2);
    const float *cp = nn_ptr(g, x, n->in[2]);
    int64_t cd[2] = {1, 1};
    for (int i = 0; i < c->rank; i++)
        cd[2 - c->rank + i] = c->dims[i];
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < nn; j++)
            y[i * nn + j] += n->a.f1 * cp[(cd[0] == 1 ? 0 : i) * cd[1] + (cd[1] == 1 ? 0 : j)];
}

xr_code nn_dnnl_run(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    xr_code rc = XR_OK;
    dnnl_exec_arg_t args[NN_MAX_DNNL_ARGS];
    dnnl_memory_t *mems = x->mems + x->step * NN_STEP_MEMS;
    for (int i = 0; i < n->n_args; i++) {
        args[i].arg = n->args[i].arg;
        args[i].memory = mems[i];
    }
    if (n->sum_in >= 0) {
        void *dst = nn_ptr(g, x, n->out[0]), *res = nn_ptr(g, x, n->sum_in);
        if (dst != res)
            memcpy(dst, res, OUTV(0)->n_bytes);
    }
    CK(dnnl_primitive_execute(n->prim, x->stream, n->n_args, args), "execute");
    CK(dnnl_stream_wait(x->stream), "execute");
    if (strcmp(n->op_type, "Gemm") == 0)
        gemm_post(g, n, x);
    if (n->silu_after) /* blocked layouts: padding lanes hold 0, and silu(0) = 0 */
        silu_pass(nn_ptr(g, x, n->out[0]), OUTV(0)->n_bytes / sizeof(float));
out:
    return rc;
}

xr_code nn_pre_run(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    xr_code rc = XR_OK;
    (void)g;
    dnnl_memory_t *mems = x->mems + x->step * NN_STEP_MEMS + NN_MAX_DNNL_ARGS;
    for (int i = 0; i < n->n_pre; i++) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, mems[2 * i]}, {DNNL_ARG_TO, mems[2 * i + 1]}};
        CK(dnnl_primitive_execute(n->pre[i].prim, x->stream, 2, args), "layout reorder");
    }
    if (n->n_pre)
        CK(dnnl_stream_wait(x->stream), "layout reorder");
out:
    return rc;
}

void nn_node_dnnl_free(nn_node *n)
{
    for (int i = 0; i < n->n_pre; i++)
        if (n->pre[i].prim)
            dnnl_primitive_destroy(n->pre[i].prim);
    n->n_pre = 0;
    if (n->prim)
        dnnl_primitive_destroy(n->prim);
    n->prim = NULL;
    for (int i = 0; i < n->n_args; i++)
        if (n->args[i].value == -1 && n->args[i].mem)
            dnnl_memory_destroy(n->args[i].mem);
    n->n_args = 0;
    nn_wino_free(n->wino);
    n->wino = NULL;
}

/* ---------------------------------------------------------------- references (folding) */

xr_code nn_matmul_ref(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *a = IN(0), *b = IN(1), *y = OUTV(0);
    int64_t K = a->dims[a->rank - 1];
    int64_t M = a->rank > 1 ? a->dims[a->rank - 2] : 1;
    int64_t N = b->rank > 1 ? b->dims[b->rank - 1] : 1;
    int64_t batch = (M && N) ? y->n_elems / (M * N) : 0;
    /* batch index -> offsets in a and b by broadcasting the leading dims */
    int yb = y->rank - (a->rank > 1) - (b->rank > 1);
    int ab = a->rank > 2 ? a->rank - 2 : 0, bb = b->rank > 2 ? b->rank - 2 : 0;
    const float *pa = nn_ptr(g, x, n->in[0]), *pb = nn_ptr(g, x, n->in[1]);
    float *py = nn_ptr(g, x, n->out[0]);
    for (int64_t t = 0; t < batch; t++) {
        int64_t rem = t, oa = 0, ob = 0, sa = 1, sb = 1;
        for (int d = yb - 1; d >= 0; d--) {
            int64_t i = rem % y->dims[d];
            rem /= y->dims[d];
            int da = d - (yb - ab), db = d - (yb - bb);
            if (da >= 0) {
                oa += (a->dims[da] == 1 ? 0 : i) * sa;
                sa *= a->dims[da];
            }
            if (db >= 0) {
                ob += (b->dims[db] == 1 ? 0 : i) * sb;
                sb *= b->dims[db];
            }
        }
        const float *A = pa + oa * M * K, *B = pb + ob * K * N;
        float *Y = py + t * M * N;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += (double)A[i * K + k] * B[k * N + j];
                Y[i * N + j] = (float)s;
            }
    }
    return XR_OK;
}

xr_code nn_gemm_ref(const nn_graph *g, const nn_node *n, nn_exec *x, xr_error *err)
{
    (void)err;
    const nn_value *a = IN(0), *y = OUTV(0);
    bool ta = n->a.i0, tb = n->a.i1;
    int64_t M = y->dims[0], N = y->dims[1], K = ta ? a->dims[0] : a->dims[1];
    const float *A = nn_ptr(g, x, n->in[0]), *B = nn_ptr(g, x, n->in[1]);
    const float *C = HAS(2) ? nn_ptr(g, x, n->in[2]) : NULL;
    int64_t cd[2] = {1, 1};
    if (C)
        for (int i = 0; i < IN(2)->rank; i++)
            cd[2 - IN(2)->rank + i] = IN(2)->dims[i];
    float *Y = nn_ptr(g, x, n->out[0]);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (double)A[ta ? k * M + i : i * K + k] * B[tb ? j * K + k : k * N + j];
            s *= n->a.f0;
            if (C)
                s += n->a.f1 * C[(cd[0] == 1 ? 0 : i) * cd[1] + (cd[1] == 1 ? 0 : j)];
            Y[i * N + j] = (float)s;
        }
    return XR_OK;
}

/* ---------------------------------------------------------------- blocked-layout readers */

/* Output value y takes the layout md (blocked or plain). */
static void set_layout(const nn_node *n, nn_value *y, const dnnl_memory_desc_t *md)
{
    y->md = *md;
    y->blocked = !md_is_plain(n, md, y);
    if (y->blocked)
        y->n_bytes = dnnl_memory_desc_get_size(md);
}

/*
 * MaxPool (no Indices) and GlobalAveragePool on a blocked input run as oneDNN pooling in that
 * layout, so a chain of convolutions is not broken by reorders; on plain input the reference
 * kernel runs (it is the one the conformance cases check).
 */
xr_code nn_pool_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    const nn_value *x = IN(0);
    bool gap = strcmp(n->op_type, "GlobalAveragePool") == 0;
    bool mx = strcmp(n->op_type, "MaxPool") == 0;
    if (!x->blocked || (!gap && !mx) || n->n_out > 1 || x->dtype != NN_DTYPE_FLOAT)
        return XR_OK;
    nn_value *y = OUTV(0);
    dnnl_memory_desc_t dmd;
    dnnl_dims_t yd, st, k, dl, pl, pr;
    for (int i = 0; i < y->rank; i++)
        yd[i] = y->dims[i];
    for (int i = 0; i < n->a.n_sp; i++) {
        int64_t ek = (n->a.kernel[i] - 1) * n->a.dil[i] + 1;
        st[i] = n->a.strides[i];
        k[i] = n->a.kernel[i];
        dl[i] = n->a.dil[i] - 1;
        pl[i] = n->a.pads_l[i];
        /* oneDNN wants out = (in + pl + pr - ek) / s + 1 exactly (ceil_mode included) */
        pr[i] = (y->dims[2 + i] - 1) * n->a.strides[i] + ek - x->dims[2 + i] - pl[i];
    }
    CK(dnnl_memory_desc_init_by_tag(&dmd, y->rank, yd, dnnl_f32,
                                    y->is_output ? plain_tag(y->rank) : dnnl_format_tag_any),
       "dst");
    dnnl_pooling_v2_desc_t pdsc;
    CK(dnnl_pooling_v2_forward_desc_init(&pdsc, dnnl_forward_inference,
                                         mx ? dnnl_pooling_max : dnnl_pooling_avg_exclude_padding,
                                         &x->md, &dmd, st, k, dl, pl, pr),
       "pooling desc");
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    if ((rc = make_attr(n, &attr, err)))
        return rc;
    if (dnnl_primitive_desc_create(&pd, &pdsc, attr, g->engine, NULL) != dnnl_success) {
        dnnl_primitive_attr_destroy(attr);
        return XR_OK; /* no implementation: the reference kernel after a reorder */
    }
    dnnl_primitive_attr_destroy(attr);
    dmd = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    set_layout(n, y, &dmd);
    add_arg(n, DNNL_ARG_SRC, n->in[0], &x->md, NULL);
    add_arg(n, DNNL_ARG_DST, n->out[0], &dmd, NULL);
    rc = finish_pd(g, n, pd, -1, NULL, NULL, err);
out:
    return rc;
}

/* Mul/Add with a blocked operand and a same-shape or per-channel other one (the
 * squeeze-excitation scale): oneDNN binary in the blocked layout. */
xr_code nn_binary_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    bool mul = strcmp(n->op_type, "Mul") == 0, add = strcmp(n->op_type, "Add") == 0;
    if ((!mul && !add) || n->n_in != 2)
        return XR_OK;
    /* a: the full-size operand, b: the one broadcast over it */
    int a = n->in[0], b = n->in[1];
    if (g->values[a].n_elems != OUTV(0)->n_elems ||
        (!g->values[a].blocked && g->values[b].blocked &&
         g->values[b].n_elems == OUTV(0)->n_elems)) {
        a = n->in[1];
        b = n->in[0];
    }
    const nn_value *va = &g->values[a], *vb = &g->values[b], *y = OUTV(0);
    if (!va->blocked || va->dtype != NN_DTYPE_FLOAT || vb->dtype != NN_DTYPE_FLOAT ||
        va->rank != y->rank || va->n_elems != y->n_elems || vb->rank > y->rank)
        return XR_OK;
    dnnl_memory_desc_t bmd;
    if (vb->blocked) {
        bmd = vb->md;
    } else {
        int64_t bd[NN_MAX_RANK];
        for (int i = 0; i < y->rank; i++)
            bd[i] = i < y->rank - vb->rank ? 1 : vb->dims[i - (y->rank - vb->rank)];
        if ((rc = plain_md(n, &bmd, y->rank, bd, err)))
            return rc;
    }
    dnnl_binary_desc_t bdsc;
    dnnl_memory_desc_t dmd = y->is_output ? bmd : va->md;
    if (y->is_output && (rc = plain_md(n, &dmd, y->rank, y->dims, err)))
        return rc;
    if (dnnl_binary_desc_init(&bdsc, mul ? dnnl_binary_mul : dnnl_binary_add, &va->md, &bmd,
                              &dmd) != dnnl_success)
        return XR_OK;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    if ((rc = make_attr(n, &attr, err)))
        return rc;
    dnnl_status_t st = dnnl_primitive_desc_create(&pd, &bdsc, attr, g->engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return XR_OK;
    set_layout(n, OUTV(0), &dmd);
    add_arg(n, DNNL_ARG_SRC_0, a, &va->md, NULL);
    add_arg(n, DNNL_ARG_SRC_1, b, &bmd, NULL);
    add_arg(n, DNNL_ARG_DST, n->out[0], &dmd, NULL);
    return finish_pd(g, n, pd, -1, NULL, NULL, err);
}

/* LayerNormalization over the last axis, constant scale/bias: oneDNN layer_normalization. */
xr_code nn_layernorm_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    const nn_value *x = IN(0);
    if (n->n_out > 1 || n->a.axis != x->rank - 1 || x->dtype != NN_DTYPE_FLOAT || x->rank > 6)
        return XR_OK;
    int64_t c = x->dims[x->rank - 1];
    for (int i = 1; i < n->n_in; i++)
        if (HAS(i) && (!IN(i)->data || IN(i)->n_elems != c))
            return XR_OK; /* broadcast or runtime scale: the reference kernel */
    dnnl_memory_desc_t dmd, cmd;
    if ((rc = plain_md(n, &dmd, x->rank, x->dims, err)) || (rc = plain_md(n, &cmd, 1, &c, err)))
        return rc;
    unsigned flags = (HAS(1) ? dnnl_use_scale : 0) | (HAS(2) ? dnnl_use_shift : 0);
    dnnl_layer_normalization_desc_t ld;
    CK(dnnl_layer_normalization_forward_desc_init(&ld, dnnl_forward_inference, &dmd, NULL,
                                                  n->a.f0, flags),
       "layer normalization desc");
    add_arg(n, DNNL_ARG_SRC, n->in[0], &dmd, NULL);
    add_arg(n, DNNL_ARG_DST, n->out[0], &dmd, NULL);
    if (HAS(1))
        add_arg(n, DNNL_ARG_SCALE, n->in[1], &cmd, NULL);
    if (HAS(2))
        add_arg(n, DNNL_ARG_SHIFT, n->in[2], &cmd, NULL);
    rc = finish(g, n, &ld, -1, NULL, NULL, err);
out:
    return rc;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static float hmax_avx2(__m256 v)
{
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

/* Softmax of one contiguous row; false (nothing written) when its maximum is not finite, for
 * the reference kernel's IEEE behaviour. exp(x - max) is exp_neg_avx2(max - x). The last
 * len % 8 elements go through masked loads and stores: scalar tails (expf, a branch miss per
 * loop) cost as much as the vector body at ViT's 197. */
__attribute__((target("avx2,fma"))) static bool softmax_row_avx2(const float *p, float *q,
                                                                 int64_t len)
{
    int64_t body = len & ~(int64_t)7, rest = len - body;
    __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rest),
                                      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 ninf = _mm256_set1_ps(-INFINITY), m8 = ninf;
    for (int64_t i = 0; i < body; i += 8)
        m8 = _mm256_max_ps(m8, _mm256_loadu_ps(p + i));
    /* masked-out lanes read as -inf: they neither raise the maximum nor add to the sum */
    __m256 pt = _mm256_blendv_ps(ninf, _mm256_maskload_ps(p + body, tail),
                                 _mm256_castsi256_ps(tail));
    float mx = hmax_avx2(_mm256_max_ps(m8, pt));
    if (!isfinite(mx))
        return false;
    __m256 mv = _mm256_set1_ps(mx), s8 = _mm256_setzero_ps(), zero = _mm256_setzero_ps();
    for (int64_t i = 0; i < body; i += 8) {
        __m256 e = exp_neg_avx2(_mm256_sub_ps(mv, _mm256_loadu_ps(p + i)));
        _mm256_storeu_ps(q + i, e);
        s8 = _mm256_add_ps(s8, e);
    }
    __m256 et = _mm256_blendv_ps(zero, exp_neg_avx2(_mm256_sub_ps(mv, pt)),
                                 _mm256_castsi256_ps(tail));
    __m256 inv = _mm256_set1_ps(1.0f / hsum_avx2(_mm256_add_ps(s8, et)));
    for (int64_t i = 0; i < body; i += 8)
        _mm256_storeu_ps(q + i, _mm256_mul_ps(_mm256_loadu_ps(q + i), inv));
    _mm256_maskstore_ps(q + body, tail, _mm256_mul_ps(et, inv));
    return true;
}
#endif

/* Softmax over contiguous rows (the last axis, or all axes from it on in opset < 13), on the
 * session's threads: oneDNN 2.6's jit:avx2 softmax took 0.37 ms for ViT-B's 12x197x197 on 2
 * threads, no faster than on one (docs/nn.md "Softmax"). */
static xr_code softmax_step(const nn_graph *g, const nn_node *n, nn_exec *xe, xr_error *err)
{
    const nn_value *x = IN(0);
    int64_t len = 1;
    for (int i = (int)n->a.axis; i < x->rank; i++)
        len *= x->dims[i];
    int64_t rows = len ? x->n_elems / len : 0;
    const float *a = nn_ptr(g, xe, n->in[0]);
    float *y = nn_ptr(g, xe, n->out[0]);
    bool ok = true;
#if defined(__x86_64__)
#pragma omp parallel for schedule(static) reduction(&& : ok) \
    if (x->n_elems >= NN_PARALLEL_MIN_ELEMS) num_threads(nn_threads())
    for (int64_t r = 0; r < rows; r++)
        ok = softmax_row_avx2(a + r * len, y + r * len, len) && ok;
#endif
    /* a row with an infinite or NaN maximum: the reference gives every row its IEEE result */
    return ok ? XR_OK : nn_op_find(n->op_type)->run(g, n, xe, err);
}

static const nn_op nn_op_softmax_rows = {"Softmax", 1, 1, 1, 1, NULL, softmax_step, NULL, false};

/* Softmax over contiguous rows: nn's own step (AVX2); otherwise Softmax/LogSoftmax over one axis
 * (opset 13 form, or the coerced form on the last axis) as oneDNN's softmax_v2. */
xr_code nn_softmax_prepare(nn_graph *g, nn_node *n, xr_error *err)
{
    xr_code rc = XR_OK;
    const nn_value *x = IN(0);
    if (x->dtype == NN_DTYPE_FLOAT && !n->a.i0 && nn_avx2_fma() &&
        (n->a.i1 || n->a.axis == x->rank - 1)) {
        n->op = &nn_op_softmax_rows;
        return XR_OK;
    }
    if (x->dtype != NN_DTYPE_FLOAT || x->rank < 1 || x->rank > 6 ||
        (n->a.i1 && n->a.axis != x->rank - 1))
        return XR_OK;
    dnnl_memory_desc_t md;
    if ((rc = plain_md(n, &md, x->rank, x->dims, err)))
        return rc;
    dnnl_softmax_v2_desc_t sd;
    CK(dnnl_softmax_v2_forward_desc_init(&sd, dnnl_forward_inference,
                                         n->a.i0 ? dnnl_softmax_log : dnnl_softmax_accurate, &md,
                                         &md, (int)n->a.axis),
       "softmax desc");
    add_arg(n, DNNL_ARG_SRC, n->in[0], &md, NULL);
    add_arg(n, DNNL_ARG_DST, n->out[0], &md, NULL);
    rc = finish(g, n, &sd, -1, NULL, NULL, err);
out:
    return rc;
}
