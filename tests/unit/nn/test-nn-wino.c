/*
 * nn/'s Winograd F(2x2, 3x3) convolution (nn-wino.c) against a direct sum in double, on
 * odd and even sizes, several tile groups, with and without bias and ReLU, on 1 and 2 threads.
 *
 * With --bench [threads] [batch] it times it against oneDNN's own convolution (the one nn/
 * would otherwise run) on ResNet-50's 3x3 shapes, both on nChw8c, and prints both.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dnnl-bench.h"
#include "nn-internal.h"

/* plain [n][c][h][w] <-> blocked [n][c/8][h][w][8] */
static void to_blocked(const float *p, float *b, int64_t n, int64_t c, int64_t hw)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < c; k++)
            for (int64_t s = 0; s < hw; s++)
                b[((i * (c / 8) + k / 8) * hw + s) * 8 + k % 8] = p[(i * c + k) * hw + s];
}

static void from_blocked(const float *b, float *p, int64_t n, int64_t c, int64_t hw)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < c; k++)
            for (int64_t s = 0; s < hw; s++)
                p[(i * c + k) * hw + s] = b[((i * (c / 8) + k / 8) * hw + s) * 8 + k % 8];
}

static void reference(const float *x, const float *w, const float *bias, bool relu, float *y,
                      int64_t n, int64_t cin, int64_t cout, int64_t h, int64_t wd)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t o = 0; o < cout; o++)
            for (int64_t yy = 0; yy < h; yy++)
                for (int64_t xx = 0; xx < wd; xx++) {
                    double s = bias ? bias[o] : 0.0;
                    for (int64_t c = 0; c < cin; c++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                int64_t sy = yy + ky - 1, sx = xx + kx - 1;
                                if (sy < 0 || sy >= h || sx < 0 || sx >= wd)
                                    continue;
                                s += (double)x[((i * cin + c) * h + sy) * wd + sx] *
                                     w[((o * cin + c) * 3 + ky) * 3 + kx];
                            }
                    y[((i * cout + o) * h + yy) * wd + xx] = (float)(relu && s < 0 ? 0 : s);
                }
}

typedef struct shape {
    int64_t n, cin, cout, h, w;
} shape;

static void check_shape(shape s, bool bias, bool relu, int threads, int m)
{
    unsigned seed = (unsigned)(s.n * 7 + s.cin * 131 + s.cout * 17 + s.h * 3 + s.w);
    size_t nx = (size_t)(s.n * s.cin * s.h * s.w), ny = (size_t)(s.n * s.cout * s.h * s.w);
    size_t nw = (size_t)(s.cout * s.cin * 9);
    float *x = malloc(nx * 4), *xb = malloc(nx * 4), *w = malloc(nw * 4),
          *b = malloc((size_t)s.cout * 4), *ref = malloc(ny * 4), *yb = malloc(ny * 4),
          *y = malloc(ny * 4);
    assert_non_null(x && xb && w && b && ref && yb && y);
    for (size_t i = 0; i < nx; i++)
        x[i] = frand(&seed) * 4.0f;
    for (size_t i = 0; i < nw; i++)
        w[i] = frand(&seed) / sqrtf((float)(s.cin * 9) / 12.0f);
    for (int64_t i = 0; i < s.cout; i++)
        b[i] = frand(&seed);
    reference(x, w, bias ? b : NULL, relu, ref, s.n, s.cin, s.cout, s.h, s.w);
    to_blocked(x, xb, s.n, s.cin, s.h * s.w);
    nn_wino *z = nn_wino_new(w, s.cout, s.cin, m);
    assert_non_null(z);
    assert_int_equal(nn_wino_m(z), m);
    size_t sb = nn_wino_scratch_bytes(z, s.n, s.h, s.w);
    float *scratch = nn_aligned_alloc(sb);
    assert_non_null(scratch);
    memset(yb, 0xff, ny * 4); /* NaN: every output must be written */
    nn_wino_run(z, xb, bias ? b : NULL, relu, yb, s.n, s.h, s.w, scratch, threads);
    from_blocked(yb, y, s.n, s.cout, s.h * s.w);
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < ny; i++) {
        maxref = fmax(maxref, fabs(ref[i]));
        double d = fabs((double)y[i] - ref[i]);
        if (!(d <= maxdiff)) /* NaN too */
            maxdiff = isnan(d) ? INFINITY : d;
    }
    /* F(2x2) stays at the direct sum's rounding; F(4x4)'s transforms multiply by up to 8 (at
     * 256 in-channels measured 1.1e-5 and 1.25e-5 of the largest output) */
    if (!(maxdiff <= (m == 4 ? 3e-5 : 1e-5) * maxref))
        fail_msg("F(%dx%d) n=%lld cin=%lld cout=%lld %lldx%lld bias=%d relu=%d threads=%d: max "
                 "diff %g, max |ref| %g", m, m, (long long)s.n, (long long)s.cin,
                 (long long)s.cout, (long long)s.h, (long long)s.w, bias, relu, threads, maxdiff,
                 maxref);
    nn_wino_free(z);
    free(scratch);
    free(x), free(xb), free(w), free(b), free(ref), free(yb), free(y);
}

static void test_matches_direct_sum(void **state)
{
    (void)state;
    static const shape shapes[] = {
        {1, 8, 16, 1, 1},   {1, 8, 16, 2, 3},    {2, 16, 32, 7, 7},
        {1, 64, 64, 13, 12}, {3, 24, 48, 9, 5},  {1, 8, 16, 4, 4},
        {1, 256, 32, 14, 14}, /* ResNet's in-channels: F(4x4)'s rounding grows with them */
    };
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        for (int v = 0; v < 4; v++)
            for (int t = 1; t <= 2; t++)
                for (int m = 2; m <= 4; m += 2)
                    check_shape(shapes[i], v & 1, v & 2, t, m);
}

/* more tiles than one group holds: the loop over groups and a short last group */
static void test_several_groups(void **state)
{
    (void)state;
    shape s = {1, 256, 256, 30, 29};
    float *w = calloc(256 * 256 * 9, sizeof(float));
    assert_non_null(w);
    nn_wino *z = nn_wino_new(w, 256, 256, 2), *z4 = nn_wino_new(w, 256, 256, 4);
    free(w);
    assert_non_null(z);
    assert_non_null(z4);
    int64_t tiles = 15 * 15, tiles4 = 8 * 8;
    assert_true(nn_wino_scratch_bytes(z, 1, 30, 29) < (size_t)(16 * tiles * 512) * 4);
    assert_true(nn_wino_scratch_bytes(z4, 1, 30, 29) < (size_t)(36 * tiles4 * 512) * 4);
    nn_wino_free(z);
    nn_wino_free(z4);
    for (int m = 2; m <= 4; m += 2) {
        check_shape(s, true, true, 2, m);
        check_shape(s, false, false, 1, m);
    }
}

/* which shapes go to Winograd: fewer multiply-adds than the direct sum, padding counted */
static void test_mac_ratio(void **state)
{
    (void)state;
    assert_float_equal(nn_wino_mac_ratio(1, 7, 7, 512, 512, 2), 16.0 * 18 / (9.0 * 49), 1e-12);
    assert_float_equal(nn_wino_mac_ratio(1, 4, 4, 512, 512, 2), 16.0 * 6 / (9.0 * 16), 1e-12);
    assert_float_equal(nn_wino_mac_ratio(1, 3, 3, 512, 512, 2), 16.0 * 6 / (9.0 * 9), 1e-12);
    assert_float_equal(nn_wino_mac_ratio(1, 2, 2, 512, 512, 2), 16.0 * 6 / (9.0 * 4), 1e-12);
    /* 784 tiles in groups of 510 (4 MB / (16 x 128 floats), whole kernel calls): 510 + 276 */
    assert_float_equal(nn_wino_mac_ratio(1, 56, 56, 64, 64, 2), 16.0 * 786 / (9.0 * 3136),
                       1e-12);
    /* 8 images of 3x3: 32 tiles, 36 rows */
    assert_float_equal(nn_wino_mac_ratio(8, 3, 3, 512, 512, 2), 16.0 * 36 / (9.0 * 72), 1e-12);
    /* F(4x4): 14x14 is 16 tiles, 18 rows of 36 products */
    assert_float_equal(nn_wino_mac_ratio(1, 14, 14, 256, 256, 4), 36.0 * 18 / (9.0 * 196),
                       1e-12);
    /* 196 tiles in groups of 226 (4 MB / (36 x 128 floats)): one group, 198 rows */
    assert_float_equal(nn_wino_mac_ratio(1, 56, 56, 64, 64, 4), 36.0 * 198 / (9.0 * 3136),
                       1e-12);
}

/* F(4x4) for ResNet's layers at 56x56 and 28x28; F(2x2) at 7x7 (mostly padding in 4x4 tiles) and
 * where 36 planes of weights would not stay in the caches */
static void test_tile_choice(void **state)
{
    (void)state;
    assert_int_equal(nn_wino_tile(56, 56, 64, 64), 4);
    assert_int_equal(nn_wino_tile(28, 28, 128, 128), 4);
    assert_int_equal(nn_wino_tile(14, 14, 256, 256), 2);
    assert_int_equal(nn_wino_tile(7, 7, 512, 512), 2);
    assert_int_equal(nn_wino_tile(14, 14, 512, 512), 2);
    assert_int_equal(nn_wino_tile(8, 7, 64, 64), 2);
}

/* ---------------------------------------------------------------- --bench */

static int bench(int threads, int64_t batch)
{
    /* ResNet-50's four at 224x224, then smaller images' last stages */
    static const shape shapes[] = {{1, 64, 64, 56, 56},  {1, 128, 128, 28, 28},
                                   {1, 256, 256, 14, 14}, {1, 512, 512, 7, 7},
                                   {1, 512, 512, 5, 5},   {1, 512, 512, 4, 4},
                                   {1, 512, 512, 3, 3},   {1, 512, 512, 2, 2},
                                   {1, 256, 256, 4, 4},   {1, 64, 64, 4, 4}};
    dnnl_engine_t eng;
    dnnl_stream_t strm;
    omp_set_num_threads(threads);
    CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&strm, eng, dnnl_stream_default_flags));
    printf("threads %d, batch %lld; ms per convolution (median of 3 rounds), GFLOP/s as direct\n",
           threads, (long long)batch);
    printf("%-22s %10s %10s %10s %8s %8s %8s %7s %7s\n", "shape", "oneDNN", "F(2x2)", "F(4x4)",
           "GF/s", "GF/s", "GF/s", "F2/dnnl", "F4/F2");
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        shape s = shapes[i];
        s.n = batch;
        unsigned seed = 1;
        size_t nx = (size_t)(s.n * s.cin * s.h * s.w), ny = (size_t)(s.n * s.cout * s.h * s.w);
        size_t nw = (size_t)(s.cout * s.cin * 9);
        float *x = nn_aligned_alloc(nx * 4), *w = nn_aligned_alloc(nw * 4),
              *b = nn_aligned_alloc((size_t)s.cout * 4), *y = nn_aligned_alloc(ny * 4);
        for (size_t k = 0; k < nx; k++)
            x[k] = frand(&seed);
        for (size_t k = 0; k < nw; k++)
            w[k] = frand(&seed) * 0.05f;
        for (int64_t k = 0; k < s.cout; k++)
            b[k] = frand(&seed);
        /* oneDNN: nChw8c in and out, weights in its own layout, bias and ReLU fused */
        dnnl_memory_desc_t smd, dmd, wmd, wany, bmd;
        dnnl_dims_t sd = {s.n, s.cin, s.h, s.w}, dd = {s.n, s.cout, s.h, s.w},
                    wd = {s.cout, s.cin, 3, 3}, bd = {s.cout}, st = {1, 1}, pd = {1, 1},
                    dl = {0, 0};
        CHECK(dnnl_memory_desc_init_by_tag(&smd, 4, sd, dnnl_f32, dnnl_aBcd8b));
        CHECK(dnnl_memory_desc_init_by_tag(&dmd, 4, dd, dnnl_f32, dnnl_aBcd8b));
        CHECK(dnnl_memory_desc_init_by_tag(&wmd, 4, wd, dnnl_f32, dnnl_abcd));
        CHECK(dnnl_memory_desc_init_by_tag(&wany, 4, wd, dnnl_f32, dnnl_format_tag_any));
        CHECK(dnnl_memory_desc_init_by_tag(&bmd, 1, bd, dnnl_f32, dnnl_a));
        dnnl_convolution_desc_t cd;
        CHECK(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference,
                                                          dnnl_convolution_direct, &smd, &wany,
                                                          &bmd, &dmd, st, dl, pd, pd));
        dnnl_primitive_attr_t attr;
        dnnl_post_ops_t po;
        CHECK(dnnl_primitive_attr_create(&attr));
        CHECK(dnnl_post_ops_create(&po));
        CHECK(dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
        CHECK(dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_primitive_desc_t cpd;
        CHECK(dnnl_primitive_desc_create(&cpd, &cd, attr, eng, NULL));
        dnnl_primitive_t conv;
        CHECK(dnnl_primitive_create(&conv, cpd));
        const dnnl_memory_desc_t *wq = dnnl_primitive_desc_query_md(cpd, dnnl_query_weights_md, 0);
        dnnl_memory_t xm, ym, wm, wu, bm;
        CHECK(dnnl_memory_create(&xm, &smd, eng, x));
        CHECK(dnnl_memory_create(&ym, &dmd, eng, y));
        CHECK(dnnl_memory_create(&bm, &bmd, eng, b));
        CHECK(dnnl_memory_create(&wu, &wmd, eng, w));
        CHECK(dnnl_memory_create(&wm, wq, eng, DNNL_MEMORY_ALLOCATE));
        dnnl_primitive_desc_t rpd;
        dnnl_primitive_t r;
        CHECK(dnnl_reorder_primitive_desc_create(&rpd, &wmd, eng, wq, eng, NULL));
        CHECK(dnnl_primitive_create(&r, rpd));
        dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, wu}, {DNNL_ARG_TO, wm}};
        CHECK(dnnl_primitive_execute(r, strm, 2, ra));
        CHECK(dnnl_stream_wait(strm));
        dnnl_exec_arg_t ca[4] = {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm},
                                 {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, ym}};
        nn_wino *zs[2] = {nn_wino_new(w, s.cout, s.cin, 2), nn_wino_new(w, s.cout, s.cin, 4)};
        size_t sb2 = nn_wino_scratch_bytes(zs[0], s.n, s.h, s.w),
               sb4 = nn_wino_scratch_bytes(zs[1], s.n, s.h, s.w);
        float *scratch = nn_aligned_alloc(sb2 > sb4 ? sb2 : sb4);
        double flop = 2.0 * (double)(s.n * s.h * s.w * s.cout * s.cin * 9);
        int reps = (int)(2e9 / flop) + 3;
        double best[3][3];
        for (int round = 0; round < 3; round++)
            for (int e = 0; e < 3; e++) {
                double t0 = 0;
                for (int k = -2; k < reps; k++) {
                    if (k == 0)
                        t0 = now_ms();
                    if (e == 0) {
                        CHECK(dnnl_primitive_execute(conv, strm, 4, ca));
                        CHECK(dnnl_stream_wait(strm));
                    } else {
                        nn_wino_run(zs[e - 1], x, b, true, y, s.n, s.h, s.w, scratch, threads);
                    }
                }
                best[e][round] = (now_ms() - t0) / reps;
            }
        double med[3];
        for (int e = 0; e < 3; e++) {
            double *v = best[e], a = v[0], bb = v[1], c = v[2];
            med[e] = a > bb ? (bb > c ? bb : (a > c ? c : a)) : (a > c ? a : (bb > c ? c : bb));
        }
        char name[64];
        snprintf(name, sizeof(name), "%lldx%lld %lld->%lld", (long long)s.h, (long long)s.w,
                 (long long)s.cin, (long long)s.cout);
        printf("%-22s %10.3f %10.3f %10.3f %8.1f %8.1f %8.1f %7.2f %7.2f\n", name, med[0],
               med[1], med[2], flop / med[0] / 1e6, flop / med[1] / 1e6, flop / med[2] / 1e6,
               med[0] / med[1], med[1] / med[2]);
        nn_wino_free(zs[0]);
        nn_wino_free(zs[1]);
        free(scratch);
        dnnl_primitive_destroy(r);
        dnnl_primitive_desc_destroy(rpd);
        dnnl_primitive_destroy(conv);
        dnnl_primitive_desc_destroy(cpd);
        dnnl_post_ops_destroy(po);
        dnnl_primitive_attr_destroy(attr);
        dnnl_memory_destroy(xm), dnnl_memory_destroy(ym), dnnl_memory_destroy(bm);
        dnnl_memory_destroy(wu), dnnl_memory_destroy(wm);
        free(x), free(w), free(b), free(y);
    }
    dnnl_stream_destroy(strm);
    dnnl_engine_destroy(eng);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--bench") == 0)
        return bench(argc > 2 ? atoi(argv[2]) : 1, argc > 3 ? atoll(argv[3]) : 1);
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        printf("no AVX2+FMA on this CPU: nn/ does not use its Winograd kernels here\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_direct_sum),
        cmocka_unit_test(test_several_groups),
        cmocka_unit_test(test_mac_ratio),
        cmocka_unit_test(test_tile_choice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
