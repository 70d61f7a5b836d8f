/*
 * ViT-B/16's constant-weight products, [M, K] x [K, N] + bias (GELU on the 3072-wide one), as
 * oneDNN's matmul (weights stored [N, K], as nn/ stores them for many rows) vs a 1x1
 * convolution over M pixels in nwc (nn/nn-dnnl.c matmul_conv; docs/nn.md "Products as 1x1
 * convolutions"). Prints the implementation oneDNN picks, the median time of each form and
 * the largest difference between their outputs.
 *
 *   ninja -C build tests/nn/mmconv-bench
 *   OMP_NUM_THREADS=2 build/tests/nn/mmconv-bench [rows, default 197]
 */
#include <dnnl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnnl-bench.h"

#define RUNS 40

static dnnl_engine_t eng;
static dnnl_stream_t strm;

static dnnl_memory_t filled(const dnnl_memory_desc_t *md, const dnnl_memory_desc_t *plain,
                            unsigned seed)
{
    return bench_filled(eng, strm, md, plain, seed, 1.0f);
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_ms(dnnl_primitive_t p, dnnl_exec_arg_t *a, int na)
{
    double t[RUNS];
    for (int i = 0; i < 3; i++)
        CHECK(dnnl_primitive_execute(p, strm, na, a));
    CHECK(dnnl_stream_wait(strm));
    for (int i = 0; i < RUNS; i++) {
        double t0 = now_ms();
        CHECK(dnnl_primitive_execute(p, strm, na, a));
        CHECK(dnnl_stream_wait(strm));
        t[i] = now_ms() - t0;
    }
    qsort(t, RUNS, sizeof(*t), cmp);
    return t[RUNS / 2];
}

static const char *impl(const_dnnl_primitive_desc_t pd)
{
    const char *s = "?";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s);
    return s;
}

static float *data(dnnl_memory_t m)
{
    float *p;
    CHECK(dnnl_memory_get_data_handle(m, (void **)&p));
    return p;
}

int main(int argc, char **argv)
{
    int64_t m = argc > 1 ? atoll(argv[1]) : 197;
    if (m < 1) {
        fprintf(stderr, "usage: mmconv-bench [rows >= 1]\n");
        return 2;
    }
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&strm, eng, dnnl_stream_default_flags));
    static const int64_t shapes[][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};
    printf("%-18s %-14s %9s %8s %-14s %9s %8s %7s %9s\n", "M x K x N", "matmul", "ms",
           "GFLOP/s", "1x1 conv", "ms", "GFLOP/s", "ratio", "max diff");
    for (int s = 0; s < 4; s++) {
        int64_t k = shapes[s][0], n = shapes[s][1];
        double gflop = 2.0 * (double)(m * k * n) / 1e6;
        dnnl_primitive_attr_t attr;
        CHECK(dnnl_primitive_attr_create(&attr));
        if (n == 3072) {
            dnnl_post_ops_t po;
            CHECK(dnnl_post_ops_create(&po));
            CHECK(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_gelu_erf, 0, 0));
            CHECK(dnnl_primitive_attr_set_post_ops(attr, po));
            dnnl_post_ops_destroy(po);
        }
        /* matmul: src [M, K], weights [K, N] stored [N, K], bias [1, N] */
        dnnl_memory_desc_t smd, wmd, bmd, dmd, wplain, cbmd;
        dnnl_dims_t sd = {m, k}, wd = {k, n}, bd = {1, n}, dd = {m, n}, wpd = {n, k}, cbd = {n};
        CHECK(dnnl_memory_desc_init_by_tag(&smd, 2, sd, dnnl_f32, dnnl_ab));
        CHECK(dnnl_memory_desc_init_by_tag(&wmd, 2, wd, dnnl_f32, dnnl_ba));
        CHECK(dnnl_memory_desc_init_by_tag(&bmd, 2, bd, dnnl_f32, dnnl_ab));
        CHECK(dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dnnl_f32, dnnl_ab));
        CHECK(dnnl_memory_desc_init_by_tag(&wplain, 2, wpd, dnnl_f32, dnnl_ab));
        CHECK(dnnl_memory_desc_init_by_tag(&cbmd, 1, cbd, dnnl_f32, dnnl_a));
        dnnl_matmul_desc_t mmd;
        CHECK(dnnl_matmul_desc_init(&mmd, &smd, &wmd, &bmd, &dmd));
        dnnl_primitive_desc_t mpd;
        dnnl_primitive_t mp;
        CHECK(dnnl_primitive_desc_create(&mpd, &mmd, attr, eng, NULL));
        CHECK(dnnl_primitive_create(&mp, mpd));
        /* [N, K] row-major is the same bytes as [K, N] stored ba */
        dnnl_memory_t src = filled(&smd, &smd, 1), w = filled(&wplain, &wplain, 2),
                      bias = filled(&cbmd, &cbmd, 3), dst, cdst;
        CHECK(dnnl_memory_create(&dst, &dmd, eng, DNNL_MEMORY_ALLOCATE));
        dnnl_memory_t wmm, bmm;
        CHECK(dnnl_memory_create(&wmm, &wmd, eng, data(w)));
        CHECK(dnnl_memory_create(&bmm, &bmd, eng, data(bias)));
        dnnl_exec_arg_t ma[4] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wmm},
                                 {DNNL_ARG_BIAS, bmm}, {DNNL_ARG_DST, dst}};
        double tm = median_ms(mp, ma, 4);
        /* 1x1 convolution over M pixels: src nwc {1, K, M}, weights oiw {N, K, 1} */
        dnnl_memory_desc_t csmd, cwmd, cwuser, cdmd;
        dnnl_dims_t csd = {1, k, m}, cwd = {n, k, 1}, cdd = {1, n, m}, st = {1}, pad = {0};
        CHECK(dnnl_memory_desc_init_by_tag(&csmd, 3, csd, dnnl_f32, dnnl_nwc));
        CHECK(dnnl_memory_desc_init_by_tag(&cdmd, 3, cdd, dnnl_f32, dnnl_nwc));
        CHECK(dnnl_memory_desc_init_by_tag(&cwmd, 3, cwd, dnnl_f32, dnnl_format_tag_any));
        CHECK(dnnl_memory_desc_init_by_tag(&cwuser, 3, cwd, dnnl_f32, dnnl_oiw));
        dnnl_convolution_desc_t cd;
        CHECK(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference,
                                                 dnnl_convolution_direct, &csmd, &cwmd, &cbmd,
                                                 &cdmd, st, pad, pad));
        dnnl_primitive_desc_t cpd;
        dnnl_primitive_t cp;
        CHECK(dnnl_primitive_desc_create(&cpd, &cd, attr, eng, NULL));
        CHECK(dnnl_primitive_create(&cp, cpd));
        const dnnl_memory_desc_t *cw_md = dnnl_primitive_desc_query_md(cpd, dnnl_query_weights_md, 0);
        dnnl_memory_t csrc, cw = filled(cw_md, &cwuser, 2); /* same seed: same weights */
        CHECK(dnnl_memory_create(&csrc, &csmd, eng, data(src)));
        CHECK(dnnl_memory_create(&cdst, &cdmd, eng, DNNL_MEMORY_ALLOCATE));
        dnnl_exec_arg_t ca[4] = {{DNNL_ARG_SRC, csrc}, {DNNL_ARG_WEIGHTS, cw},
                                 {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, cdst}};
        double tc = median_ms(cp, ca, 4);
        float diff = 0.0f;
        for (int64_t i = 0; i < m * n; i++)
            diff = fmaxf(diff, fabsf(data(dst)[i] - data(cdst)[i]));
        char shape[32];
        snprintf(shape, sizeof(shape), "%lldx%lldx%lld", (long long)m, (long long)k,
                 (long long)n);
        printf("%-18s %-14s %9.3f %8.1f %-14s %9.3f %8.1f %6.2fx %9.2e\n", shape, impl(mpd), tm,
               gflop / tm, impl(cpd), tc, gflop / tc, tm / tc, diff);
        dnnl_memory_t mems[] = {src, w, bias, dst, cdst, wmm, bmm, csrc, cw};
        for (size_t i = 0; i < sizeof(mems) / sizeof(*mems); i++)
            dnnl_memory_destroy(mems[i]);
        dnnl_primitive_destroy(mp);
        dnnl_primitive_destroy(cp);
        dnnl_primitive_desc_destroy(mpd);
        dnnl_primitive_desc_destroy(cpd);
        dnnl_primitive_attr_destroy(attr);
    }
    dnnl_stream_destroy(strm);
    dnnl_engine_destroy(eng);
    return 0;
}
