/*
 * 3x3 stride-1 convolutions by Winograd's F(m x m, 3x3), m = 2 or 4: each m x m output tile
 * costs (m+2)^2 multiply-adds per channel pair instead of 9 m^2 (16 instead of 36 for m = 2,
 * 36 instead of 144 for m = 4), done as (m+2)^2 matrix products (tiles x in-channels) x
 * (in-channels x out-channels) by an AVX2 micro-kernel over weights transformed and packed once
 * at load. oneDNN 2.6 has no Winograd for AVX2, and its direct kernels run ResNet's 3x3 layers
 * at 14x14 and 7x7 well below the matrix-multiply peak (docs/nn.md "Winograd").
 *
 * Activations are oneDNN's nChw8c (aBcd8b), in and out, so the steps around it stay blocked.
 * Tiles are processed in groups whose transformed inputs and products fit the scratchpad
 * (P = (m+2)^2 planes):
 *   V[P][G][Cin]   transformed input, a row per tile
 *   M[P][G][Cout]  the P products
 *   U[P][Cout/16][Cin][16]  transformed weights, 16 out-channels side by side
 * F(2x2, 3x3) keeps fp32 rounding close to the direct sum (its transforms only add and halve);
 * F(4x4, 3x3) (Lavin and Gray's points 0, +-1, +-2) multiplies by up to 8 and rounds worse:
 * 1.25e-5 of the largest output at 256 in-channels (test-nn-wino), which is why nn_wino_tile
 * keeps it to the layers where it pays.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "nn-internal.h"

#define IN(i) (&g->values[n->in[i]])
#define OUTV(i) (&g->values[n->out[i]])
#define HAS(i) ((i) < n->n_in && n->in[i] >= 0)

/* tiles per micro-kernel call (rows of V), out-channels per call */
#define WINO_MR 6
#define WINO_NR 16
/* one group's V and M together: beyond this the second-level caches no longer hold a
 * product's slices and a larger group gains nothing (docs/nn.md "Winograd") */
#define WINO_GROUP_FLOATS (INT64_C(1) << 20)
/* nn_wino_mac_ratio above this: oneDNN's direct convolution is faster */
#define WINO_MAX_MAC_RATIO 0.9
/* F(4x4) limits (nn_wino_tile) */
#define WINO_F4_MIN_SIDE 8
/* ResNet's 256-channel layers at 14x14 (9.4 MB in F(4x4)) gained 0-5% in the model against
 * F(2x2), whose 4.2 MB stream better from the shared cache, and cost resnet101 120 MB more */
#define WINO_F4_MAX_U_BYTES (INT64_C(4) << 20)

struct nn_wino {
    int64_t cin, cout;
    int m; /* output tile side: 2 or 4 */
    float *u;
    bool borrowed; /* u belongs to the donor plan's node */
};

#define PLANES(m) (((m) + 2) * ((m) + 2))

/* m x m output tiles over a batch (the last row and column may be cut by the image) */
static int64_t n_tiles(int64_t batch, int64_t h, int64_t w, int m)
{
    return batch * ((h + m - 1) / m) * ((w + m - 1) / m);
}

static int64_t tiles_per_group(int64_t tiles, int64_t cin, int64_t cout, int m)
{
    int64_t gmax = WINO_GROUP_FLOATS / (PLANES(m) * (cin + cout)) / WINO_MR * WINO_MR;
    int64_t all = (tiles + WINO_MR - 1) / WINO_MR * WINO_MR;
    if (gmax < WINO_MR)
        gmax = WINO_MR;
    return all < gmax ? all : gmax;
}

/* Multiply-adds by Winograd ((m+2)^2 per tile, tiles padded to the micro-kernel's 6 rows in
 * each group) over those of the direct sum (9 per output). For m = 2, below 4x4 outputs the
 * padding makes Winograd do more: at 3x3 1.19x (measured 0.63-0.88x oneDNN's speed), at 2x2
 * 2.7x (0.41-0.53x); 5x5 (0.85) still gained 1.21-1.25x (test-nn-wino --bench). */
double nn_wino_mac_ratio(int64_t batch, int64_t h, int64_t w, int64_t cin, int64_t cout, int m)
{
    int64_t tiles = n_tiles(batch, h, w, m), gp = tiles_per_group(tiles, cin, cout, m);
    int64_t last = tiles % gp ? tiles % gp : gp;
    int64_t rows = (tiles - last) + (last + WINO_MR - 1) / WINO_MR * WINO_MR;
    return (double)PLANES(m) * (double)rows / (9.0 * (double)(batch * h * w));
}

/* F(4x4) where its transformed weights (36 planes, 4x the direct weights) stay within
 * WINO_F4_MAX_U_BYTES and the image is at least 8x8, so tiles are not mostly padding; else
 * F(2x2). Chosen from the layer alone, so the batch plan can borrow the batch-1 plan's
 * weights. */
int nn_wino_tile(int64_t h, int64_t w, int64_t cin, int64_t cout)
{
    const char *e = getenv("XREG_NN_WINOGRAD");
    if (e && strcmp(e, "2") == 0)
        return 2;
    return h >= WINO_F4_MIN_SIDE && w >= WINO_F4_MIN_SIDE &&
                   PLANES(4) * cin * cout * (int64_t)sizeof(float) <= WINO_F4_MAX_U_BYTES
               ? 4
               : 2;
}

bool nn_wino_eligible(const nn_graph *g, const nn_node *n)
{
    if (strcmp(n->op_type, "Conv") || !nn_avx2_fma() || n->n_in < 2 || n->sum_in >= 0 ||
        n->silu_after || n->a.group != 1 || n->a.n_sp != 2 || n->out_scale != 0.0f)
        return false;
    const char *e = getenv("XREG_NN_WINOGRAD");
    if (e && strcmp(e, "0") == 0)
        return false;
    const nn_value *x = IN(0), *w = IN(1), *y = OUTV(0);
    if (!w->data || w->dtype != NN_DTYPE_FLOAT || x->dtype != NN_DTYPE_FLOAT || x->rank != 4 ||
        w->rank != 4 || y->is_output || (HAS(2) && !IN(2)->data))
        return false;
    for (int i = 0; i < 2; i++)
        if (n->a.kernel[i] != 3 || w->dims[2 + i] != 3 || n->a.strides[i] != 1 ||
            n->a.dil[i] != 1 || n->a.pads_l[i] != 1 || n->a.pads_r[i] != 1)
            return false;
    if (x->dims[1] % 8 || w->dims[0] % WINO_NR || w->dims[1] != x->dims[1] ||
        nn_wino_mac_ratio(x->dims[0], x->dims[2], x->dims[3], x->dims[1], w->dims[0],
                          nn_wino_tile(x->dims[2], x->dims[3], x->dims[1], w->dims[0])) >
            WINO_MAX_MAC_RATIO)
        return false;
    for (int i = 0; i < n->n_post; i++)
        if (n->post[i].kind != NN_POST_ELTWISE || n->post[i].alg != dnnl_eltwise_relu ||
            n->post[i].alpha != 0.0f || i > 0)
            return false;
    return true;
}

/* G for F(2x2, 3x3) and F(4x4, 3x3): rows of the (m+2) x 3 weight transform */
static const double G2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
static const double G4[6][3] = {{1.0 / 4, 0, 0},
                                {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                {0, 0, 1}};

/* U = G w G^T per (out, in) channel pair, in double, packed [P][cout/16][cin][16]. */
static float *transform_weights(const float *w, int64_t cout, int64_t cin, int m)
{
    int n = m + 2, planes = n * n;
    const double(*g)[3] = m == 4 ? G4 : G2;
    float *u = nn_aligned_alloc((size_t)(planes * cout * cin) * sizeof(float));
    if (!u)
        return NULL;
    int64_t nb = cout / WINO_NR;
    for (int64_t o = 0; o < cout; o++)
        for (int64_t c = 0; c < cin; c++) {
            const float *k = w + (o * cin + c) * 9;
            double t[6][3], r[6][6];
            for (int i = 0; i < n; i++)
                for (int j = 0; j < 3; j++)
                    t[i][j] = g[i][0] * k[j] + g[i][1] * k[3 + j] + g[i][2] * k[6 + j];
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    r[i][j] = t[i][0] * g[j][0] + t[i][1] * g[j][1] + t[i][2] * g[j][2];
            for (int p = 0; p < planes; p++)
                u[((p * nb + o / WINO_NR) * cin + c) * WINO_NR + o % WINO_NR] =
                    (float)r[p / n][p % n];
        }
    return u;
}

nn_wino *nn_wino_new(const float *w, int64_t cout, int64_t cin, int m)
{
    nn_wino *z = calloc(1, sizeof(*z));
    if (!z)
        return NULL;
    z->cin = cin;
    z->cout = cout;
    z->m = m == 4 ? 4 : 2;
    if (!(z->u = transform_weights(w, cout, cin, z->m))) {
        free(z);
        return NULL;
    }
    return z;
}

int nn_wino_m(const nn_wino *z)
{
    return z->m;
}

nn_wino *nn_wino_borrow(const nn_wino *donor)
{
    nn_wino *z = calloc(1, sizeof(*z));
    if (!z)
        return NULL;
    *z = *donor;
    z->borrowed = true;
    return z;
}

void nn_wino_free(nn_wino *z)
{
    if (!z)
        return;
    if (!z->borrowed)
        free(z->u);
    free(z);
}

size_t nn_wino_scratch_bytes(const nn_wino *z, int64_t batch, int64_t h, int64_t w)
{
    int64_t tiles = n_tiles(batch, h, w, z->m);
    return (size_t)(PLANES(z->m) * tiles_per_group(tiles, z->cin, z->cout, z->m) *
                    (z->cin + z->cout)) *
           sizeof(float);
}

#if defined(__x86_64__)
/* c[r][0..15] = sum_k a[r][k] b[k][0..15] for 6 rows of a (stride lda) */
__attribute__((target("avx2,fma"))) static void kernel_6x16(const float *a, int64_t lda,
                                                            const float *b, int64_t k_n,
                                                            float *c, int64_t ldc)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    /* 12 named accumulators: an array of them is not kept in registers */
#define ROW(r)                                                                                 \
    t = _mm256_broadcast_ss(a + (r) * lda + k);                                                \
    c##r##0 = _mm256_fmadd_ps(t, b0, c##r##0);                                                 \
    c##r##1 = _mm256_fmadd_ps(t, b1, c##r##1)
    for (int64_t k = 0; k < k_n; k++, b += WINO_NR) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), t;
        ROW(0);
        ROW(1);
        ROW(2);
        ROW(3);
        ROW(4);
        ROW(5);
    }
#undef ROW
#define STORE(r)                                                                               \
    _mm256_storeu_ps(c + (r) * ldc, c##r##0);                                                  \
    _mm256_storeu_ps(c + (r) * ldc + 8, c##r##1)
    STORE(0);
    STORE(1);
    STORE(2);
    STORE(3);
    STORE(4);
    STORE(5);
#undef STORE
}

/* B^T d B of one tile's 4x4 patch (8 channels per vector) into V's 16 planes. */
__attribute__((target("avx2,fma"))) static void input_tile(const float *x, int64_t h,
                                                           int64_t w, int64_t y0, int64_t x0,
                                                           float *v, int64_t plane)
{
    __m256 d[4][4], r[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int64_t yy = y0 + i, xx = x0 + j;
            d[i][j] = yy >= 0 && yy < h && xx >= 0 && xx < w
                          ? _mm256_loadu_ps(x + (yy * w + xx) * 8)
                          : _mm256_setzero_ps();
        }
    for (int j = 0; j < 4; j++) {
        r[0][j] = _mm256_sub_ps(d[0][j], d[2][j]);
        r[1][j] = _mm256_add_ps(d[1][j], d[2][j]);
        r[2][j] = _mm256_sub_ps(d[2][j], d[1][j]);
        r[3][j] = _mm256_sub_ps(d[1][j], d[3][j]);
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(v + (4 * i + 0) * plane, _mm256_sub_ps(r[i][0], r[i][2]));
        _mm256_storeu_ps(v + (4 * i + 1) * plane, _mm256_add_ps(r[i][1], r[i][2]));
        _mm256_storeu_ps(v + (4 * i + 2) * plane, _mm256_sub_ps(r[i][2], r[i][1]));
        _mm256_storeu_ps(v + (4 * i + 3) * plane, _mm256_sub_ps(r[i][1], r[i][3]));
    }
}

/* One output pixel's 8 channels: v + bias, then ReLU when relu. */
__attribute__((target("avx2,fma"))) static inline void put8(float *y, __m256 v, __m256 b,
                                                            bool relu)
{
    v = _mm256_add_ps(v, b);
    _mm256_storeu_ps(y, relu ? _mm256_max_ps(v, _mm256_setzero_ps()) : v);
}

/* A^T m A of one tile (8 out-channels) + bias, ReLU, into the 2x2 outputs inside the image. */
__attribute__((target("avx2,fma"))) static void output_tile(const float *m, int64_t plane,
                                                            const float *bias, bool relu,
                                                            float *y, int64_t h, int64_t w,
                                                            int64_t y0, int64_t x0)
{
    __m256 s[2][4];
    for (int j = 0; j < 4; j++) {
        __m256 m0 = _mm256_loadu_ps(m + j * plane), m1 = _mm256_loadu_ps(m + (4 + j) * plane),
               m2 = _mm256_loadu_ps(m + (8 + j) * plane),
               m3 = _mm256_loadu_ps(m + (12 + j) * plane);
        s[0][j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
        s[1][j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
    }
    __m256 b = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    for (int i = 0; i < 2 && y0 + i < h; i++) {
        __m256 o[2];
        o[0] = _mm256_add_ps(_mm256_add_ps(s[i][0], s[i][1]), s[i][2]);
        o[1] = _mm256_sub_ps(_mm256_sub_ps(s[i][1], s[i][2]), s[i][3]);
        for (int j = 0; j < 2 && x0 + j < w; j++)
            put8(y + ((y0 + i) * w + x0 + j) * 8, o[j], b, relu);
    }
}

/* B^T d B of one F(4x4) tile's 6x6 patch (8 channels per vector) into V's 36 planes. B^T's rows
 * on d0..d5: 4d0 - 5d2 + d4, (d4 - 4d2) +- (d3 - 4d1), (d4 - d2) +- 2(d3 - d1), 4d1 - 5d3 + d5. */
__attribute__((target("avx2,fma"))) static inline void bt6(const __m256 d[6], __m256 r[6])
{
    const __m256 four = _mm256_set1_ps(4.0f), five = _mm256_set1_ps(5.0f),
                 two = _mm256_set1_ps(2.0f);
    __m256 a = _mm256_fnmadd_ps(four, d[2], d[4]), b = _mm256_fnmadd_ps(four, d[1], d[3]);
    __m256 c = _mm256_sub_ps(d[4], d[2]), e = _mm256_mul_ps(two, _mm256_sub_ps(d[3], d[1]));
    r[0] = _mm256_fmadd_ps(four, d[0], _mm256_fnmadd_ps(five, d[2], d[4]));
    r[1] = _mm256_add_ps(a, b);
    r[2] = _mm256_sub_ps(a, b);
    r[3] = _mm256_add_ps(c, e);
    r[4] = _mm256_sub_ps(c, e);
    r[5] = _mm256_fmadd_ps(four, d[1], _mm256_fnmadd_ps(five, d[3], d[5]));
}

__attribute__((target("avx2,fma"))) static void input_tile4(const float *x, int64_t h,
                                                            int64_t w, int64_t y0, int64_t x0,
                                                            float *v, int64_t plane)
{
    __m256 t[6][6];
    for (int j = 0; j < 6; j++) {
        __m256 d[6], r[6];
        int64_t xx = x0 + j;
        for (int i = 0; i < 6; i++) {
            int64_t yy = y0 + i;
            d[i] = yy >= 0 && yy < h && xx >= 0 && xx < w ? _mm256_loadu_ps(x + (yy * w + xx) * 8)
                                                          : _mm256_setzero_ps();
        }
        bt6(d, r);
        for (int i = 0; i < 6; i++)
            t[i][j] = r[i];
    }
    for (int i = 0; i < 6; i++) {
        __m256 r[6];
        bt6(t[i], r);
        for (int j = 0; j < 6; j++)
            _mm256_storeu_ps(v + (6 * i + j) * plane, r[j]);
    }
}

/* A^T's rows on m0..m5: m0 + (m1 + m2) + (m3 + m4), (m1 - m2) + 2(m3 - m4),
 * (m1 + m2) + 4(m3 + m4), (m1 - m2) + 8(m3 - m4) + m5 */
__attribute__((target("avx2,fma"))) static inline void at6(const __m256 m[6], __m256 y[4])
{
    __m256 s12 = _mm256_add_ps(m[1], m[2]), d12 = _mm256_sub_ps(m[1], m[2]);
    __m256 s34 = _mm256_add_ps(m[3], m[4]), d34 = _mm256_sub_ps(m[3], m[4]);
    y[0] = _mm256_add_ps(_mm256_add_ps(m[0], s12), s34);
    y[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), d34, d12);
    y[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.0f), s34, s12);
    y[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0f), d34, d12), m[5]);
}

/* A^T m A of one F(4x4) tile (8 out-channels) + bias, ReLU, into the outputs inside the image */
__attribute__((target("avx2,fma"))) static void output_tile4(const float *m, int64_t plane,
                                                             const float *bias, bool relu,
                                                             float *y, int64_t h, int64_t w,
                                                             int64_t y0, int64_t x0)
{
    __m256 s[4][6];
    for (int j = 0; j < 6; j++) {
        __m256 col[6], r[4];
        for (int i = 0; i < 6; i++)
            col[i] = _mm256_loadu_ps(m + (6 * i + j) * plane);
        at6(col, r);
        for (int i = 0; i < 4; i++)
            s[i][j] = r[i];
    }
    __m256 b = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    for (int i = 0; i < 4 && y0 + i < h; i++) {
        __m256 o[4];
        at6(s[i], o);
        for (int j = 0; j < 4 && x0 + j < w; j++)
            put8(y + ((y0 + i) * w + x0 + j) * 8, o[j], b, relu);
    }
}
#endif

void nn_wino_run(const nn_wino *z, const float *x, const float *bias, bool relu, float *y,
                 int64_t batch, int64_t h, int64_t w, float *scratch, int threads)
{
#if defined(__x86_64__)
    int m = z->m, planes = PLANES(m);
    int64_t cin = z->cin, cout = z->cout, cb_in = cin / 8, cb_out = cout / 8;
    int64_t th = (h + m - 1) / m, tw = (w + m - 1) / m, per_img = th * tw, tiles = batch * per_img;
    int64_t gp = tiles_per_group(tiles, cin, cout, m), nb = cout / WINO_NR;
    float *v = scratch, *mm = scratch + planes * gp * cin;
#pragma omp parallel num_threads(threads) if (threads > 1)
    for (int64_t t0 = 0; t0 < tiles; t0 += gp) {
        int64_t gn = tiles - t0 < gp ? tiles - t0 : gp;
        int64_t rows = (gn + WINO_MR - 1) / WINO_MR * WINO_MR;
#pragma omp for schedule(static)
        for (int64_t job = 0; job < rows * cb_in; job++) {
            int64_t gi = job / cb_in, cb = job % cb_in;
            float *dst = v + gi * cin + cb * 8;
            if (gi >= gn) { /* rows padding the last micro-kernel call: zero, never read */
                for (int p = 0; p < planes; p++)
                    memset(dst + p * gp * cin, 0, 8 * sizeof(float));
                continue;
            }
            int64_t t = t0 + gi, img = t / per_img, ty = t % per_img / tw, tx = t % tw;
            const float *src = x + (img * cb_in + cb) * h * w * 8;
            if (m == 4)
                input_tile4(src, h, w, 4 * ty - 1, 4 * tx - 1, dst, gp * cin);
            else
                input_tile(src, h, w, 2 * ty - 1, 2 * tx - 1, dst, gp * cin);
        }
#pragma omp for schedule(static)
        for (int64_t job = 0; job < planes * nb; job++) {
            int64_t p = job / nb, ob = job % nb;
            const float *a = v + p * gp * cin, *b = z->u + (p * nb + ob) * cin * WINO_NR;
            float *c = mm + p * gp * cout + ob * WINO_NR;
            for (int64_t r = 0; r < rows; r += WINO_MR)
                kernel_6x16(a + r * cin, cin, b, cin, c + r * cout, cout);
        }
#pragma omp for schedule(static)
        for (int64_t job = 0; job < gn * cb_out; job++) {
            int64_t gi = job / cb_out, ob = job % cb_out;
            int64_t t = t0 + gi, img = t / per_img, ty = t % per_img / tw, tx = t % tw;
            const float *src = mm + gi * cout + ob * 8, *bs = bias ? bias + ob * 8 : NULL;
            float *dst = y + (img * cb_out + ob) * h * w * 8;
            if (m == 4)
                output_tile4(src, gp * cout, bs, relu, dst, h, w, 4 * ty, 4 * tx);
            else
                output_tile(src, gp * cout, bs, relu, dst, h, w, 2 * ty, 2 * tx);
        }
    }
#else
    (void)z, (void)x, (void)bias, (void)relu, (void)y, (void)batch, (void)h, (void)w,
        (void)scratch, (void)threads;
#endif
}
