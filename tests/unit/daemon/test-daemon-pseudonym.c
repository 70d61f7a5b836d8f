/*
 * Pseudonymization (daemon/pseudonym.c): known HMAC answers (computed independently with
 * Python's hmac module), stability, keep/drop, the issuer and field separation, and each key
 * file problem with its message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "pseudonym.h"

#define KEY "0123456789abcdef0123456789abcdef"

static char dir[64];

static const char *write_key(const char *name, const char *content, mode_t mode)
{
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
    return path;
}

static xregd_config *config(const char *id, const char *name, const char *acc, const char *key)
{
    char yaml[512];
    snprintf(yaml, sizeof(yaml),
             "pseudonymize:\n  patient_id: %s\n  patient_name: %s\n  accession_number: %s\n"
             "  key_file: \"%s\"\n",
             id, name, acc, key);
    xregd_config *cfg = NULL;
    xr_error err = XR_ERROR_INIT;
    if (config_load_buffer(yaml, strlen(yaml), "t.yaml", &cfg, &err))
        fail_msg("config: %s", err.msg);
    return cfg;
}

static void header(dicom_header *h, const char *id, const char *issuer, const char *name,
                   const char *acc)
{
    memset(h, 0, sizeof(*h));
    snprintf(h->patient_id, sizeof(h->patient_id), "%s", id);
    snprintf(h->issuer_of_patient_id, sizeof(h->issuer_of_patient_id), "%s", issuer);
    snprintf(h->patient_name, sizeof(h->patient_name), "%s", name);
    snprintf(h->accession_number, sizeof(h->accession_number), "%s", acc);
}

static pseudonymizer *make(xregd_config *cfg)
{
    pseudonymizer *ps = NULL;
    xr_error err = XR_ERROR_INIT;
    if (pseudonymizer_new(cfg, &ps, &err))
        fail_msg("pseudonymizer_new: %s [%s]", err.msg, err.detail);
    return ps;
}

static void test_hmac_known_answers(void **state)
{
    (void)state;
    const char *key = write_key("k", KEY "\n", 0600); /* the newline is not part of the key */
    xregd_config *cfg = config("hmac", "hmac", "hmac", key);
    pseudonymizer *ps = make(cfg);
    assert_true(pseudonymizer_is_active(ps));
    dicom_header h;
    header(&h, "PAT-1", "", "DOE^JANE", "A123");
    pseudonymizer_apply(ps, &h);
    assert_string_equal(h.patient_id, "fad9e9d9e34ea6a8400b029a7808e8d1");
    assert_string_equal(h.patient_name, "ba5455e2ae999f86");
    assert_string_equal(h.accession_number, "7ca7520cb94a47be");
    assert_string_equal(h.issuer_of_patient_id, "");
    /* The issuer is part of the patient's pseudonym and is itself kept. */
    header(&h, "PAT-1", "HOSP", "", "");
    pseudonymizer_apply(ps, &h);
    assert_string_equal(h.patient_id, "37ca4bf95bf5ec98365706f91353e6f7");
    assert_string_equal(h.issuer_of_patient_id, "HOSP");
    /* Empty stays empty. */
    assert_string_equal(h.patient_name, "");
    assert_string_equal(h.accession_number, "");
    pseudonymizer_free(ps);
    config_free(cfg);
}

static void test_stable_and_keyed(void **state)
{
    (void)state;
    const char *key = write_key("k2", KEY, 0400);
    xregd_config *cfg = config("hmac", "keep", "drop", key);
    pseudonymizer *a = make(cfg), *b = make(cfg);
    dicom_header h1, h2;
    header(&h1, "12345", "", "ROE^RICHARD", "ACC9");
    header(&h2, "12345", "", "ROE^RICHARD", "ACC9");
    pseudonymizer_apply(a, &h1);
    pseudonymizer_apply(b, &h2); /* another instance, e.g. after a restart */
    assert_string_equal(h1.patient_id, h2.patient_id);
    assert_int_equal(strlen(h1.patient_id), 32);
    assert_string_equal(h1.patient_name, "ROE^RICHARD"); /* keep */
    assert_string_equal(h1.accession_number, "");        /* drop */
    /* Field separation: an accession number equal to a Patient ID gets another pseudonym. */
    xregd_config *cfg2 = config("hmac", "keep", "hmac", key);
    pseudonymizer *c = make(cfg2);
    header(&h2, "12345", "", "", "12345");
    pseudonymizer_apply(c, &h2);
    assert_string_equal(h2.patient_id, h1.patient_id);
    assert_true(strncmp(h2.accession_number, h2.patient_id, 16) != 0);
    /* Another key, other pseudonyms. */
    const char *other = write_key("k3", "another secret key of 32 bytes!!", 0600);
    xregd_config *cfg3 = config("hmac", "keep", "keep", other);
    pseudonymizer *d = make(cfg3);
    header(&h2, "12345", "", "", "");
    pseudonymizer_apply(d, &h2);
    assert_string_not_equal(h2.patient_id, h1.patient_id);
    pseudonymizer_free(a);
    pseudonymizer_free(b);
    pseudonymizer_free(c);
    pseudonymizer_free(d);
    config_free(cfg);
    config_free(cfg2);
    config_free(cfg3);
}

static void test_keep_by_default(void **state)
{
    (void)state;
    xregd_config *cfg = config_new_default();
    pseudonymizer *ps = make(cfg);
    assert_false(pseudonymizer_is_active(ps));
    dicom_header h;
    header(&h, "P", "I", "N^M", "A");
    pseudonymizer_apply(ps, &h);
    pseudonymizer_apply(NULL, &h);
    assert_string_equal(h.patient_id, "P");
    assert_string_equal(h.patient_name, "N^M");
    char what[200];
    pseudonymizer_describe(ps, what, sizeof(what));
    assert_string_equal(what, "off (identifiers kept)");
    pseudonymizer_free(ps);
    config_free(cfg);
}

static void expect_key_error(const char *path, const char *want)
{
    xregd_config *cfg = config("hmac", "keep", "keep", path);
    pseudonymizer *ps = (pseudonymizer *)0x1;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(pseudonymizer_new(cfg, &ps, &err), XR_E_CONFIG);
    assert_ptr_equal(ps, (pseudonymizer *)0x1);
    if (!strstr(err.msg, want))
        fail_msg("\"%s\" lacks \"%s\"", err.msg, want);
    assert_non_null(strstr(err.msg, "pseudonymize.key_file \""));
    config_free(cfg);
}

static void test_key_file_errors(void **state)
{
    (void)state;
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/none", dir);
    expect_key_error(missing, "cannot open: No such file or directory");
    expect_key_error(write_key("open", KEY, 0644), "is accessible to group or others (mode 0644)");
    expect_key_error(write_key("group", KEY, 0640), "(mode 0640)");
    expect_key_error(write_key("short", "0123456789abcdef0123456789abcde\n", 0600),
                     "holds 31 bytes but a key must have at least 32");
    expect_key_error(dir, "is not a regular file");
    char link_path[128];
    snprintf(link_path, sizeof(link_path), "%s/link", dir);
    unlink(link_path);
    assert_int_equal(symlink(write_key("target", KEY, 0600), link_path), 0);
    expect_key_error(link_path, "is a symbolic link");
    char *big = malloc(5000);
    memset(big, 'k', 4999);
    big[4999] = '\0';
    expect_key_error(write_key("big", big, 0600), "is 4999 bytes but a key must be at most 4096");
    free(big);
    /* Exactly at the limits is fine. */
    xregd_config *cfg = config("hmac", "keep", "keep", write_key("min", KEY, 0600));
    pseudonymizer *ps = make(cfg);
    pseudonymizer_free(ps);
    config_free(cfg);
}

static void test_config_errors(void **state)
{
    (void)state;
    static const struct {
        const char *yaml;
        const char *msg;
    } cases[] = {
        {"pseudonymize:\n  patient_id: hash\n",
         "t.yaml:2:15: pseudonymize.patient_id: unrecognized mode \"hash\" (expected keep, drop "
         "or hmac)"},
        {"pseudonymize:\n  accession_number: hmac\n",
         "t.yaml: pseudonymize.accession_number is hmac but pseudonymize.key_file is not set "
         "(expected the path of a secret key file)"},
        {"pseudonymize:\n  key_file: relative.key\n",
         "t.yaml:2:13: pseudonymize.key_file: \"relative.key\" is not an absolute path (expected "
         "an absolute path, or \"\" when no field is hmac)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xregd_config *cfg = NULL;
        xr_error err = XR_ERROR_INIT;
        assert_int_equal(config_load_buffer(cases[i].yaml, strlen(cases[i].yaml), "t.yaml", &cfg,
                                            &err),
                         XR_E_CONFIG);
        assert_string_equal(err.msg, cases[i].msg);
    }
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/xrt-pseudo-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hmac_known_answers), cmocka_unit_test(test_stable_and_keyed),
        cmocka_unit_test(test_keep_by_default),    cmocka_unit_test(test_key_file_errors),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
