/*
 * Deflated objects (1.2.840.10008.1.2.1.99) through dicom_header_read*: the data set is
 * inflated into a bounded memfd before DCMTK parses it, so a few hundred bytes claiming a 4 GB
 * element are refused with a clear error, not a 4 GB allocation. Objects are built here with
 * zlib so every byte is known.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include "dicom-test-util.h"
#include "dicom.h"

#define TS_EXPLICIT_LE "1.2.840.10008.1.2.1"
#define TS_DEFLATED "1.2.840.10008.1.2.1.99"

struct buf {
    unsigned char *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put_u16(struct buf *b, uint16_t v)
{
    unsigned char x[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    put(b, x, 2);
}

static void put_u32(struct buf *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    put(b, x, 4);
}

/* Explicit VR LE string element (short-length VR), padded to even length with pad. */
static void put_str(struct buf *b, uint16_t group, uint16_t elem, const char *vr, const char *s,
                    char pad)
{
    size_t n = strlen(s);
    put_u16(b, group);
    put_u16(b, elem);
    put(b, vr, 2);
    put_u16(b, (uint16_t)(n + (n & 1)));
    put(b, s, n);
    if (n & 1)
        put(b, &pad, 1);
}

/* The CR data set: the four UIDs, a study description, then extra (may be NULL). */
static void put_dataset(struct buf *b, const char *description)
{
    put_str(b, 0x0008, 0x0016, "UI", TU_CR_SOP_CLASS, '\0');
    put_str(b, 0x0008, 0x0018, "UI", TU_SOP_INSTANCE_UID, '\0');
    put_str(b, 0x0008, 0x1030, "LO", description, ' ');
    put_str(b, 0x0010, 0x0020, "LO", "PID-7", ' ');
    put_str(b, 0x0020, 0x000d, "UI", TU_STUDY_UID, '\0');
    put_str(b, 0x0020, 0x000e, "UI", TU_SERIES_UID, '\0');
}

/* Preamble, DICM and a meta group naming ts (group length included). */
static void put_meta(struct buf *b, const char *ts)
{
    unsigned char pre[128] = {0};
    put(b, pre, sizeof(pre));
    put(b, "DICM", 4);
    struct buf g = {0};
    put_u16(&g, 0x0002);
    put_u16(&g, 0x0001);
    put(&g, "OB\0\0", 4);
    put_u32(&g, 2);
    put(&g, "\0\1", 2);
    put_str(&g, 0x0002, 0x0002, "UI", TU_CR_SOP_CLASS, '\0');
    put_str(&g, 0x0002, 0x0003, "UI", TU_SOP_INSTANCE_UID, '\0');
    put_str(&g, 0x0002, 0x0010, "UI", ts, '\0');
    put_u16(b, 0x0002);
    put_u16(b, 0x0000);
    put(b, "UL", 2);
    put_u16(b, 4);
    put_u32(b, (uint32_t)g.n);
    put(b, g.p, g.n);
    free(g.p);
}

/* Raw deflate (no zlib header), as PS3.5 A.5 requires. */
static void put_deflated(struct buf *b, const struct buf *in)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&z, in->n);
    unsigned char *out = malloc(cap);
    assert_non_null(out);
    z.next_in = in->p;
    z.avail_in = (uInt)in->n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    put(b, out, cap - z.avail_out);
    deflateEnd(&z);
    free(out);
}

/* A deflated CR whose data set ends with Pixel Data claiming 0xFFFFFFF0 bytes (16 present). */
static struct buf huge_claim_object(void)
{
    struct buf ds = {0}, obj = {0};
    put_dataset(&ds, "huge claim");
    put_u16(&ds, 0x7fe0);
    put_u16(&ds, 0x0010);
    put(&ds, "OW\0\0", 4);
    put_u32(&ds, 0xFFFFFFF0u);
    unsigned char px[16] = {1, 2, 3, 4};
    put(&ds, px, sizeof(px));
    put_meta(&obj, TS_DEFLATED);
    put_deflated(&obj, &ds);
    free(ds.p);
    return obj;
}

/*
 * Run fn with the address space capped a few hundred MB above what the process maps now, so a
 * 4 GB allocation fails loudly (std::bad_alloc -> XR_E_NOMEM, or a crash) instead of passing
 * unnoticed. Not under ASan, which reserves terabytes of shadow memory up front.
 */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_RLIMIT_AS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_RLIMIT_AS 0
#endif
#endif
#ifndef TEST_RLIMIT_AS
#define TEST_RLIMIT_AS 1
#endif

static struct rlimit cap_address_space(void)
{
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_AS, &old), 0);
#if TEST_RLIMIT_AS
    unsigned long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%lu", &pages), 1);
    fclose(f);
    rlim_t want = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (rlim_t)384 * 1024 * 1024;
    if (old.rlim_max == RLIM_INFINITY || want < old.rlim_max) {
        struct rlimit lim = {want, old.rlim_max};
        assert_int_equal(setrlimit(RLIMIT_AS, &lim), 0);
    }
#endif
    return old;
}

static void restore_address_space(struct rlimit old)
{
    assert_int_equal(setrlimit(RLIMIT_AS, &old), 0);
}

static void check_refused(xr_code rc, const xr_error *err, const char *name)
{
    if (rc != XR_E_INPUT && rc != XR_E_LIMIT)
        fail_msg("expected XR_E_INPUT or XR_E_LIMIT, got %s: %s (%s)", xr_code_name(rc), err->msg,
                 err->detail);
    if (name)
        assert_non_null(strstr(err->msg, name));
    /* says what is wrong: the data ends inside an element */
    assert_non_null(strstr(err->msg, "ends inside an element"));
}

static void test_huge_length_claim_is_refused(void **state)
{
    struct tu_fixture *f = *state;
    struct buf obj = huge_claim_object();
    assert_true(obj.n < 1024);
    char *path = tu_path(f->dir, "huge-claim.dcm");
    tu_write_file(path, obj.p, obj.n);

    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    struct rlimit old = cap_address_space();
    xr_code rc_file = dicom_header_read(path, &h, &err);
    xr_error err_file = err;
    xr_code rc_buf = dicom_header_read_buffer(obj.p, obj.n, &h, &err);
    restore_address_space(old);

    check_refused(rc_file, &err_file, "huge-claim.dcm");
    check_refused(rc_buf, &err, NULL);
    free(path);
    free(obj.p);
}

/* The fuzzer's regression input for the pixel helper must be refused by the header reader too. */
static void test_fuzz_regression_input(void **state)
{
    (void)state;
    const char *path = getenv("XR_DEFLATE_HUGE_CLAIM");
    if (!path)
        fail_msg("XR_DEFLATE_HUGE_CLAIM is not set (tests/unit/dicom/meson.build sets it)");
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    struct rlimit old = cap_address_space();
    xr_code rc = dicom_header_read(path, &h, &err);
    restore_address_space(old);
    if (rc != XR_E_INPUT && rc != XR_E_LIMIT)
        fail_msg("expected XR_E_INPUT or XR_E_LIMIT, got %s: %s", xr_code_name(rc), err.msg);
}

static void test_normal_deflated_object_reads(void **state)
{
    struct tu_fixture *f = *state;
    struct buf ds = {0}, obj = {0};
    put_dataset(&ds, "chest two views");
    /* a value longer than DCMTK's 4 KiB read length: loaded from the inflated memfd later */
    put_u16(&ds, 0x7fe0);
    put_u16(&ds, 0x0010);
    put(&ds, "OW\0\0", 4);
    put_u32(&ds, 65536);
    unsigned char *px = calloc(1, 65536);
    put(&ds, px, 65536);
    free(px);
    put_meta(&obj, TS_DEFLATED);
    put_deflated(&obj, &ds);
    free(ds.p);
    char *path = tu_path(f->dir, "deflated.dcm");
    tu_write_file(path, obj.p, obj.n);

    for (int buffer = 0; buffer < 2; buffer++) {
        dicom_header h;
        xr_error err = XR_ERROR_INIT;
        xr_code rc = buffer ? dicom_header_read_buffer(obj.p, obj.n, &h, &err)
                            : dicom_header_read(path, &h, &err);
        if (rc != XR_OK)
            fail_msg("%s: %s (%s)", xr_code_name(rc), err.msg, err.detail);
        assert_string_equal(h.transfer_syntax_uid, TS_DEFLATED);
        assert_string_equal(h.sop_class_uid, TU_CR_SOP_CLASS);
        assert_string_equal(h.sop_instance_uid, TU_SOP_INSTANCE_UID);
        assert_string_equal(h.study_instance_uid, TU_STUDY_UID);
        assert_string_equal(h.series_instance_uid, TU_SERIES_UID);
        assert_string_equal(h.study_description, "chest two views");
        assert_string_equal(h.patient_id, "PID-7");
        assert_true(h.has_pixel_data);
    }
    free(path);
    free(obj.p);
}

/* The deflated UID inside a data set (not the meta's Transfer Syntax UID) changes nothing. */
static void test_deflated_uid_in_data_set_of_plain_object(void **state)
{
    struct tu_fixture *f = *state;
    struct buf obj = {0};
    put_meta(&obj, TS_EXPLICIT_LE);
    put_dataset(&obj, TS_DEFLATED);
    char *path = tu_path(f->dir, "plain.dcm");
    tu_write_file(path, obj.p, obj.n);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = dicom_header_read(path, &h, &err);
    if (rc != XR_OK)
        fail_msg("%s: %s (%s)", xr_code_name(rc), err.msg, err.detail);
    assert_string_equal(h.transfer_syntax_uid, TS_EXPLICIT_LE);
    assert_string_equal(h.study_description, TS_DEFLATED);
    free(path);
    free(obj.p);
}

/* A truncated deflate stream: what inflated is parsed, and the truncation is reported. */
static void test_truncated_deflate_stream(void **state)
{
    (void)state;
    struct buf ds = {0}, obj = {0};
    put_dataset(&ds, "truncated");
    put_u16(&ds, 0x7fe0);
    put_u16(&ds, 0x0010);
    put(&ds, "OW\0\0", 4);
    put_u32(&ds, 4096);
    for (int i = 0; i < 4096; i++) {
        unsigned char c = (unsigned char)(i * 7919 >> 3);
        put(&ds, &c, 1);
    }
    put_meta(&obj, TS_DEFLATED);
    size_t meta_end = obj.n;
    put_deflated(&obj, &ds);
    free(ds.p);
    size_t n = meta_end + (obj.n - meta_end) / 2;
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = dicom_header_read_buffer(obj.p, n, &h, &err);
    assert_int_equal(rc, XR_E_INPUT);
    assert_non_null(strstr(err.msg, "not a DICOM file"));
    free(obj.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TU_WITH_DIR(test_huge_length_claim_is_refused),
        cmocka_unit_test(test_fuzz_regression_input),
        TU_WITH_DIR(test_normal_deflated_object_reads),
        TU_WITH_DIR(test_deflated_uid_in_data_set_of_plain_object),
        cmocka_unit_test(test_truncated_deflate_stream),
    };
    return cmocka_run_group_tests_name("dicom-deflate", tests, tu_dicom_group_setup,
                                       tu_dicom_group_teardown);
}
