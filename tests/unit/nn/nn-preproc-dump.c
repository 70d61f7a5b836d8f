/*
 * Test driver for the parity tests (tests/unit/nn/test_preproc_parity.py): runs nn/'s decoder
 * and preprocessing on one input and writes the float32 result, so Python can compare it with
 * PIL + torchvision.
 *
 *   nn-preproc-dump [-m KEY=VALUE]... [--no-normalize] [--gray] (--image PATH | --raw W H C PATH)
 *                   [--decode-only] OUT
 *
 * --image decodes a PNG/JPEG; --raw reads channels x H x W float32 (planar) from PATH. With
 * --decode-only the decoded image is written as is. Prints "C H W" of what was written.
 * --repeat N (benchmarks) decodes and preprocesses N times and prints, on stderr, the fastest
 * decode and preprocess times in ms.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xr-time.h"

#include "nn-image.h"

#define MAX_META 16

static int fail(const xr_error *err)
{
    fprintf(stderr, "error (%s): %s\n", xr_code_name(err->code), err->msg);
    return err->code == XR_E_LIMIT ? 3 : 1;
}

int main(int argc, char **argv)
{
    const char *keys[MAX_META], *vals[MAX_META];
    size_t n_meta = 0;
    bool normalize = true, decode_only = false;
    long repeat = 0;
    const char *image = NULL, *raw = NULL, *out_path = NULL;
    uint32_t rw = 0, rh = 0, rc_ = 0;
    nn_image_params ip = nn_image_params_default();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-m") == 0 && i + 1 < argc && n_meta < MAX_META) {
            char *kv = argv[++i], *eq = strchr(kv, '=');
            if (!eq)
                return 2;
            *eq = '\0';
            keys[n_meta] = kv;
            vals[n_meta++] = eq + 1;
        } else if (strcmp(argv[i], "--no-normalize") == 0) {
            normalize = false;
        } else if (strcmp(argv[i], "--gray") == 0) {
            ip.color = NN_IMAGE_GRAY;
        } else if (strcmp(argv[i], "--decode-only") == 0) {
            decode_only = true;
        } else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            repeat = atol(argv[++i]);
        } else if (strcmp(argv[i], "--max-side") == 0 && i + 1 < argc) {
            ip.max_width = ip.max_height = (uint32_t)atoi(argv[++i]);
        } else if (strcmp(argv[i], "--image") == 0 && i + 1 < argc) {
            image = argv[++i];
        } else if (strcmp(argv[i], "--raw") == 0 && i + 4 < argc) {
            rw = (uint32_t)atoi(argv[++i]);
            rh = (uint32_t)atoi(argv[++i]);
            rc_ = (uint32_t)atoi(argv[++i]);
            raw = argv[++i];
        } else if (!out_path && argv[i][0] != '-') {
            out_path = argv[i];
        } else {
            fprintf(stderr, "usage: see the header of nn-preproc-dump.c\n");
            return 2;
        }
    }
    if (!out_path || (!image == !raw))
        return 2;
    xr_error err = XR_ERROR_INIT;
    nn_image img = {0};
    nn_preproc_spec spec;
    if (!decode_only) {
        if (nn_preproc_spec_from_metadata(keys, vals, n_meta, &spec, &err))
            return fail(&err);
        spec.normalize = normalize;
        ip.color = nn_preproc_spec_color(&spec);
    }
    if (image) {
        if (nn_image_read_file(image, &ip, &img, &err))
            return fail(&err);
    } else {
        size_t n = (size_t)rw * rh * rc_;
        img = (nn_image){.width = rw, .height = rh, .channels = rc_, .owned = true,
                         .data = malloc(n * sizeof(float))};
        FILE *f = fopen(raw, "rb");
        if (!img.data || !f || fread(img.data, sizeof(float), n, f) != n)
            return 2;
        fclose(f);
    }
    const float *res = img.data;
    size_t n_out = (size_t)img.channels * img.height * img.width;
    float *out = NULL;
    nn_preproc *pp = NULL;
    if (!decode_only) {
        if (nn_preproc_new(&spec, &pp, &err))
            return fail(&err);
        n_out = nn_preproc_output_floats(pp);
        out = malloc(n_out * sizeof(float));
        if (!out)
            return 2;
        if (nn_preproc_run(pp, &img, out, n_out, &err))
            return fail(&err);
        /* A second run over the same buffers must give the same bits (reused scratch). */
        float *again = malloc(n_out * sizeof(float));
        if (!again || nn_preproc_run(pp, &img, again, n_out, &err) ||
            memcmp(out, again, n_out * sizeof(float)) != 0) {
            fprintf(stderr, "second run differs\n");
            return 1;
        }
        free(again);
        res = out;
        printf("%u %u %u\n", spec.channels, spec.height, spec.width);
        double best_dec = 1e30, best_pp = 1e30;
        for (long r = 0; r < repeat && image; r++) {
            nn_image again_img = {0};
            int64_t t0 = xr_mono_us();
            if (nn_image_read_file(image, &ip, &again_img, &err))
                return fail(&err);
            int64_t t1 = xr_mono_us();
            if (nn_preproc_run(pp, &again_img, out, n_out, &err))
                return fail(&err);
            int64_t t2 = xr_mono_us();
            nn_image_done(&again_img);
            best_dec = (double)(t1 - t0) / 1e3 < best_dec ? (double)(t1 - t0) / 1e3 : best_dec;
            best_pp = (double)(t2 - t1) / 1e3 < best_pp ? (double)(t2 - t1) / 1e3 : best_pp;
        }
        if (repeat > 0)
            fprintf(stderr, "decode_ms %.3f preprocess_ms %.3f\n", best_dec, best_pp);
    } else {
        printf("%u %u %u\n", img.channels, img.height, img.width);
    }
    FILE *f = fopen(out_path, "wb");
    if (!f || fwrite(res, sizeof(float), n_out, f) != n_out || fclose(f) != 0)
        return 2;
    free(out);
    nn_preproc_free(pp);
    nn_image_done(&img);
    return 0;
}
