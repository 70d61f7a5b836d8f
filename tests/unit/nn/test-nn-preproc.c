/*
 * Unit tests of nn/nn-image.h preprocessing: metadata parsing and its errors, letterbox
 * geometry, resize invariants, channel replication, normalization, scratch reuse. Equality with
 * torchvision itself is test_preproc_parity.py's job.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "nn-image.h"

static xr_code parse(const char *size, const char *ch, const char *mean, const char *std,
                     const char *resize, nn_preproc_spec *s, xr_error *err)
{
    const char *k[6], *v[6];
    size_t n = 0;
    k[n] = "xreg.labels", v[n++] = "a,b"; /* other keys are ignored */
    if (size)
        k[n] = "xreg.input_size", v[n++] = size;
    if (ch)
        k[n] = "xreg.channels", v[n++] = ch;
    if (mean)
        k[n] = "xreg.mean", v[n++] = mean;
    if (std)
        k[n] = "xreg.std", v[n++] = std;
    if (resize)
        k[n] = "xreg.resize", v[n++] = resize;
    return nn_preproc_spec_from_metadata(k, v, n, s, err);
}

static void test_spec_parse_good(void **state)
{
    (void)state;
    nn_preproc_spec s;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(parse("384,256", "3", "0.485, 0.456,0.406", " 0.229,0.224 , 0.225 ",
                           "letterbox", &s, &err),
                     XR_OK);
    assert_int_equal(s.height, 384);
    assert_int_equal(s.width, 256);
    assert_int_equal(s.channels, 3);
    assert_true(s.mean[1] == (float)0.456 && s.std[2] == (float)0.225);
    assert_int_equal(s.resize, NN_RESIZE_LETTERBOX);
    assert_true(s.normalize);
    /* one value for every channel; defaults for the rest */
    assert_int_equal(parse("224,224", NULL, "0.5", NULL, NULL, &s, &err), XR_OK);
    assert_int_equal(s.channels, 3);
    assert_true(s.mean[0] == 0.5f && s.mean[2] == 0.5f && s.std[1] == 1.0f);
    assert_int_equal(s.resize, NN_RESIZE_STRETCH);
    assert_int_equal(parse("1,8192", "1", "-0.5", "2", "stretch", &s, &err), XR_OK);
    assert_int_equal(nn_preproc_spec_color(&s), NN_IMAGE_GRAY);
}

static void test_spec_parse_errors(void **state)
{
    (void)state;
    nn_preproc_spec s;
    xr_error err = XR_ERROR_INIT;
    static const struct {
        const char *size, *ch, *mean, *std, *resize, *msg;
    } bad[] = {
        {NULL, "3", NULL, NULL, NULL, "model metadata has no \"xreg.input_size\""},
        {"224", NULL, NULL, NULL, NULL, "invalid \"xreg.input_size\": \"224\" (expected \"H,W\""},
        {"224,", NULL, NULL, NULL, NULL, "invalid \"xreg.input_size\""},
        {"-1,224", NULL, NULL, NULL, NULL, "invalid \"xreg.input_size\""},
        {"224,224,3", NULL, NULL, NULL, NULL, "invalid \"xreg.input_size\""},
        {"0,224", NULL, NULL, NULL, NULL, "each in [1, 8192]"},
        {"8193,224", NULL, NULL, NULL, NULL, "each in [1, 8192]"},
        {"99999999999,1", NULL, NULL, NULL, NULL, "invalid \"xreg.input_size\""},
        {"224,224", "RGB", NULL, NULL, NULL, "invalid \"xreg.channels\": \"RGB\""},
        {"224,224", "2", NULL, NULL, NULL, "(expected \"1\" or \"3\")"},
        {"224,224", "3", "0.1,0.2", NULL, NULL, "invalid \"xreg.mean\": \"0.1,0.2\" (expected 3"},
        {"224,224", "3", "0.1,0.2,0.3,0.4", NULL, NULL, "invalid \"xreg.mean\""},
        {"224,224", "3", "a,b,c", NULL, NULL, "invalid \"xreg.mean\""},
        {"224,224", "3", "", NULL, NULL, "invalid \"xreg.mean\""},
        {"224,224", "3", "0.1,,0.3", NULL, NULL, "invalid \"xreg.mean\""},
        {"224,224", "3", "inf", NULL, NULL, "invalid \"xreg.mean\""},
        {"224,224", "1", NULL, "0", NULL, "invalid \"xreg.std\": \"0\" (every value must be"},
        {"224,224", "1", NULL, "-1", NULL, "greater than 0"},
        {"224,224", "1", NULL, "nan", NULL, "invalid \"xreg.std\""},
        {"224,224", "1", NULL, "1e999", NULL, "invalid \"xreg.std\""},
        {"224,224", NULL, NULL, NULL, "Stretch", "invalid \"xreg.resize\": \"Stretch\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        xr_code rc = parse(bad[i].size, bad[i].ch, bad[i].mean, bad[i].std, bad[i].resize, &s,
                           &err);
        if (rc != XR_E_INPUT || !strstr(err.msg, bad[i].msg))
            fail_msg("case %zu: rc %d, message \"%s\", expected \"%s\"", i, rc, err.msg,
                     bad[i].msg);
    }
    const char *k[2] = {"xreg.resize", "xreg.resize"}, *v[2] = {"stretch", "letterbox"};
    assert_int_equal(nn_preproc_spec_from_metadata(k, v, 2, &s, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "\"xreg.resize\" twice"));
    nn_preproc_spec bad_std = nn_preproc_spec_default();
    bad_std.std[1] = 0;
    nn_preproc *pp;
    assert_int_equal(nn_preproc_new(&bad_std, &pp, &err), XR_E_INPUT);
    assert_string_equal(nn_resize_mode_name(NN_RESIZE_LETTERBOX), "letterbox");
    assert_int_equal(nn_resize_mode_from_string("x"), NN_RESIZE_MODE_MAX);
}

static void test_geometry(void **state)
{
    (void)state;
    nn_preproc_spec s = nn_preproc_spec_default();
    uint32_t h, w, t, l;
    nn_preproc_geometry(&s, 1000, 500, &h, &w, &t, &l); /* stretch */
    assert_true(h == 224 && w == 224 && t == 0 && l == 0);
    s.resize = NN_RESIZE_LETTERBOX;
    nn_preproc_geometry(&s, 1000, 500, &h, &w, &t, &l); /* wide: width filled */
    assert_true(h == 112 && w == 224 && t == 56 && l == 0);
    nn_preproc_geometry(&s, 500, 1001, &h, &w, &t, &l); /* tall: 500*224/1001 = 111.888 -> 112 */
    assert_true(h == 224 && w == 112 && t == 0 && l == 56);
    nn_preproc_geometry(&s, 3, 2, &h, &w, &t, &l); /* 149.33 -> 149, margin 75 split 37/38 */
    assert_true(h == 149 && w == 224 && t == 37 && l == 0);
    nn_preproc_geometry(&s, 10000, 1, &h, &w, &t, &l); /* at least one row */
    assert_true(h == 1 && w == 224 && t == 111);
    nn_preproc_geometry(&s, 7, 7, &h, &w, &t, &l);
    assert_true(h == 224 && w == 224 && t == 0 && l == 0);
    s.height = 100, s.width = 300;
    nn_preproc_geometry(&s, 400, 300, &h, &w, &t, &l); /* 400*100/300 = 133.33 */
    assert_true(h == 100 && w == 133 && t == 0 && l == 83);
    nn_preproc_geometry(&s, 90, 30, &h, &w, &t, &l); /* exactly 3:1 */
    assert_true(h == 100 && w == 300 && t == 0 && l == 0);
}

static nn_image make_image(uint32_t w, uint32_t h, uint32_t c, float (*f)(uint32_t, uint32_t,
                                                                            uint32_t))
{
    nn_image img = {.width = w, .height = h, .channels = c, .owned = true,
                    .data = malloc(sizeof(float) * w * h * c)};
    assert_non_null(img.data);
    for (uint32_t k = 0; k < c; k++)
        for (uint32_t y = 0; y < h; y++)
            for (uint32_t x = 0; x < w; x++)
                img.data[((size_t)k * h + y) * w + x] = f(k, y, x);
    return img;
}

static float constant(uint32_t k, uint32_t y, uint32_t x)
{
    (void)y, (void)x;
    return 0.25f + 0.25f * (float)k;
}

static float ramp(uint32_t k, uint32_t y, uint32_t x)
{
    return (float)((x * 7 + y * 3 + k * 11) % 101) / 100.0f;
}

static void test_resize_invariants(void **state)
{
    (void)state;
    nn_preproc_spec s = nn_preproc_spec_default();
    s.channels = 3;
    nn_preproc *pp;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(nn_preproc_new(&s, &pp, &err), XR_OK);
    size_t n = nn_preproc_output_floats(pp);
    assert_int_equal(n, 3 * 224 * 224);
    float *out = malloc(n * sizeof(float));
    /* same size: an exact copy */
    nn_image img = make_image(224, 224, 3, ramp);
    assert_int_equal(nn_preproc_run(pp, &img, out, n, &err), XR_OK);
    assert_memory_equal(out, img.data, n * sizeof(float));
    nn_image_done(&img);
    /* a constant stays constant (weights sum to 1) when up- or down-scaling */
    uint32_t sizes[][2] = {{1, 1}, {3000, 17}, {5, 900}, {225, 223}};
    for (size_t i = 0; i < 4; i++) {
        img = make_image(sizes[i][0], sizes[i][1], 3, constant);
        assert_int_equal(nn_preproc_run(pp, &img, out, n, &err), XR_OK);
        for (size_t j = 0; j < n; j++)
            assert_true(fabsf(out[j] - constant((uint32_t)(j / (224 * 224)), 0, 0)) < 1e-6f);
        nn_image_done(&img);
    }
    /* wrong output size is a programming error */
    img = make_image(4, 4, 3, ramp);
    assert_int_equal(nn_preproc_run(pp, &img, out, n - 1, &err), XR_E_INTERNAL);
    nn_image_done(&img);
    free(out);
    pp = nn_preproc_free(pp);
    assert_null(pp);
}

static void test_letterbox_replicate_normalize(void **state)
{
    (void)state;
    nn_preproc_spec s = nn_preproc_spec_default();
    s.height = 8, s.width = 16, s.resize = NN_RESIZE_LETTERBOX;
    s.mean[0] = 0.5f, s.mean[1] = 0.25f, s.mean[2] = 0.0f;
    s.std[0] = 0.5f, s.std[1] = 2.0f, s.std[2] = 0.3f;
    nn_preproc *pp;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(nn_preproc_new(&s, &pp, &err), XR_OK);
    float out[3 * 8 * 16];
    nn_image img = make_image(40, 40, 1, constant); /* square into 8x16: 8x8 at left 4 */
    assert_int_equal(nn_preproc_run(pp, &img, out, 3 * 8 * 16, &err), XR_OK);
    for (uint32_t c = 0; c < 3; c++)
        for (uint32_t y = 0; y < 8; y++)
            for (uint32_t x = 0; x < 16; x++) {
                float v = out[(c * 8 + y) * 16 + x];
                float raw = (x >= 4 && x < 12) ? 0.25f : 0.0f; /* padding is 0 before Normalize */
                assert_true(fabsf(v - (raw - s.mean[c]) / s.std[c]) < 1e-6f);
            }
    nn_image_done(&img);
    /* 3-channel image into a 1-channel model: refused */
    s.channels = 1;
    nn_preproc *pp1;
    assert_int_equal(nn_preproc_new(&s, &pp1, &err), XR_OK);
    img = make_image(4, 4, 3, ramp);
    assert_int_equal(nn_preproc_run(pp1, &img, out, 8 * 16, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "read it as gray"));
    nn_image_done(&img);
    nn_preproc_free(pp1);
    nn_preproc_free(pp);
}

static void test_scratch_reuse(void **state)
{
    (void)state;
    nn_preproc_spec s = nn_preproc_spec_default();
    s.resize = NN_RESIZE_LETTERBOX;
    nn_preproc *warm, *fresh;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(nn_preproc_new(&s, &warm, &err), XR_OK);
    size_t n = nn_preproc_output_floats(warm);
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    uint32_t sizes[][2] = {{900, 700}, {31, 45}, {1200, 300}, {31, 45}, {224, 224}, {900, 700}};
    for (size_t i = 0; i < 6; i++) {
        nn_image img = make_image(sizes[i][0], sizes[i][1], 1, ramp);
        assert_int_equal(nn_preproc_run(warm, &img, a, n, &err), XR_OK);
        assert_int_equal(nn_preproc_new(&s, &fresh, &err), XR_OK);
        assert_int_equal(nn_preproc_run(fresh, &img, b, n, &err), XR_OK);
        assert_memory_equal(a, b, n * sizeof(float));
        nn_preproc_free(fresh);
        nn_image_done(&img);
    }
    free(a);
    free(b);
    nn_preproc_free(warm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_parse_good),
        cmocka_unit_test(test_spec_parse_errors),
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_resize_invariants),
        cmocka_unit_test(test_letterbox_replicate_normalize),
        cmocka_unit_test(test_scratch_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
