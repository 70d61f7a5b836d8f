/*
 * dicom_image_read / _buffer / dicom_raw_image_read: the C API's contract (limits at and one
 * past each bound, checked before the pixels are read; not-DICOM input; missing pixels; the
 * buffer entry point; destructors). Decoding correctness per encoding is tests/pixels.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dicom-test-util.h"
#include "dicom.h"

static char *dir;

static int group_setup(void **state)
{
    (void)state;
    xr_error err = XR_ERROR_INIT;
    if (dicom_global_init(&err) != XR_OK) {
        fprintf(stderr, "dicom_global_init: %s\n", err.msg);
        return -1;
    }
    dir = tu_mkdtemp("xreg-dicom-pixels");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    tu_rm_rf(dir);
    free(dir);
    dicom_global_done();
    return 0;
}

/* tu_make_cr's ramp: 64 rows x 48 columns, 12 bits. */
static unsigned ramp(unsigned y, unsigned x)
{
    return (x * 37 + y * 11) % 4096;
}

static void test_decode_file_and_buffer(void **state)
{
    (void)state;
    char *p = tu_make_cr(dir, "ok.dcm", "(0028,1050) DS [2048]\n(0028,1051) DS [4096]", NULL,
                         true);
    dicom_pixel_limits lim = dicom_pixel_limits_default();
    dicom_image img = {0};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_image_read(p, DICOM_FRAMES_FIRST, &lim, &img, &err), XR_OK);
    assert_int_equal(img.rows, 64);
    assert_int_equal(img.columns, 48);
    assert_int_equal(img.n_frames, 1);
    assert_int_equal(img.voi_source, DICOM_VOI_WINDOW);
    assert_string_equal(img.voi_function, "LINEAR");
    assert_string_equal(img.transfer_syntax_uid, "1.2.840.10008.1.2.1");
    /* LINEAR, c = 2048, w = 4096: y = (x - 2047.5) / 4095 + 0.5 */
    for (unsigned y = 0; y < 64; y += 7)
        for (unsigned x = 0; x < 48; x += 5) {
            double want = ((double)ramp(y, x) - 2047.5) / 4095 + 0.5;
            assert_true(fabs(img.pixels[y * 48 + x] - want) < 1e-6);
        }

    size_t n;
    char *data = tu_read_file(p, &n);
    dicom_image b = {0};
    assert_int_equal(dicom_image_read_buffer(data, n, DICOM_FRAMES_ALL, &lim, &b, &err), XR_OK);
    assert_memory_equal(img.pixels, b.pixels, 64 * 48 * sizeof(float));

    dicom_raw_image r = {0};
    assert_int_equal(dicom_raw_image_read(p, DICOM_FRAMES_FIRST, &lim, &r, &err), XR_OK);
    assert_int_equal(r.samples_per_pixel, 1);
    assert_string_equal(r.color_model, "MONOCHROME2");
    for (unsigned y = 0; y < 64; y++)
        for (unsigned x = 0; x < 48; x++)
            assert_int_equal(r.values[y * 48 + x], (int)ramp(y, x));
    dicom_raw_image_done(&r);
    assert_null(r.values);
    dicom_image_done(&b);
    dicom_image_done(&img);
    assert_null(img.pixels);
    dicom_image_done(&img); /* a zeroed struct */
    dicom_image_done(NULL);
    dicom_raw_image_done(NULL);
    free(data);
    free(p);
}

/* rc and a message containing want; *ret stays untouched on failure. */
static void expect_fail(const char *path, dicom_frame_policy pol, const dicom_pixel_limits *lim,
                        xr_code rc, const char *want)
{
    dicom_image img;
    memset(&img, 0x5a, sizeof(img));
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_image_read(path, pol, lim, &img, &err), rc);
    if (!strstr(err.msg, want))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, want);
    unsigned char *b = (unsigned char *)&img;
    for (size_t i = 0; i < sizeof(img); i++)
        assert_int_equal(b[i], 0x5a);
}

static void expect_ok(const char *path, dicom_frame_policy pol, const dicom_pixel_limits *lim)
{
    dicom_image img = {0};
    xr_error err = XR_ERROR_INIT;
    if (dicom_image_read(path, pol, lim, &img, &err) != XR_OK)
        fail_msg("%s", err.msg);
    dicom_image_done(&img);
}

static void test_limits(void **state)
{
    (void)state;
    char *p = tu_make_cr(dir, "lim.dcm", NULL, NULL, true);
    dicom_pixel_limits lim = dicom_pixel_limits_default();
    lim.max_rows = 64;
    expect_ok(p, DICOM_FRAMES_FIRST, &lim);
    lim.max_rows = 63;
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_LIMIT,
                "image of 64 x 48 pixels is larger than the limit of 63 x 16384");
    lim = dicom_pixel_limits_default();
    lim.max_columns = 48;
    expect_ok(p, DICOM_FRAMES_FIRST, &lim);
    lim.max_columns = 47;
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_LIMIT, "larger than the limit of 16384 x 47");
    /* 64 x 48 x 4 bytes of samples + 64 x 48 x 2 bytes of the stored frame */
    lim = dicom_pixel_limits_default();
    lim.max_decoded_bytes = 18432;
    expect_ok(p, DICOM_FRAMES_FIRST, &lim);
    lim.max_decoded_bytes = 18431;
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_LIMIT,
                "decoding needs 18432 bytes, more than the limit of 18431");
    free(p);

    /* Number of Frames 3 with one frame of pixels: the limit is checked before the data. */
    p = tu_make_cr(dir, "mf.dcm", "(0028,0008) IS [3]", NULL, true);
    lim = dicom_pixel_limits_default();
    lim.max_frames = 2;
    expect_fail(p, DICOM_FRAMES_ALL, &lim, XR_E_LIMIT,
                "3 frames to decode are more than the limit of 2");
    lim.max_frames = 1;
    expect_ok(p, DICOM_FRAMES_FIRST, &lim); /* one frame decoded */
    lim.max_frames = 3;
    expect_fail(p, DICOM_FRAMES_ALL, &lim, XR_E_INPUT,
                "Pixel Data has 6144 bytes but 3 frames of 64 x 48 x 1 samples of 16 bits need "
                "18432");
    free(p);
}

static void test_bad_input(void **state)
{
    (void)state;
    dicom_pixel_limits lim = dicom_pixel_limits_default();
    char *p = tu_make_cr(dir, "nopix.dcm", NULL, NULL, false);
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_INPUT, "no Pixel Data (7fe0,0010)");
    free(p);
    p = tu_make_cr(dir, "bits.dcm", "(0028,0101) US 17", NULL, true);
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_INPUT,
                "Bits Stored 17 is not in [1, Bits Allocated 16]");
    free(p);
    p = tu_make_cr(dir, "pal.dcm", "(0028,0004) CS [PALETTE COLOR]", NULL, true);
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_UNSUPPORTED,
                "Photometric Interpretation \"PALETTE COLOR\" with 1 sample per pixel is not "
                "supported");
    free(p);
    p = tu_make_cr(dir, "rows0.dcm", "(0028,0010) US 0", NULL, true);
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_INPUT, "image of 0 x 48 pixels is empty");
    free(p);

    const char text[] = "this is a PNG, honestly\n";
    p = tu_path(dir, "text.dcm");
    tu_write_file(p, text, sizeof(text) - 1);
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_INPUT, "not a DICOM file");
    dicom_image img = {0};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_image_read_buffer(text, sizeof(text) - 1, DICOM_FRAMES_FIRST, &lim,
                                             &img, &err),
                     XR_E_INPUT);
    assert_non_null(strstr(err.msg, "not a DICOM file"));
    assert_int_equal(dicom_image_read_buffer(text, 0, DICOM_FRAMES_FIRST, &lim, &img, &err),
                     XR_E_INPUT);
    assert_string_equal(err.msg, "not a DICOM file: the data is empty");
    free(p);
    p = tu_path(dir, "missing.dcm");
    expect_fail(p, DICOM_FRAMES_FIRST, &lim, XR_E_IO, "could not open");
    free(p);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(dicom_frame_policy_name(DICOM_FRAMES_FIRST), "first");
    assert_string_equal(dicom_frame_policy_name(DICOM_FRAMES_ALL), "all");
    assert_null(dicom_frame_policy_name(DICOM_FRAMES_MAX));
    assert_int_equal(dicom_frame_policy_from_string("all"), DICOM_FRAMES_ALL);
    assert_int_equal(dicom_frame_policy_from_string("ALL"), -1);
    assert_int_equal(dicom_frame_policy_from_string(NULL), -1);
    assert_string_equal(dicom_voi_source_name(DICOM_VOI_DEFAULT), "default");
    dicom_pixel_limits d = dicom_pixel_limits_default();
    assert_int_equal(d.max_rows, 16384);
    assert_int_equal(d.max_frames, 1024);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_file_and_buffer),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
