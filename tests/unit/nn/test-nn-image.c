/*
 * Unit tests of nn/nn-image.h decoding: exact values for good PNG/JPEG files, and bad files
 * (truncated at every length, wrong CRC, zero and huge declared sizes, unsupported encodings)
 * giving the right code and a clear message, never a crash. Fixtures are made here with zlib and
 * libjpeg, so the test needs no files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include <jpeglib.h>

#include "nn-image.h"

/* ---- a minimal PNG encoder: one IDAT, filter 0 ------------------------------------------ */
typedef struct buf {
    uint8_t *p;
    size_t n;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    b->p = realloc(b->p, b->n + n);
    assert_non_null(b->p);
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put32(buf *b, uint32_t v)
{
    uint8_t x[4] = {v >> 24, v >> 16, v >> 8, v};
    put(b, x, 4);
}

static void put_chunk(buf *b, const char *type, const uint8_t *d, uint32_t n)
{
    put32(b, n);
    size_t at = b->n;
    put(b, type, 4);
    if (n)
        put(b, d, n);
    put32(b, (uint32_t)crc32(0, b->p + at, n + 4));
}

/* rows: height rows of rowbytes each (without filter bytes). */
static buf make_png(uint32_t w, uint32_t h, int depth, int ctype, const uint8_t *rows,
                    size_t rowbytes)
{
    buf b = {0};
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    put(&b, sig, 8);
    uint8_t ihdr[13] = {w >> 24, w >> 16, w >> 8, w, h >> 24, h >> 16, h >> 8, h,
                        (uint8_t)depth, (uint8_t)ctype, 0, 0, 0};
    put_chunk(&b, "IHDR", ihdr, 13);
    size_t raw_n = (rowbytes + 1) * h;
    uint8_t *raw = calloc(1, raw_n ? raw_n : 1);
    for (uint32_t y = 0; y < h && rows; y++)
        memcpy(raw + y * (rowbytes + 1) + 1, rows + y * rowbytes, rowbytes);
    uLongf zn = compressBound(raw_n);
    uint8_t *z = malloc(zn);
    assert_int_equal(compress(z, &zn, raw, raw_n), Z_OK);
    put_chunk(&b, "IDAT", z, (uint32_t)zn);
    put_chunk(&b, "IEND", NULL, 0);
    free(raw);
    free(z);
    return b;
}

/* ---- a JPEG encoder through libjpeg -------------------------------------------------------- */
static buf make_jpeg_ex(uint32_t w, uint32_t h, int components, J_COLOR_SPACE cs,
                        bool progressive)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    unsigned long n = 0;
    jpeg_mem_dest(&c, &out, &n);
    c.image_width = w;
    c.image_height = h;
    c.input_components = components;
    c.in_color_space = cs;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    if (progressive)
        jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    uint8_t *row = malloc((size_t)w * components);
    for (uint32_t y = 0; y < h; y++) {
        for (uint32_t x = 0; x < w * (uint32_t)components; x++)
            row[x] = (uint8_t)((x * 7 + y * 13) & 0xff);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(row);
    buf b = {malloc(n), n};
    memcpy(b.p, out, n);
    free(out);
    return b;
}

static buf make_jpeg(uint32_t w, uint32_t h, int components, J_COLOR_SPACE cs)
{
    return make_jpeg_ex(w, h, components, cs, false);
}

static xr_code decode(const buf *b, const nn_image_params *p, nn_image *img, xr_error *err)
{
    return nn_image_read_buffer(b->p, b->n, p, img, err);
}

/* ---- good files ---------------------------------------------------------------------------- */
static void test_png_gray8_values(void **state)
{
    (void)state;
    uint8_t px[6] = {0, 1, 127, 128, 254, 255};
    buf b = make_png(3, 2, 8, 0, px, 3);
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(decode(&b, NULL, &img, &err), XR_OK);
    assert_int_equal(img.width, 3);
    assert_int_equal(img.height, 2);
    assert_int_equal(img.channels, 1);
    for (int i = 0; i < 6; i++)
        assert_true(img.data[i] == (float)px[i] / 255.0f);
    nn_image_done(&img);
    assert_null(img.data);
    nn_image_done(&img); /* a zeroed struct is fine */
    free(b.p);
}

static void test_png_gray16_and_rgb(void **state)
{
    (void)state;
    uint8_t px16[4] = {0xff, 0xff, 0x12, 0x34}; /* 65535, 0x1234 */
    buf b = make_png(2, 1, 16, 0, px16, 4);
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(decode(&b, NULL, &img, &err), XR_OK);
    assert_true(img.data[0] == 1.0f);
    assert_true(img.data[1] == (float)0x1234 / 65535.0f);
    nn_image_done(&img);
    free(b.p);

    uint8_t rgb[6] = {10, 20, 30, 200, 100, 50};
    b = make_png(2, 1, 8, 2, rgb, 6);
    assert_int_equal(decode(&b, NULL, &img, &err), XR_OK);
    assert_int_equal(img.channels, 3);
    /* planar: R plane, G plane, B plane */
    assert_true(img.data[0] == 10 / 255.0f && img.data[1] == 200 / 255.0f);
    assert_true(img.data[2] == 20 / 255.0f && img.data[3] == 100 / 255.0f);
    assert_true(img.data[4] == 30 / 255.0f && img.data[5] == 50 / 255.0f);
    nn_image_done(&img);
    nn_image_params p = nn_image_params_default();
    p.color = NN_IMAGE_GRAY;
    assert_int_equal(decode(&b, &p, &img, &err), XR_OK);
    assert_int_equal(img.channels, 1);
    /* PIL's L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 */
    assert_true(img.data[0] == (float)((10 * 19595 + 20 * 38470 + 30 * 7471 + 0x8000) >> 16) /
                                   255.0f);
    nn_image_done(&img);
    free(b.p);
}

static void test_jpeg_good(void **state)
{
    (void)state;
    buf b = make_jpeg(33, 17, 1, JCS_GRAYSCALE);
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(decode(&b, NULL, &img, &err), XR_OK);
    assert_int_equal(img.width, 33);
    assert_int_equal(img.height, 17);
    assert_int_equal(img.channels, 1);
    for (size_t i = 0; i < 33 * 17; i++)
        assert_true(img.data[i] >= 0.0f && img.data[i] <= 1.0f);
    nn_image_done(&img);
    free(b.p);
    b = make_jpeg(8, 9, 3, JCS_RGB);
    assert_int_equal(decode(&b, NULL, &img, &err), XR_OK);
    assert_int_equal(img.channels, 3);
    nn_image_done(&img);
    free(b.p);
}

/* ---- bad files ----------------------------------------------------------------------------- */
static void test_not_an_image(void **state)
{
    (void)state;
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(nn_image_read_buffer("", 0, NULL, &img, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "it is empty"));
    assert_int_equal(nn_image_read_buffer("hello world", 11, NULL, &img, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "not a PNG or JPEG file"));
    assert_null(img.data);
    assert_int_equal(nn_image_read_file("/nonexistent/x.png", NULL, &img, &err), XR_E_IO);
    assert_non_null(strstr(err.msg, "\"/nonexistent/x.png\""));
}

static void test_png_truncated_everywhere(void **state)
{
    (void)state;
    uint8_t px[64 * 8];
    for (size_t i = 0; i < sizeof(px); i++)
        px[i] = (uint8_t)(i * 31);
    buf b = make_png(64, 8, 8, 0, px, 64);
    size_t iend = b.n - 12; /* the IEND chunk is not needed for the pixels */
    for (size_t n = 0; n < b.n; n++) {
        nn_image img = {0};
        xr_error err = XR_ERROR_INIT;
        xr_code rc = nn_image_read_buffer(b.p, n, NULL, &img, &err);
        if (n >= iend) {
            assert_int_equal(rc, XR_OK);
            nn_image_done(&img);
            continue;
        }
        assert_int_equal(rc, XR_E_INPUT);
        assert_null(img.data);
        if (n >= 8)
            assert_non_null(strstr(err.msg, "invalid PNG"));
    }
    /* the message names the problem */
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(nn_image_read_buffer(b.p, b.n - 40, NULL, &img, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "truncated"));
    free(b.p);
}

static void test_png_bad_crc(void **state)
{
    (void)state;
    uint8_t px[16] = {1, 2, 3};
    buf b = make_png(4, 4, 8, 0, px, 4);
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    b.p[8 + 8 + 13] ^= 0x55; /* IHDR's CRC */
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "IHDR"));
    assert_non_null(strstr(err.msg, "CRC"));
    b.p[8 + 8 + 13] ^= 0x55;
    b.p[b.n - 12 - 1] ^= 0x55; /* IDAT's CRC (the last byte before IEND) */
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "CRC"));
    assert_null(img.data);
    free(b.p);
}

static void set_ihdr_size(buf *b, uint32_t w, uint32_t h)
{
    uint8_t *d = b->p + 16;
    uint8_t v[8] = {w >> 24, w >> 16, w >> 8, w, h >> 24, h >> 16, h >> 8, h};
    memcpy(d, v, 8);
    uint32_t crc = (uint32_t)crc32(0, b->p + 12, 17);
    uint8_t c[4] = {crc >> 24, crc >> 16, crc >> 8, crc};
    memcpy(b->p + 29, c, 4);
}

static void test_png_zero_and_huge_size(void **state)
{
    (void)state;
    uint8_t px[4] = {0};
    buf b = make_png(2, 2, 8, 0, px, 2);
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    set_ihdr_size(&b, 0, 2);
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "invalid PNG"));
    /* a declared 100000 x 100000 image with a few bytes of data: refused before allocating */
    set_ihdr_size(&b, 100000, 100000);
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_LIMIT);
    assert_non_null(strstr(err.msg, "100000x100000 pixels but must be at most 16384x16384"));
    /* PNG's own maximum, 2^31-1 */
    set_ihdr_size(&b, 0x7fffffff, 1);
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_LIMIT);
    assert_null(img.data);
    free(b.p);
}

static void test_png_limits_at_and_past(void **state)
{
    (void)state;
    uint8_t px[16 * 16] = {0};
    buf b = make_png(16, 16, 8, 0, px, 16);
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    nn_image_params p = nn_image_params_default();
    p.max_width = p.max_height = 16;
    assert_int_equal(decode(&b, &p, &img, &err), XR_OK);
    nn_image_done(&img);
    p.max_width = 15;
    assert_int_equal(decode(&b, &p, &img, &err), XR_E_LIMIT);
    p.max_width = 16;
    p.max_height = 15;
    assert_int_equal(decode(&b, &p, &img, &err), XR_E_LIMIT);
    p = nn_image_params_default();
    p.max_decoded_bytes = 16 * 16 * 4;
    assert_int_equal(decode(&b, &p, &img, &err), XR_OK);
    nn_image_done(&img);
    p.max_decoded_bytes = 16 * 16 * 4 - 1;
    assert_int_equal(decode(&b, &p, &img, &err), XR_E_LIMIT);
    assert_non_null(strstr(err.msg, "decodes to 1024 bytes but must be at most 1023"));

    /* the file size limit of nn_image_read_file */
    char path[] = "/tmp/nn-image-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b.p, b.n), (ssize_t)b.n);
    close(fd);
    p = nn_image_params_default();
    p.max_file_bytes = b.n;
    assert_int_equal(nn_image_read_file(path, &p, &img, &err), XR_OK);
    nn_image_done(&img);
    p.max_file_bytes = b.n - 1;
    assert_int_equal(nn_image_read_file(path, &p, &img, &err), XR_E_LIMIT);
    assert_non_null(strstr(err.msg, path));
    unlink(path);
    free(b.p);
}

/* Offset of the SOF0 marker's height field. */
static size_t jpeg_sof(const buf *b)
{
    for (size_t i = 2; i + 9 < b->n; i++)
        if (b->p[i] == 0xff && (b->p[i + 1] == 0xc0 || b->p[i + 1] == 0xc2))
            return i + 5;
    fail_msg("no SOF marker");
    return 0;
}

static void test_jpeg_truncated_everywhere(void **state)
{
    (void)state;
    buf b = make_jpeg(40, 24, 3, JCS_RGB);
    size_t ok_from = b.n; /* without EOI (the last two bytes) it still decodes: see below */
    for (size_t n = 0; n < b.n; n++) {
        nn_image img = {0};
        xr_error err = XR_ERROR_INIT;
        xr_code rc = nn_image_read_buffer(b.p, n, NULL, &img, &err);
        if (rc == XR_OK) {
            if (n < ok_from)
                ok_from = n;
            nn_image_done(&img);
            continue;
        }
        assert_int_equal(rc, XR_E_INPUT);
        assert_null(img.data);
    }
    /* Only a cut inside the final EOI marker may still decode: every row was complete. */
    assert_true(ok_from >= b.n - 2);
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(nn_image_read_buffer(b.p, b.n / 2, NULL, &img, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "truncated"));
    free(b.p);
}

static void test_jpeg_bad_sizes_and_kinds(void **state)
{
    (void)state;
    buf b = make_jpeg(16, 16, 1, JCS_GRAYSCALE);
    size_t sof = jpeg_sof(&b);
    nn_image img = {0};
    xr_error err = XR_ERROR_INIT;
    /* declared 60000 x 60000: a limit error, not an allocation */
    b.p[sof] = 60000 >> 8;
    b.p[sof + 1] = 60000 & 0xff;
    b.p[sof + 2] = 60000 >> 8;
    b.p[sof + 3] = 60000 & 0xff;
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_LIMIT);
    assert_non_null(strstr(err.msg, "60000x60000"));
    /* zero height */
    b.p[sof] = b.p[sof + 1] = 0;
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "invalid JPEG"));
    /* a damaged marker segment */
    b.p[sof - 3] = 0x00;
    b.p[sof - 2] = 0x01;
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_INPUT);
    assert_null(img.data);
    free(b.p);

    b = make_jpeg(8, 8, 4, JCS_CMYK);
    assert_int_equal(decode(&b, NULL, &img, &err), XR_E_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "unsupported JPEG"));
    free(b.p);
}

/* A progressive JPEG whose last scan is repeated: libjpeg would decode every copy (a hostile
 * file can make decoding take minutes); past XR_JPEG_MAX_SCANS it is a limit error. */
static void test_jpeg_too_many_scans(void **state)
{
    (void)state;
    buf b = make_jpeg_ex(16, 16, 1, JCS_GRAYSCALE, true);
    size_t last_sos = 0;
    for (size_t i = 2; i + 1 < b.n; i++)
        if (b.p[i] == 0xff && b.p[i + 1] == 0xda)
            last_sos = i;
    assert_true(last_sos > 0);
    size_t scan = b.n - 2 - last_sos; /* the last scan, up to EOI */
    for (int copies = 0; copies < 2; copies++) {
        int n = copies ? 1100 : 100;
        buf m = {0};
        put(&m, b.p, b.n - 2);
        for (int k = 0; k < n; k++)
            put(&m, b.p + last_sos, scan);
        put(&m, b.p + b.n - 2, 2);
        nn_image img = {0};
        xr_error err = XR_ERROR_INIT;
        xr_code rc = decode(&m, NULL, &img, &err);
        if (copies == 0) {
            assert_int_equal(rc, XR_OK); /* a few extra scans are tolerated, as by PIL */
            nn_image_done(&img);
        } else {
            assert_int_equal(rc, XR_E_LIMIT);
            assert_non_null(strstr(err.msg, "more than 1000 progressive scans"));
        }
        free(m.p);
    }
    free(b.p);
}

static void test_garbage_never_crashes(void **state)
{
    (void)state;
    /* random bytes behind valid signatures */
    uint32_t seed = 12345;
    for (int round = 0; round < 400; round++) {
        uint8_t d[300];
        for (size_t i = 0; i < sizeof(d); i++) {
            seed = seed * 1103515245u + 12345u;
            d[i] = (uint8_t)(seed >> 16);
        }
        if (round % 2) {
            static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
            memcpy(d, sig, 8);
        } else {
            d[0] = 0xff, d[1] = 0xd8, d[2] = 0xff;
        }
        nn_image img = {0};
        xr_error err = XR_ERROR_INIT;
        xr_code rc = nn_image_read_buffer(d, sizeof(d), NULL, &img, &err);
        assert_true(rc == XR_E_INPUT || rc == XR_E_LIMIT || rc == XR_E_UNSUPPORTED || rc == XR_OK);
        nn_image_done(&img);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_gray8_values),
        cmocka_unit_test(test_png_gray16_and_rgb),
        cmocka_unit_test(test_jpeg_good),
        cmocka_unit_test(test_not_an_image),
        cmocka_unit_test(test_png_truncated_everywhere),
        cmocka_unit_test(test_png_bad_crc),
        cmocka_unit_test(test_png_zero_and_huge_size),
        cmocka_unit_test(test_png_limits_at_and_past),
        cmocka_unit_test(test_jpeg_truncated_everywhere),
        cmocka_unit_test(test_jpeg_bad_sizes_and_kinds),
        cmocka_unit_test(test_jpeg_too_many_scans),
        cmocka_unit_test(test_garbage_never_crashes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
