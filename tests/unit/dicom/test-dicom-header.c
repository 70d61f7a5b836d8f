/*
 * dicom_header_read / dicom_header_read_buffer: field values, absent attributes, every kind of
 * bad input (garbage, empty, truncated, overlong values), byte orders and compressed objects.
 * Fixtures are made at run time with dump2dcm and dcmcjpeg (paths from meson).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dicom-test-util.h"
#include "dicom.h"

static void check_cr_fields(const dicom_header *h, const char *ts)
{
    assert_string_equal(h->sop_class_uid, TU_CR_SOP_CLASS);
    assert_string_equal(h->sop_instance_uid, TU_SOP_INSTANCE_UID); /* odd length: NUL pad gone */
    assert_string_equal(h->study_instance_uid, TU_STUDY_UID);
    assert_string_equal(h->series_instance_uid, TU_SERIES_UID);
    assert_string_equal(h->transfer_syntax_uid, ts);
    assert_string_equal(h->patient_id, "PAT001");
    assert_string_equal(h->issuer_of_patient_id, "HOSP");
    assert_string_equal(h->patient_name, "Doe^Jane");
    assert_string_equal(h->patient_birth_date, "19700101");
    assert_string_equal(h->patient_sex, "F"); /* odd length: space pad gone */
    assert_string_equal(h->study_date, "20240131");
    assert_string_equal(h->study_time, "101530.123");
    assert_string_equal(h->accession_number, "ACC0001");
    assert_string_equal(h->study_description, "CHEST PA");
    assert_string_equal(h->series_description, "PA view");
    assert_string_equal(h->modality, "CR");
    assert_string_equal(h->body_part_examined, "CHEST");
    assert_string_equal(h->view_position, "PA");
    assert_string_equal(h->laterality, "L");
    assert_string_equal(h->manufacturer, "ACME Imaging");
    assert_string_equal(h->institution_name, "General Hospital");
    assert_string_equal(h->photometric_interpretation, "MONOCHROME2");
    assert_string_equal(h->specific_character_set, "ISO_IR 100");
    assert_int_equal(h->series_number, 3);
    assert_int_equal(h->instance_number, 7);
    assert_int_equal(h->rows, 64);
    assert_int_equal(h->columns, 48);
    assert_int_equal(h->number_of_frames, 1);
    assert_int_equal(h->bits_allocated, 16);
    assert_int_equal(h->bits_stored, 12);
    assert_int_equal(h->samples_per_pixel, 1);
    assert_true(h->has_pixel_data);
}

static void expect_input_error(const char *path, const char *needle)
{
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = dicom_header_read(path, &h, &err);
    if (rc != XR_E_INPUT || !strstr(err.msg, needle))
        fail_msg("%s: expected input error containing \"%s\", got %s: %s", path, needle,
                 xr_code_name(rc), err.msg);
    assert_int_equal(err.code, XR_E_INPUT);
}

static void test_good_file(void **state)
{
    struct tu_fixture *f = *state;
    char *path = tu_make_cr(f->dir, "cr.dcm", NULL, NULL, true);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    check_cr_fields(&h, "1.2.840.10008.1.2.1");

    /* The buffer reader gives exactly the same result. */
    size_t n;
    char *data = tu_read_file(path, &n);
    dicom_header hb;
    memset(&hb, 0x55, sizeof(hb));
    assert_int_equal(dicom_header_read_buffer(data, n, &hb, &err), XR_OK);
    check_cr_fields(&hb, "1.2.840.10008.1.2.1");
    assert_memory_equal(h.patient_name, hb.patient_name, sizeof(h.patient_name));
    free(data);
    free(path);
}

static void test_padding_and_image_laterality(void **state)
{
    struct tu_fixture *f = *state;
    /* Trailing spaces inside the value, ImageLaterality used when Laterality is absent. */
    char *path =
        tu_make_cr(f->dir, "pad.dcm",
                   "(0010,0020) LO [PAT9   ]\n(0020,0060) DEL\n(0020,0062) CS [R]\n", NULL, true);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_string_equal(h.patient_id, "PAT9");
    assert_string_equal(h.laterality, "R");
    free(path);
}

static void test_missing_attributes(void **state)
{
    struct tu_fixture *f = *state;
    char *path = tu_make_cr(f->dir, "min.dcm",
                            "(0020,000d) DEL\n(0020,000e) DEL\n(0020,0011) DEL\n(0020,0013) DEL\n"
                            "(0028,0010) DEL\n(0028,0011) DEL\n(0010,0010) DEL\n"
                            "(0008,0005) DEL\n",
                            NULL, false);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_string_equal(h.sop_instance_uid, TU_SOP_INSTANCE_UID);
    assert_string_equal(h.study_instance_uid, "");
    assert_string_equal(h.series_instance_uid, "");
    assert_string_equal(h.patient_name, "");
    assert_string_equal(h.specific_character_set, "");
    assert_int_equal(h.series_number, -1);
    assert_int_equal(h.instance_number, -1);
    assert_int_equal(h.rows, 0);
    assert_int_equal(h.columns, 0);
    assert_int_equal(h.number_of_frames, 1);
    assert_false(h.has_pixel_data);
    free(path);
}

static void test_missing_sop_uids(void **state)
{
    struct tu_fixture *f = *state;
    /* One of the two missing: a parseable object the caller refuses (A900), not garbage. */
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    char *path = tu_make_cr(f->dir, "nosopclass.dcm", "(0008,0016) DEL\n", NULL, true);
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_string_equal(h.sop_class_uid, "");
    assert_string_equal(h.sop_instance_uid, TU_SOP_INSTANCE_UID);
    free(path);
    path = tu_make_cr(f->dir, "nosopinst.dcm", "(0008,0018) DEL\n", NULL, true);
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_string_equal(h.sop_class_uid, TU_CR_SOP_CLASS);
    assert_string_equal(h.sop_instance_uid, "");
    free(path);
    /* Both missing: nothing says this is a DICOM object. */
    path = tu_make_cr(f->dir, "nosop.dcm", "(0008,0016) DEL\n(0008,0018) DEL\n", NULL, true);
    expect_input_error(path, "neither SOP Class UID (0008,0016) nor SOP Instance UID");
    free(path);
}

static void test_garbage(void **state)
{
    struct tu_fixture *f = *state;
    char *path = tu_path(f->dir, "garbage.bin");

    /* Pseudo-random bytes, several seeds. */
    uint8_t buf[4096];
    for (unsigned seed = 1; seed <= 20; seed++) {
        uint32_t x = seed * 2654435761u;
        for (size_t i = 0; i < sizeof(buf); i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf[i] = (uint8_t)x;
        }
        tu_write_file(path, buf, sizeof(buf));
        expect_input_error(path, "not a DICOM file");
        dicom_header h;
        xr_error err = XR_ERROR_INIT;
        assert_int_equal(dicom_header_read_buffer(buf, sizeof(buf), &h, &err), XR_E_INPUT);
    }

    /* All 0xFF: DCMTK reads tag (FFFF,FFFF) and stops; an empty data set must not pass. */
    memset(buf, 0xff, sizeof(buf));
    tu_write_file(path, buf, sizeof(buf));
    expect_input_error(path, "not a DICOM file");

    /* Text. */
    const char *text = "hello world, this is not dicom at all\nline two\n";
    tu_write_file(path, text, strlen(text));
    expect_input_error(path, "not a DICOM file");
    free(path);
}

static void test_meta_header_then_garbage(void **state)
{
    struct tu_fixture *f = *state;
    /*
     * What the SCP writes when a peer sends "this is not dicom\n" as a data set: a valid meta
     * header followed by those bytes.
     */
    char *good = tu_make_cr(f->dir, "good.dcm", NULL, NULL, true);
    size_t n;
    char *data = tu_read_file(good, &n);
    size_t off = tu_dataset_offset(data, n);
    assert_true(off > 0);

    const char *tails[] = {"this is not dicom\n", "", "\xff\xff\xff\xff\xff\xff\xff\xff",
                           "\x08\x00\x16\x00UI"};
    for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
        size_t tl = i == 3 ? 6 : strlen(tails[i]);
        char *bad = malloc(off + tl);
        memcpy(bad, data, off);
        memcpy(bad + off, tails[i], tl);
        char *path = tu_path(f->dir, "meta-garbage.dcm");
        tu_write_file(path, bad, off + tl);
        expect_input_error(path, "not a DICOM file");
        dicom_header h;
        xr_error err = XR_ERROR_INIT;
        assert_int_equal(dicom_header_read_buffer(bad, off + tl, &h, &err), XR_E_INPUT);
        free(path);
        free(bad);
    }
    free(data);
    free(good);
}

static void test_empty(void **state)
{
    struct tu_fixture *f = *state;
    char *path = tu_path(f->dir, "empty.dcm");
    tu_write_file(path, "", 0);
    expect_input_error(path, "empty");
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_header_read_buffer("", 0, &h, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "empty"));
    free(path);
}

static void test_truncated(void **state)
{
    struct tu_fixture *f = *state;
    char *good = tu_make_cr(f->dir, "good.dcm", NULL, NULL, true);
    size_t n;
    char *data = tu_read_file(good, &n);
    size_t off = tu_dataset_offset(data, n);
    char *path = tu_path(f->dir, "trunc.dcm");

    /* Inside the meta header, inside the data set header part, inside the pixel data. */
    size_t cuts[] = {100, 140, off - 5, off + 3, off + 60, n - 1000, n - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        tu_write_file(path, data, cuts[i]);
        expect_input_error(path, "not a DICOM file");
    }

    /*
     * Every prefix: never a crash, and never a success that invents values. A cut exactly
     * between two elements can be a valid (shorter) object; then the UIDs must be complete.
     */
    for (size_t len = 1; len < n; len += (len < off + 200 ? 1 : 97)) {
        dicom_header h;
        xr_error err = XR_ERROR_INIT;
        xr_code rc = dicom_header_read_buffer(data, len, &h, &err);
        if (rc == XR_OK) {
            /* A UID is there whole or not at all, and at least one is there. */
            if (h.sop_instance_uid[0])
                assert_string_equal(h.sop_instance_uid, TU_SOP_INSTANCE_UID);
            if (h.sop_class_uid[0])
                assert_string_equal(h.sop_class_uid, TU_CR_SOP_CLASS);
            assert_true(h.sop_instance_uid[0] || h.sop_class_uid[0]);
            assert_false(h.has_pixel_data);
        } else {
            assert_int_equal(rc, XR_E_INPUT);
        }
    }
    free(path);
    free(data);
    free(good);
}

static void test_value_lengths(void **state)
{
    struct tu_fixture *f = *state;
    char dump[512];
    char *path;
    dicom_header h;
    xr_error err = XR_ERROR_INIT;

    /* LO at its field size (64) and one past. */
    snprintf(dump, sizeof(dump), "(0010,0020) LO [%s]\n",
             "1234567890123456789012345678901234567890123456789012345678901234");
    path = tu_make_cr(f->dir, "lo64.dcm", dump, NULL, true);
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_int_equal(strlen(h.patient_id), 64);
    free(path);

    /* One past: descriptive values are repaired, not refused. */
    snprintf(dump, sizeof(dump), "(0010,0020) LO [%s]\n",
             "12345678901234567890123456789012345678901234567890123456789012345");
    path = tu_make_cr(f->dir, "lo65.dcm", dump, NULL, true);
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_int_equal(strlen(h.patient_id), 64);
    assert_int_equal(h.n_repairs, 1);
    assert_string_equal(h.repairs, "PatientID (0010,0020): 65 bytes, cut to 64");
    free(path);

    /* A 9-character date does not fit char[9]: cut (the registry then judges the date). */
    path = tu_make_cr(f->dir, "da9.dcm", "(0008,0020) DA [202401310]\n", NULL, true);
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_string_equal(h.study_date, "20240131");
    assert_non_null(strstr(h.repairs, "StudyDate (0008,0020): 9 bytes, cut to 8"));
    free(path);

    /* Way over: not even loaded. */
    size_t big_n = 60000;
    char *big = malloc(big_n);
    assert_non_null(big);
    memset(big, 'A', big_n - 1);
    big[big_n - 1] = '\0';
    char *bigdump = NULL;
    assert_true(asprintf(&bigdump, "(0008,1030) LO [%s]\n", big) > 0);
    const char *long_lines[] = {"+l", "100000", NULL};
    path = tu_make_cr(f->dir, "huge.dcm", bigdump, long_lines, true);
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_string_equal(h.study_description, "");
    if (!strstr(h.repairs, "StudyDescription (0008,1030): 60000 bytes, ignored"))
        fail_msg("repairs: \"%s\"", h.repairs);
    free(path);
    free(bigdump);
    free(big);

    /* IS that is not a number: absent. */
    path = tu_make_cr(f->dir, "badis.dcm", "(0020,0011) IS [x3]\n", NULL, true);
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_int_equal(h.series_number, -1);
    assert_non_null(strstr(h.repairs, "SeriesNumber (0020,0011): invalid value"));
    free(path);

    /* Number of Frames 0 is not a count of frames: one frame. */
    path = tu_make_cr(f->dir, "frames0.dcm", "(0028,0008) IS [0]\n", NULL, true);
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    assert_int_equal(h.number_of_frames, 1);
    assert_non_null(strstr(h.repairs, "NumberOfFrames (0028,0008)"));
    free(path);

    /* UIDs are never repaired: 65 characters is an error. */
    snprintf(dump, sizeof(dump), "(0020,000d) UI [%s]\n",
             "1.2.3.45678901234567890123456789012345678901234567890123456789012");
    path = tu_make_cr(f->dir, "uid65.dcm", dump, NULL, true);
    expect_input_error(path, "StudyInstanceUID (0020,000d)");
    free(path);
}

static void test_big_endian(void **state)
{
    struct tu_fixture *f = *state;
    const char *args[] = {"+tb", NULL};
    char *path = tu_make_cr(f->dir, "be.dcm", NULL, args, true);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    check_cr_fields(&h, "1.2.840.10008.1.2.2");
    free(path);
}

static void test_deflated(void **state)
{
    struct tu_fixture *f = *state;
    const char *args[] = {"+td", NULL};
    char *path = tu_make_cr(f->dir, "deflated.dcm", NULL, args, true);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    check_cr_fields(&h, "1.2.840.10008.1.2.1.99");
    size_t n;
    char *data = tu_read_file(path, &n);
    assert_int_equal(dicom_header_read_buffer(data, n, &h, &err), XR_OK);
    check_cr_fields(&h, "1.2.840.10008.1.2.1.99");
    free(data);
    free(path);
}

static void test_dataset_without_meta(void **state)
{
    struct tu_fixture *f = *state;
    const char *args[] = {"-F", "+ti", NULL};
    char *path = tu_make_cr(f->dir, "raw-implicit.dcm", NULL, args, true);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_header_read(path, &h, &err), XR_OK);
    check_cr_fields(&h, "1.2.840.10008.1.2");
    free(path);
}

static void test_jpeg_lossless(void **state)
{
    struct tu_fixture *f = *state;
    char *path = tu_make_cr(f->dir, "src.dcm", NULL, NULL, true);
    char *jpeg = tu_path(f->dir, "jpeg.dcm");
    char *argv[] = {(char *)tu_tool("DCMCJPEG"), path, jpeg, NULL};
    char *out = NULL;
    int rc = tu_run(argv, &out);
    if (rc != 0)
        fail_msg("dcmcjpeg failed (%d): %s", rc, out);
    free(out);
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(dicom_header_read(jpeg, &h, &err), XR_OK);
    check_cr_fields(&h, "1.2.840.10008.1.2.4.70");
    free(jpeg);
    free(path);
}

static void test_io_errors(void **state)
{
    struct tu_fixture *f = *state;
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    char *missing = tu_path(f->dir, "does-not-exist.dcm");
    assert_int_equal(dicom_header_read(missing, &h, &err), XR_E_IO);
    assert_int_equal(err.sys_errno, ENOENT);
    assert_non_null(strstr(err.msg, "does-not-exist.dcm"));
    free(missing);

    assert_int_equal(dicom_header_read(f->dir, &h, &err), XR_E_IO);
    assert_int_equal(err.sys_errno, EISDIR);

    /* A character device would never end (/dev/zero) or say nothing (/dev/null). */
    assert_int_equal(dicom_header_read("/dev/zero", &h, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "not a regular file"));
}

static void test_uid_name(void **state)
{
    (void)state;
    assert_non_null(dicom_uid_name("1.2.840.10008.5.1.4.1.1.1"));
    assert_non_null(dicom_uid_name("1.2.840.10008.1.2.4.70"));
    assert_null(dicom_uid_name("1.2.3.4.5.6.7.8.9"));
    assert_null(dicom_uid_name(""));
    assert_null(dicom_uid_name(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TU_WITH_DIR(test_good_file),
        TU_WITH_DIR(test_padding_and_image_laterality),
        TU_WITH_DIR(test_missing_attributes),
        TU_WITH_DIR(test_missing_sop_uids),
        TU_WITH_DIR(test_garbage),
        TU_WITH_DIR(test_meta_header_then_garbage),
        TU_WITH_DIR(test_empty),
        TU_WITH_DIR(test_truncated),
        TU_WITH_DIR(test_value_lengths),
        TU_WITH_DIR(test_big_endian),
        TU_WITH_DIR(test_deflated),
        TU_WITH_DIR(test_dataset_without_meta),
        TU_WITH_DIR(test_jpeg_lossless),
        TU_WITH_DIR(test_io_errors),
        cmocka_unit_test(test_uid_name),
    };
    return cmocka_run_group_tests_name("dicom-header", tests, tu_dicom_group_setup,
                                       tu_dicom_group_teardown);
}
