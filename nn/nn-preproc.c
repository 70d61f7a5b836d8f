/*
 * Preprocessing: the model input from a float image, equal to tools/xreg_preprocess.py (torch
 * 1.13 / torchvision 0.14) within float32 rounding.
 *
 * The resize reproduces aten's upsample_bilinear2d_aa CPU kernel (the one behind
 * torchvision.transforms.functional.resize(antialias=True) on a float tensor), which is PIL's
 * Resample.c algorithm: a separable triangle filter whose support grows with the downscale
 * factor, weights normalized per output pixel, horizontal pass first, then vertical. The float
 * arithmetic follows the kernel operation by operation (float weights computed with the same
 * float/double promotions, float accumulation in the same order): the weights are bit-identical
 * to PyTorch's (probed with one-hot inputs) and outputs differ by at most 1-2 float32 ulps. The
 * residue is PyTorch's own: its CPU kernel is compiled per instruction set and the AVX2 build
 * fuses some multiply-adds, so torch itself does not give the same bits on every CPU. Fusing
 * everything (fmaf) made upscales bit-exact here but downscales, the case that matters for
 * radiographs, 50x further off; plain float arithmetic, built with -ffp-contract=off, is the
 * portable choice.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xr-limits.h"
#include "nn-image.h"

/* Filter taps for one axis: for output i, weights w[i*taps .. +size[i]) applied from index
 * start[i] of the input. */
typedef struct aa_axis {
    uint32_t in_size, out_size; /* what the table was computed for; 0 = none */
    uint32_t taps;
    uint32_t cap_out, cap_w;    /* allocated entries */
    uint32_t *start, *size;
    float *w;
} aa_axis;

struct nn_preproc {
    nn_preproc_spec spec;
    aa_axis hor, ver;
    float *tmp; /* horizontal pass result: channels x in_h x out_w */
    size_t tmp_cap;
};

nn_preproc_spec nn_preproc_spec_default(void)
{
    return (nn_preproc_spec){
        .height = 224,
        .width = 224,
        .channels = 3,
        .mean = {0, 0, 0},
        .std = {1, 1, 1},
        .normalize = true,
        .resize = NN_RESIZE_STRETCH,
    };
}

nn_image_color nn_preproc_spec_color(const nn_preproc_spec *spec)
{
    return spec->channels == 1 ? NN_IMAGE_GRAY : NN_IMAGE_NATIVE;
}

const char *nn_resize_mode_name(nn_resize_mode m)
{
    switch (m) {
    case NN_RESIZE_STRETCH:
        return "stretch";
    case NN_RESIZE_LETTERBOX:
        return "letterbox";
    default:
        return "invalid";
    }
}

nn_resize_mode nn_resize_mode_from_string(const char *s)
{
    if (s && strcmp(s, "stretch") == 0)
        return NN_RESIZE_STRETCH;
    if (s && strcmp(s, "letterbox") == 0)
        return NN_RESIZE_LETTERBOX;
    return NN_RESIZE_MODE_MAX;
}

/* ---------------------------------------------------------------------------------------------
 * Spec from metadata
 */
static bool parse_u32(const char *s, const char **end, uint32_t *v)
{
    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    char *e;
    unsigned long long x = strtoull(s, &e, 10);
    if (errno || x > UINT32_MAX)
        return false;
    *v = (uint32_t)x;
    *end = e;
    return true;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* "a,b,c": up to max floats, spaces allowed around commas. Python parses a double and torch
 * rounds it to float32; strtod + cast does the same. */
static int parse_floats(const char *s, float *out, int max)
{
    int n = 0;
    for (;;) {
        while (is_space(*s))
            s++;
        if (n == max || !*s)
            return -1;
        errno = 0;
        char *e;
        double d = strtod(s, &e);
        if (e == s || errno == ERANGE || !isfinite(d) || fabs(d) > 3.0e38)
            return -1;
        out[n++] = (float)d;
        s = e;
        while (is_space(*s))
            s++;
        if (!*s)
            return n;
        if (*s++ != ',')
            return -1;
    }
}

xr_code nn_preproc_spec_validate(const nn_preproc_spec *spec, xr_error *err)
{
    if (spec->height < 1 || spec->width < 1 || spec->height > XR_IMAGE_MODEL_DIM_MAX ||
        spec->width > XR_IMAGE_MODEL_DIM_MAX)
        return xr_error_set(err, XR_E_INPUT, "input size is %ux%u but each side must be in [1, %d]",
                            spec->height, spec->width, XR_IMAGE_MODEL_DIM_MAX);
    if (spec->channels != 1 && spec->channels != 3)
        return xr_error_set(err, XR_E_INPUT, "channels is %u but must be 1 or 3", spec->channels);
    if ((unsigned)spec->resize >= NN_RESIZE_MODE_MAX)
        return xr_error_set(err, XR_E_INPUT, "resize mode %d is invalid", (int)spec->resize);
    for (uint32_t c = 0; c < spec->channels; c++) {
        if (!isfinite(spec->mean[c]) || !isfinite(spec->std[c]) || !(spec->std[c] > 0))
            return xr_error_set(err, XR_E_INPUT,
                                "channel %u has mean %g and std %g but both must be finite and "
                                "std greater than 0",
                                c, (double)spec->mean[c], (double)spec->std[c]);
    }
    return XR_OK;
}

xr_code nn_preproc_spec_from_metadata(const char *const *keys, const char *const *values,
                                      size_t n, nn_preproc_spec *ret, xr_error *err)
{
    nn_preproc_spec s = nn_preproc_spec_default();
    const char *size = NULL, *channels = NULL, *mean = NULL, *std = NULL, *resize = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *k = keys[i], *v = values[i] ? values[i] : "";
        if (!k)
            continue;
        const char **slot = strcmp(k, "xreg.input_size") == 0 ? &size
                            : strcmp(k, "xreg.channels") == 0 ? &channels
                            : strcmp(k, "xreg.mean") == 0     ? &mean
                            : strcmp(k, "xreg.std") == 0      ? &std
                            : strcmp(k, "xreg.resize") == 0   ? &resize
                                                              : NULL;
        if (!slot)
            continue;
        if (*slot)
            return xr_error_set(err, XR_E_INPUT, "model metadata has \"%s\" twice", k);
        *slot = v;
    }
    if (!size)
        return xr_error_set(err, XR_E_INPUT,
                            "model metadata has no \"xreg.input_size\" (expected \"H,W\", e.g. "
                            "\"224,224\")");
    const char *e;
    if (!parse_u32(size, &e, &s.height) || *e != ',' || !parse_u32(e + 1, &e, &s.width) || *e ||
        s.height < 1 || s.width < 1 || s.height > XR_IMAGE_MODEL_DIM_MAX ||
        s.width > XR_IMAGE_MODEL_DIM_MAX)
        return xr_error_set(err, XR_E_INPUT,
                            "invalid \"xreg.input_size\": \"%s\" (expected \"H,W\", each in [1, "
                            "%d])",
                            size, XR_IMAGE_MODEL_DIM_MAX);
    if (channels) {
        if (strcmp(channels, "1") == 0)
            s.channels = 1;
        else if (strcmp(channels, "3") == 0)
            s.channels = 3;
        else
            return xr_error_set(err, XR_E_INPUT,
                                "invalid \"xreg.channels\": \"%s\" (expected \"1\" or \"3\")",
                                channels);
    }
    const struct {
        const char *key, *val;
        float *out;
    } vecs[] = {{"xreg.mean", mean, s.mean}, {"xreg.std", std, s.std}};
    for (size_t i = 0; i < 2; i++) {
        if (!vecs[i].val)
            continue;
        float v[NN_PREPROC_CHANNELS_MAX];
        int got = parse_floats(vecs[i].val, v, NN_PREPROC_CHANNELS_MAX);
        if (got != 1 && got != (int)s.channels)
            return xr_error_set(err, XR_E_INPUT,
                                "invalid \"%s\": \"%s\" (expected %u comma-separated finite "
                                "number%s, one per channel)",
                                vecs[i].key, vecs[i].val, s.channels, s.channels > 1 ? "s" : "");
        for (uint32_t c = 0; c < s.channels; c++)
            vecs[i].out[c] = v[got == 1 ? 0 : c];
    }
    for (uint32_t c = 0; c < s.channels; c++) {
        if (!(s.std[c] > 0))
            return xr_error_set(err, XR_E_INPUT,
                                "invalid \"xreg.std\": \"%s\" (every value must be greater than 0)",
                                std);
    }
    if (resize) {
        s.resize = nn_resize_mode_from_string(resize);
        if (s.resize == NN_RESIZE_MODE_MAX)
            return xr_error_set(err, XR_E_INPUT,
                                "invalid \"xreg.resize\": \"%s\" (expected \"stretch\" or "
                                "\"letterbox\")",
                                resize);
    }
    *ret = s;
    return XR_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Geometry
 */
void nn_preproc_geometry(const nn_preproc_spec *spec, uint32_t w, uint32_t h, uint32_t *ret_h,
                         uint32_t *ret_w, uint32_t *ret_top, uint32_t *ret_left)
{
    uint64_t H = spec->height, W = spec->width;
    uint64_t rh = H, rw = W;
    if (spec->resize == NN_RESIZE_LETTERBOX && w > 0 && h > 0) {
        if (H * w <= W * h)
            rw = (2 * (uint64_t)w * H + h) / (2 * (uint64_t)h);
        else
            rh = (2 * (uint64_t)h * W + w) / (2 * (uint64_t)w);
        rw = rw < 1 ? 1 : rw > W ? W : rw;
        rh = rh < 1 ? 1 : rh > H ? H : rh;
    }
    *ret_h = (uint32_t)rh;
    *ret_w = (uint32_t)rw;
    *ret_top = (uint32_t)((H - rh) / 2);
    *ret_left = (uint32_t)((W - rw) / 2);
}

/* ---------------------------------------------------------------------------------------------
 * Antialiased bilinear resize (aten upsample_bilinear2d_aa, float32)
 */
static float aa_filter(float x)
{
    /* The literals are doubles in the original: 1.0 - x is computed in double, then rounded. */
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return (float)(1.0 - x);
    return 0.0f;
}

static xr_code aa_axis_compute(aa_axis *a, uint32_t in_size, uint32_t out_size, xr_error *err)
{
    if (a->in_size == in_size && a->out_size == out_size)
        return XR_OK;
    /* area_pixel_compute_scale<float>: float(input) / output, in float. */
    const float scale = (float)in_size / (float)out_size;
    /* interp_size 2 for bilinear; support = (interp_size * 0.5) * scale when downscaling. */
    const float support = (scale >= 1.0f) ? (float)((2 * 0.5) * scale) : (float)(2 * 0.5);
    const uint32_t taps = (uint32_t)ceilf(support) * 2 + 1;
    if ((uint64_t)taps * out_size > UINT32_MAX)
        return xr_error_set(err, XR_E_LIMIT, "resize from %u to %u needs too many filter taps",
                            in_size, out_size);
    uint32_t need_w = taps * out_size;
    if (out_size > a->cap_out) {
        uint32_t *s = realloc(a->start, sizeof(*s) * out_size);
        if (s)
            a->start = s;
        uint32_t *z = s ? realloc(a->size, sizeof(*z) * out_size) : NULL;
        if (z)
            a->size = z;
        if (!s || !z)
            return xr_error_set(err, XR_E_NOMEM, "out of memory for resize tables");
        a->cap_out = out_size;
    }
    if (need_w > a->cap_w) {
        float *w = realloc(a->w, sizeof(*w) * need_w);
        if (!w)
            return xr_error_set(err, XR_E_NOMEM, "out of memory for resize weights");
        a->w = w;
        a->cap_w = need_w;
    }
    a->in_size = a->out_size = 0; /* invalid until complete */
    const float invscale = (scale >= 1.0f) ? (float)(1.0 / scale) : 1.0f;
    for (uint32_t i = 0; i < out_size; i++) {
        const float center = (float)(scale * (i + 0.5));
        float total = 0.0f;
        int64_t xmin = (int64_t)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        int64_t xmax = (int64_t)(center + support + 0.5);
        if (xmax > (int64_t)in_size)
            xmax = in_size;
        int64_t xsize = xmax - xmin;
        if (xsize < 1 || (uint64_t)xsize > taps)
            return xr_error_set(err, XR_E_INTERNAL, "resize %u->%u: output %u has %lld taps",
                                in_size, out_size, i, (long long)xsize);
        float *w = a->w + (size_t)i * taps;
        for (int64_t j = 0; j < xsize; j++) {
            /* (j + xmin - center + 0.5) * invscale: int64 - float is float, the rest double. */
            float wj = aa_filter((float)(((float)(j + xmin) - center + 0.5) * invscale));
            w[j] = wj;
            total += wj;
        }
        for (int64_t j = 0; j < xsize; j++) {
            if (total != 0.0f)
                w[j] /= total;
        }
        a->start[i] = (uint32_t)xmin;
        a->size[i] = (uint32_t)xsize;
    }
    a->taps = taps;
    a->in_size = in_size;
    a->out_size = out_size;
    return XR_OK;
}

static void aa_axis_free(aa_axis *a)
{
    free(a->start);
    free(a->size);
    free(a->w);
    *a = (aa_axis){0};
}

/* One output sample: float accumulation starting from the first tap, in tap order. */
static inline float aa_dot(const float *src, size_t stride, const float *w, uint32_t n)
{
    float acc = src[0] * w[0];
    for (uint32_t j = 1; j < n; j++)
        acc += src[j * stride] * w[j];
    return acc;
}

xr_code nn_preproc_resize(nn_preproc *pp, const float *in, uint32_t channels, uint32_t in_h,
                          uint32_t in_w, float *out, uint32_t out_h, uint32_t out_w,
                          size_t out_stride, size_t out_plane, xr_error *err)
{
    if (!pp || !in || !out || channels < 1 || channels > NN_PREPROC_CHANNELS_MAX || !in_h ||
        !in_w || !out_h || !out_w || out_stride < out_w ||
        (channels > 1 && out_plane < (size_t)out_stride * out_h))
        return xr_error_set(err, XR_E_INTERNAL, "nn_preproc_resize: invalid arguments");
    if (in_h > XR_IMAGE_DIM_MAX || in_w > XR_IMAGE_DIM_MAX || out_h > XR_IMAGE_DIM_MAX ||
        out_w > XR_IMAGE_DIM_MAX)
        return xr_error_set(err, XR_E_LIMIT, "resize %ux%u -> %ux%u: each side must be at most %d",
                            in_w, in_h, out_w, out_h, XR_IMAGE_DIM_MAX);
    xr_code rc;
    if ((rc = aa_axis_compute(&pp->hor, in_w, out_w, err)) ||
        (rc = aa_axis_compute(&pp->ver, in_h, out_h, err)))
        return rc;
    size_t tmp_n = (size_t)in_h * out_w; /* one channel at a time */
    if (tmp_n > pp->tmp_cap) {
        float *t = realloc(pp->tmp, tmp_n * sizeof(float));
        if (!t)
            return xr_error_set(err, XR_E_NOMEM, "out of memory for a %ux%u resize buffer",
                                out_w, in_h);
        pp->tmp = t;
        pp->tmp_cap = tmp_n;
    }
    const aa_axis *hx = &pp->hor, *vy = &pp->ver;
    /* Same operations per output value as aa_dot, in the same order; only the loop nesting
     * differs (four rows at once horizontally, whole rows vertically) so that independent sums
     * overlap instead of waiting on one another. */
    for (uint32_t c = 0; c < channels; c++) {
        const float *src = in + (size_t)c * in_h * in_w;
        /* Horizontal pass (aten resamples the contiguous dimension first). */
        uint32_t y = 0;
        for (; y + 4 <= in_h; y += 4) {
            const float *r0 = src + (size_t)y * in_w, *r1 = r0 + in_w, *r2 = r1 + in_w,
                        *r3 = r2 + in_w;
            float *t0 = pp->tmp + (size_t)y * out_w;
            for (uint32_t x = 0; x < out_w; x++) {
                const float *w = hx->w + (size_t)x * hx->taps;
                const uint32_t s = hx->start[x], n = hx->size[x];
                float a0 = r0[s] * w[0], a1 = r1[s] * w[0], a2 = r2[s] * w[0], a3 = r3[s] * w[0];
                for (uint32_t j = 1; j < n; j++) {
                    a0 += r0[s + j] * w[j];
                    a1 += r1[s + j] * w[j];
                    a2 += r2[s + j] * w[j];
                    a3 += r3[s + j] * w[j];
                }
                t0[x] = a0;
                t0[out_w + x] = a1;
                t0[2 * (size_t)out_w + x] = a2;
                t0[3 * (size_t)out_w + x] = a3;
            }
        }
        for (; y < in_h; y++) {
            const float *row = src + (size_t)y * in_w;
            float *t = pp->tmp + (size_t)y * out_w;
            for (uint32_t x = 0; x < out_w; x++)
                t[x] = aa_dot(row + hx->start[x], 1, hx->w + (size_t)x * hx->taps, hx->size[x]);
        }
        /* Vertical pass: out = tmp[start] * w[0], then += tmp[start + j] * w[j], row by row. */
        float *dst = out + (size_t)c * out_plane;
        for (uint32_t oy = 0; oy < out_h; oy++) {
            const float *w = vy->w + (size_t)oy * vy->taps;
            const float *base = pp->tmp + (size_t)vy->start[oy] * out_w;
            float *o = dst + (size_t)oy * out_stride;
            const float w0 = w[0];
            for (uint32_t x = 0; x < out_w; x++)
                o[x] = base[x] * w0;
            for (uint32_t j = 1; j < vy->size[oy]; j++) {
                const float *r = base + (size_t)j * out_w;
                const float wj = w[j];
                for (uint32_t x = 0; x < out_w; x++)
                    o[x] += r[x] * wj;
            }
        }
    }
    return XR_OK;
}

/* ---------------------------------------------------------------------------------------------
 * The preprocessor
 */
xr_code nn_preproc_new(const nn_preproc_spec *spec, nn_preproc **ret, xr_error *err)
{
    if (!spec || !ret)
        return xr_error_set(err, XR_E_INTERNAL, "nn_preproc_new: invalid arguments");
    xr_code rc = nn_preproc_spec_validate(spec, err);
    if (rc)
        return rc;
    nn_preproc *pp = calloc(1, sizeof(*pp));
    if (!pp)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    pp->spec = *spec;
    *ret = pp;
    return XR_OK;
}

nn_preproc *nn_preproc_free(nn_preproc *pp)
{
    if (pp) {
        aa_axis_free(&pp->hor);
        aa_axis_free(&pp->ver);
        free(pp->tmp);
        free(pp);
    }
    return NULL;
}

const nn_preproc_spec *nn_preproc_get_spec(const nn_preproc *pp)
{
    return &pp->spec;
}

size_t nn_preproc_output_floats(const nn_preproc *pp)
{
    return (size_t)pp->spec.channels * pp->spec.height * pp->spec.width;
}

xr_code nn_preproc_run(nn_preproc *pp, const nn_image *img, float *out, size_t out_floats,
                       xr_error *err)
{
    if (!pp || !img || !out || !img->data)
        return xr_error_set(err, XR_E_INTERNAL, "nn_preproc_run: invalid arguments");
    const nn_preproc_spec *s = &pp->spec;
    if (out_floats != nn_preproc_output_floats(pp))
        return xr_error_set(err, XR_E_INTERNAL, "output buffer has %zu floats, expected %zu",
                            out_floats, nn_preproc_output_floats(pp));
    if (img->channels != 1 && img->channels != 3)
        return xr_error_set(err, XR_E_INPUT, "image has %u channels but must have 1 or 3",
                            img->channels);
    if (img->channels == 3 && s->channels == 1)
        return xr_error_set(err, XR_E_INPUT,
                            "image has 3 channels but the model takes 1 (read it as gray)");
    if (!img->width || !img->height)
        return xr_error_set(err, XR_E_INPUT, "image is %ux%u", img->width, img->height);

    uint32_t rh, rw, top, left;
    nn_preproc_geometry(s, img->width, img->height, &rh, &rw, &top, &left);
    const size_t plane = (size_t)s->height * s->width;
    if (rh != s->height || rw != s->width)
        memset(out, 0, plane * img->channels * sizeof(float)); /* letterbox margins: 0 */
    xr_code rc = nn_preproc_resize(pp, img->data, img->channels, img->height, img->width,
                                   out + (size_t)top * s->width + left, rh, rw, s->width, plane,
                                   err);
    if (rc)
        return rc;
    for (uint32_t c = img->channels; c < s->channels; c++)
        memcpy(out + c * plane, out, plane * sizeof(float));
    if (s->normalize) {
        /* torchvision Normalize: tensor.sub_(mean).div_(std) in float32; a multiply by 1/std
         * would round differently. */
        for (uint32_t c = 0; c < s->channels; c++) {
            const float m = s->mean[c], d = s->std[c];
            float *o = out + c * plane;
            for (size_t i = 0; i < plane; i++)
                o[i] = (o[i] - m) / d;
        }
    }
    return XR_OK;
}
