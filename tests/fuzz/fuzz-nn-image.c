/*
 * libFuzzer target: any bytes through nn/'s image path (PNG/JPEG decode, limits, preprocessing),
 * as `xregctl mean-std` and the tools see a file. Limits are small so that a hostile header
 * hits XR_E_LIMIT instead of exhausting the fuzzer's memory. Built with
 * -Dfuzzing_engine=libfuzzer (clang) or by tests/unit/nn/fuzz-nn-image.sh; otherwise the replay
 * main in fuzz-main.c runs the committed corpus as a regression test.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "nn-image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nn_image_params ip = nn_image_params_default();
    ip.max_width = ip.max_height = 4096;
    ip.max_decoded_bytes = 32u << 20;
    for (int color = 0; color < NN_IMAGE_COLOR_MAX; color++) {
        ip.color = (nn_image_color)color;
        nn_image img = {0};
        xr_error err = XR_ERROR_INIT;
        xr_code rc = nn_image_read_buffer(data, size, &ip, &img, &err);
        if (rc == XR_E_INTERNAL) {
            fprintf(stderr, "internal error: %s\n", err.msg);
            abort(); /* a bug, not bad input */
        }
        if (rc != XR_OK) {
            if (err.msg[0] == '\0' || img.data)
                abort(); /* every refusal says why and leaves nothing behind */
            continue;
        }
        size_t n = (size_t)img.width * img.height * img.channels;
        for (size_t i = 0; i < n; i++)
            if (!(img.data[i] >= 0.0f && img.data[i] <= 1.0f))
                abort();
        nn_preproc_spec spec = nn_preproc_spec_default();
        spec.height = 48;
        spec.width = 64;
        spec.channels = color == NN_IMAGE_GRAY ? 1 : 3;
        spec.resize = color == NN_IMAGE_GRAY ? NN_RESIZE_LETTERBOX : NN_RESIZE_STRETCH;
        nn_preproc *pp;
        float out[3 * 48 * 64];
        if (nn_preproc_new(&spec, &pp, &err) ||
            nn_preproc_run(pp, &img, out, nn_preproc_output_floats(pp), &err)) {
            fprintf(stderr, "preprocessing failed: %s\n", err.msg);
            abort();
        }
        /* a convex combination of values in [0,1], up to float rounding */
        for (size_t i = 0; i < nn_preproc_output_floats(pp); i++)
            if (!(out[i] >= -1e-6f && out[i] <= 1.0f + 1e-6f))
                abort();
        nn_preproc_free(pp);
        nn_image_done(&img);
    }
    return 0;
}
