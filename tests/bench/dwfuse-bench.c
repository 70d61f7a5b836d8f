/*
 * 1x1 convolution + depthwise convolution, unfused (two oneDNN primitives, blocked activations
 * between them, as nn/ runs them) vs fused (the depthwise as a post-op of the 1x1), on
 * efficientnet_b0's MBConv shapes, both parts followed by SiLU (swish). Prints which
 * implementation oneDNN picks, the time of each form and the largest difference between them.
 *
 *   ninja -C build tests/nn/dwfuse-bench
 *   OMP_NUM_THREADS=2 build/tests/nn/dwfuse-bench [batch] [relu|linear|logistic] [nhwc] [block=N]
 */
#include <dnnl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dnnl-bench.h"

static dnnl_engine_t eng;
/* activation after each part (swish as in EfficientNet; others to see its cost) and the
 * activation layout (any = oneDNN's choice, blocked on AVX2) */
static dnnl_alg_kind_t act = dnnl_eltwise_swish;
static dnnl_format_tag_t act_tag = dnnl_format_tag_any;
static dnnl_stream_t strm;

/* A memory of layout md filled from random plain data of dims (via a reorder). */
static dnnl_memory_t filled(const dnnl_memory_desc_t *md, int rank, const dnnl_dims_t dims,
                            unsigned seed, float scale)
{
    static const dnnl_format_tag_t tags[] = {0, dnnl_a, dnnl_ab, dnnl_abc, dnnl_abcd, dnnl_abcde};
    dnnl_memory_desc_t pmd;
    CHECK(dnnl_memory_desc_init_by_tag(&pmd, rank, dims, dnnl_f32, tags[rank]));
    return bench_filled(eng, strm, md, &pmd, seed, scale);
}

/* Plain nchw copy of m (caller frees). */
static float *to_plain(dnnl_memory_t m, const dnnl_dims_t dims)
{
    const dnnl_memory_desc_t *md;
    CHECK(dnnl_memory_get_memory_desc(m, &md));
    dnnl_memory_desc_t pmd;
    CHECK(dnnl_memory_desc_init_by_tag(&pmd, 4, dims, dnnl_f32, dnnl_nchw));
    dnnl_memory_t pm;
    CHECK(dnnl_memory_create(&pm, &pmd, eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_t rpd;
    dnnl_primitive_t r;
    CHECK(dnnl_reorder_primitive_desc_create(&rpd, md, eng, &pmd, eng, NULL));
    CHECK(dnnl_primitive_create(&r, rpd));
    dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, m}, {DNNL_ARG_TO, pm}};
    CHECK(dnnl_primitive_execute(r, strm, 2, a));
    CHECK(dnnl_stream_wait(strm));
    size_t n = dnnl_memory_desc_get_size(&pmd);
    float *out = malloc(n), *p;
    CHECK(dnnl_memory_get_data_handle(pm, (void **)&p));
    memcpy(out, p, n);
    dnnl_primitive_destroy(r);
    dnnl_primitive_desc_destroy(rpd);
    dnnl_memory_destroy(pm);
    return out;
}

typedef struct prim {
    dnnl_primitive_t p;
    int n;
    dnnl_exec_arg_t a[8];
} prim;

static void run(const prim *p)
{
    CHECK(dnnl_primitive_execute(p->p, strm, p->n, p->a));
}

static const char *impl(dnnl_primitive_desc_t pd)
{
    const char *s = NULL;
    CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s));
    return s;
}

static dnnl_memory_t scratch(dnnl_primitive_desc_t pd)
{
    dnnl_memory_t m;
    CHECK(dnnl_memory_create(&m, dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0),
                             eng, DNNL_MEMORY_ALLOCATE));
    return m;
}

/* A convolution primitive from pd with its five arguments (more may be appended). */
static prim conv_prim(dnnl_primitive_desc_t pd, dnnl_memory_t src, dnnl_memory_t w,
                      dnnl_memory_t b, dnnl_memory_t dst)
{
    prim r = {0};
    CHECK(dnnl_primitive_create(&r.p, pd));
    r.a[0] = (dnnl_exec_arg_t){DNNL_ARG_SRC, src};
    r.a[1] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, w};
    r.a[2] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, b};
    r.a[3] = (dnnl_exec_arg_t){DNNL_ARG_DST, dst};
    r.a[4] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, scratch(pd)};
    r.n = 5;
    return r;
}

/* One timing round: ms per repetition of the primitives in order. */
static double time_round(const prim *ps, int n_ps, int reps)
{
    for (int i = 0; i < n_ps; i++)
        run(&ps[i]);
    CHECK(dnnl_stream_wait(strm));
    double t0 = now_ms();
    for (int k = 0; k < reps; k++)
        for (int i = 0; i < n_ps; i++)
            run(&ps[i]);
    CHECK(dnnl_stream_wait(strm));
    return (now_ms() - t0) / reps;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The machine may be shared: rounds of the two forms alternate, so a busy spell slows both; the
 * best round of each form is reported, and the median of the per-round ratios. */
#define ROUNDS 15

static double best(const double *v, int n)
{
    double b = v[0];
    for (int i = 1; i < n; i++)
        b = fmin(b, v[i]);
    return b;
}

static void bench(int mb, int ic, int oc, int hw, int k, int s, int count)
{
    int p = (k - 1) / 2, ohw = (hw + 2 * p - k) / s + 1;
    dnnl_dims_t xd = {mb, ic, hw, hw}, w1d = {oc, ic, 1, 1}, b1d = {oc}, yd = {mb, oc, hw, hw};
    dnnl_dims_t wdd = {oc, 1, 1, k, k}, zd = {mb, oc, ohw, ohw};
    dnnl_dims_t one = {1, 1}, zero = {0, 0}, st = {s, s}, pad = {p, p};
    dnnl_memory_desc_t xmd, w1md, b1md, ymd, wdmd, zmd;
    CHECK(dnnl_memory_desc_init_by_tag(&xmd, 4, xd, dnnl_f32, act_tag));
    CHECK(dnnl_memory_desc_init_by_tag(&w1md, 4, w1d, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&b1md, 1, b1d, dnnl_f32, dnnl_x));
    CHECK(dnnl_memory_desc_init_by_tag(&ymd, 4, yd, dnnl_f32, act_tag));
    CHECK(dnnl_memory_desc_init_by_tag(&wdmd, 5, wdd, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&zmd, 4, zd, dnnl_f32, act_tag));

    /* unfused: 1x1 + swish, then dw + swish */
    dnnl_convolution_desc_t c1, cd;
    CHECK(dnnl_convolution_forward_desc_init(&c1, dnnl_forward_inference,
                                             dnnl_convolution_direct, &xmd, &w1md, &b1md, &ymd,
                                             one, zero, zero));
    dnnl_primitive_attr_t a1, ad, af;
    dnnl_post_ops_t po1, pod, pof;
    CHECK(dnnl_primitive_attr_create(&a1));
    CHECK(dnnl_post_ops_create(&po1));
    CHECK(dnnl_post_ops_append_eltwise(po1, 1.0f, act, 1.0f, 0.0f));
    CHECK(dnnl_primitive_attr_set_post_ops(a1, po1));
    dnnl_primitive_desc_t pd1, pdd, pdf;
    CHECK(dnnl_primitive_desc_create(&pd1, &c1, a1, eng, NULL));
    const dnnl_memory_desc_t *ybl = dnnl_primitive_desc_query_md(pd1, dnnl_query_dst_md, 0);
    CHECK(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference,
                                             dnnl_convolution_direct, ybl, &wdmd, &b1md, &zmd,
                                             st, pad, pad));
    CHECK(dnnl_primitive_attr_create(&ad));
    CHECK(dnnl_post_ops_create(&pod));
    CHECK(dnnl_post_ops_append_eltwise(pod, 1.0f, act, 1.0f, 0.0f));
    CHECK(dnnl_primitive_attr_set_post_ops(ad, pod));
    CHECK(dnnl_primitive_desc_create(&pdd, &cd, ad, eng, NULL));

    /* fused: 1x1 + swish + dw(k, s, p) + swish */
    CHECK(dnnl_primitive_attr_create(&af));
    CHECK(dnnl_post_ops_create(&pof));
    CHECK(dnnl_post_ops_append_eltwise(pof, 1.0f, act, 1.0f, 0.0f));
    CHECK(dnnl_post_ops_append_dw(pof, dnnl_f32, dnnl_f32, dnnl_f32, k, s, p, 0, 0, NULL));
    CHECK(dnnl_post_ops_append_eltwise(pof, 1.0f, act, 1.0f, 0.0f));
    CHECK(dnnl_primitive_attr_set_post_ops(af, pof));
    /* the fused primitive's dst is the dw output; try blocked (any) */
    dnnl_status_t sf = dnnl_primitive_desc_create(&pdf, &c1, af, eng, NULL);
    const char *fimpl = sf == dnnl_success ? impl(pdf) : "(not accepted)";

    /* memories */
    const dnnl_memory_desc_t *xbl = dnnl_primitive_desc_query_md(pd1, dnnl_query_src_md, 0);
    dnnl_memory_t x = filled(xbl, 4, xd, 1, 2.0f);
    dnnl_memory_t w1 = filled(dnnl_primitive_desc_query_md(pd1, dnnl_query_weights_md, 0), 4, w1d,
                              2, 0.5f);
    dnnl_memory_t b1 = filled(&b1md, 1, b1d, 3, 0.5f);
    dnnl_memory_t y;
    CHECK(dnnl_memory_create(&y, ybl, eng, DNNL_MEMORY_ALLOCATE));
    dnnl_memory_t wd = filled(dnnl_primitive_desc_query_md(pdd, dnnl_query_weights_md, 0), 5, wdd,
                              4, 0.5f);
    dnnl_memory_t bd = filled(&b1md, 1, b1d, 5, 0.5f);
    dnnl_memory_t z;
    CHECK(dnnl_memory_create(&z, dnnl_primitive_desc_query_md(pdd, dnnl_query_dst_md, 0), eng,
                             DNNL_MEMORY_ALLOCATE));
    prim un[2] = {conv_prim(pd1, x, w1, b1, y), conv_prim(pdd, y, wd, bd, z)};
    int reps = (int)(1e8 / ((double)mb * oc * hw * hw * (ic + 9))) + 2;
    printf("b%d %4d->%-4d %3dx%-3d k%d s%d x%d  unfused (%s + %s)", mb, ic, oc, hw, hw, k, s,
           count, impl(pd1), impl(pdd));
    if (sf != dnnl_success) {
        double tu[ROUNDS];
        for (int r = 0; r < ROUNDS; r++)
            tu[r] = time_round(un, 2, reps);
        printf(" %7.3f ms  fused: not accepted\n", best(tu, ROUNDS));
        return;
    }
    /* the fused primitive must read the same src/weights layouts to share the data */
    const dnnl_memory_desc_t *fx = dnnl_primitive_desc_query_md(pdf, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *fw = dnnl_primitive_desc_query_md(pdf, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *fwd = dnnl_primitive_desc_query_md(
        pdf, dnnl_query_exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS);
    const dnnl_memory_desc_t *fbd = dnnl_primitive_desc_query_md(
        pdf, dnnl_query_exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS);
    const dnnl_memory_desc_t *fz = dnnl_primitive_desc_query_md(pdf, dnnl_query_dst_md, 0);
    dnnl_memory_t fxm = dnnl_memory_desc_equal(fx, xbl) ? x : filled(fx, 4, xd, 1, 2.0f);
    dnnl_memory_t fw1 = filled(fw, 4, w1d, 2, 0.5f);
    dnnl_memory_t fwdm = filled(fwd, 5, wdd, 4, 0.5f);
    dnnl_memory_t fbdm = filled(fbd, 1, b1d, 5, 0.5f);
    dnnl_memory_t fzm;
    CHECK(dnnl_memory_create(&fzm, fz, eng, DNNL_MEMORY_ALLOCATE));
    prim fu = conv_prim(pdf, fxm, fw1, b1, fzm);
    fu.a[5] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS, fwdm};
    fu.a[6] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS, fbdm};
    fu.n = 7;
    double tu[ROUNDS], tf[ROUNDS], ratio[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        tu[r] = time_round(un, 2, reps);
        tf[r] = time_round(&fu, 1, reps);
        ratio[r] = tu[r] / tf[r];
    }
    double mu = best(tu, ROUNDS), mf = best(tf, ROUNDS), mr = median(ratio, ROUNDS);
    /* same result? */
    run(&un[0]);
    run(&un[1]);
    run(&fu);
    CHECK(dnnl_stream_wait(strm));
    float *pu = to_plain(z, zd), *pf = to_plain(fzm, zd);
    double maxd = 0, maxv = 0;
    for (long i = 0; i < (long)mb * oc * ohw * ohw; i++) {
        maxd = fmax(maxd, fabs(pu[i] - pf[i]));
        maxv = fmax(maxv, fabs(pu[i]));
    }
    printf(" %7.3f ms  fused (%s) %7.3f ms  speedup %.2fx (median ratio %.2f)  saves %6.3f ms"
           "  max|diff| %.2g of %.2g\n",
           mu, strncmp(fimpl, "ref_fused", 9) ? fimpl : "ref_fused: the two kernels in turn", mf,
           mu / mf, mr, (mu - mf) * count, maxd, maxv);
    free(pu);
    free(pf);
}

int main(int argc, char **argv)
{
    int mb = argc > 1 ? atoi(argv[1]) : 1, only = -1;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "relu") == 0)
            act = dnnl_eltwise_relu;
        else if (strcmp(argv[i], "linear") == 0)
            act = dnnl_eltwise_linear;
        else if (strcmp(argv[i], "logistic") == 0)
            act = dnnl_eltwise_logistic;
        else if (strcmp(argv[i], "nhwc") == 0)
            act_tag = dnnl_nhwc;
        else if (strncmp(argv[i], "block=", 6) == 0)
            only = atoi(argv[i] + 6);
        else {
            fprintf(stderr, "usage: dwfuse-bench [batch] [relu|linear|logistic] [nhwc] [block=N]\n");
            return 2;
        }
    }
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&strm, eng, dnnl_stream_default_flags));
    /* efficientnet_b0's MBConv blocks with an expansion (ic, oc = 6 ic, input size, k, s, n) */
    static const int blocks[][6] = {
        {16, 96, 112, 3, 2, 1},   {24, 144, 56, 3, 1, 1},   {24, 144, 56, 5, 2, 1},
        {40, 240, 28, 5, 1, 1},   {40, 240, 28, 3, 2, 1},   {80, 480, 14, 3, 1, 2},
        {80, 480, 14, 5, 1, 1},   {112, 672, 14, 5, 1, 2},  {112, 672, 14, 5, 2, 1},
        {192, 1152, 7, 5, 1, 3},  {192, 1152, 7, 3, 1, 1},
    };
    for (size_t i = 0; i < sizeof(blocks) / sizeof(blocks[0]); i++) {
        const int *b = blocks[i];
        if (only >= 0 && (size_t)only != i)
            continue;
        bench(mb, b[0], b[1], b[2], b[3], b[4], b[5]);
        fflush(stdout);
    }
    return 0;
}
