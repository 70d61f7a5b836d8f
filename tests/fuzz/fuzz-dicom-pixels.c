/*
 * libFuzzer target: any bytes through the whole pixel path (DCMTK parse, header checks, limits,
 * DCMTK/OpenJPEG decode, grayscale), as xregd will see a received object. Limits are small so
 * that a hostile header hits XR_E_LIMIT instead of exhausting the fuzzer's memory, which is
 * itself part of what is tested. Built with -Dfuzzing_engine=libfuzzer (clang); otherwise the
 * replay main in fuzz-main.c runs the committed corpus as a regression test.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "dicom.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int initialized;
    if (!initialized) {
        xr_error err = XR_ERROR_INIT;
        if (dicom_global_init(&err) != XR_OK) {
            fprintf(stderr, "dicom_global_init: %s\n", err.msg);
            abort();
        }
        initialized = 1;
    }
    const dicom_pixel_limits lim = {
        .max_rows = 2048, .max_columns = 2048, .max_frames = 16,
        .max_decoded_bytes = 64ULL * 1024 * 1024,
    };
    for (int policy = 0; policy < DICOM_FRAMES_MAX; policy++) {
        dicom_image img = {0};
        xr_error err = XR_ERROR_INIT;
        xr_code rc = dicom_image_read_buffer(data, size, (dicom_frame_policy)policy, &lim, &img,
                                             &err);
        if (rc == XR_OK) {
            /* Touch every output value: it must be a number in [0,1]. */
            size_t n = (size_t)img.rows * img.columns * img.n_frames;
            for (size_t i = 0; i < n; i++)
                if (!(img.pixels[i] >= 0.0f && img.pixels[i] <= 1.0f))
                    abort();
        } else if (rc == XR_E_INTERNAL) {
            fprintf(stderr, "internal error: %s\n", err.msg);
            abort(); /* a bug, not bad input */
        } else if (err.msg[0] == '\0') {
            abort(); /* every refusal says why */
        }
        dicom_image_done(&img);
    }
    return 0;
}
