/*
 * Configuration loader: the shipped file, defaults, and every kind of bad file with its message
 * (file:line:column, key path, what was expected).
 */
#include <setjmp.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

static const char *shipped_path;

static xregd_config *load_ok(const char *yaml)
{
    xregd_config *cfg = NULL;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = config_load_buffer(yaml, strlen(yaml), "t.yaml", &cfg, &err);
    if (rc)
        fail_msg("unexpected error: %s", err.msg);
    return cfg;
}

/* Load yaml expecting failure; the message must equal want. */
static void load_fails(const char *yaml, xr_code want_code, const char *want_msg)
{
    xregd_config *cfg = NULL;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = config_load_buffer(yaml, strlen(yaml), "t.yaml", &cfg, &err);
    assert_null(cfg);
    if (rc != want_code)
        fail_msg("code %d (%s), want %d; message: %s", rc, xr_code_name(rc), want_code, err.msg);
    assert_string_equal(err.msg, want_msg);
}

static void test_shipped_file(void **state)
{
    (void)state;
    xregd_config *cfg = NULL;
    xr_error err = XR_ERROR_INIT;
    if (config_load(shipped_path, &cfg, &err))
        fail_msg("%s", err.msg);
    assert_string_equal(cfg->dicom.ae_title, "XREG");
    assert_int_equal(cfg->dicom.port, 11112);
    assert_string_equal(cfg->state_dir, "/var/lib/xreg");
    assert_string_equal(cfg->spool.dir, "/var/lib/xreg/spool");
    assert_int_equal(cfg->spool.max_bytes, 10LL * 1024 * 1024 * 1024);
    assert_string_equal(cfg->database.conninfo, "");
    assert_string_equal(cfg->log.level, "info");
    config_free(cfg);
}

/* The shipped file must equal the defaults: every key documented with its default value. */
static void test_shipped_equals_defaults(void **state)
{
    (void)state;
    xregd_config *a = NULL, *b = load_ok("");
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(config_load(shipped_path, &a, &err), XR_OK);
    assert_int_equal(config_diff_non_reloadable(a, b, NULL, NULL), 0);
    assert_int_equal(a->spool.max_bytes, b->spool.max_bytes);
    assert_int_equal(a->database.retry_initial_ms, b->database.retry_initial_ms);
    assert_int_equal(a->database.retry_max_ms, b->database.retry_max_ms);
    assert_string_equal(a->log.level, b->log.level);
    config_free(a);
    config_free(b);

    /* every schema key appears in the shipped file, at its full dotted path (block style, two
     * spaces per level, as the file is written), with its default value */
    FILE *f = fopen(shipped_path, "r");
    assert_non_null(f);
    char line[1024], stack[8][64], found[256][128];
    size_t n_found = 0;
    while (fgets(line, sizeof(line), f)) {
        size_t indent = strspn(line, " ");
        const char *k = line + indent;
        const char *colon = strchr(k, ':');
        if (*k == '#' || *k == '\n' || !colon || indent % 2 || indent / 2 >= 8)
            continue;
        size_t depth = indent / 2;
        snprintf(stack[depth], sizeof(stack[depth]), "%.*s", (int)(colon - k), k);
        char full[128] = "";
        for (size_t d = 0; d <= depth; d++)
            snprintf(full + strlen(full), sizeof(full) - strlen(full), "%s%s", d ? "." : "",
                     stack[d]);
        assert_true(n_found < 256);
        snprintf(found[n_found++], sizeof(found[0]), "%s", full);
    }
    fclose(f);
    a = NULL;
    b = load_ok("");
    assert_int_equal(config_load(shipped_path, &a, &err), XR_OK);
    for (size_t i = 0; i < config_n_keys(); i++) {
        const char *path = config_key_path(i);
        bool present = false;
        for (size_t j = 0; j < n_found && !present; j++)
            present = strcmp(found[j], path) == 0;
        if (!present)
            fail_msg("key \"%s\" is not in %s", path, shipped_path);
        /* The shipped file names the demo models (default: off); they must exist. */
        if (strncmp(path, "models.", 7) == 0 && strstr(path, ".path")) {
            const char *const *v = NULL;
            if (strcmp(path, "models.body_part.path") == 0)
                v = (const char *const *)&a->models.body_part.path;
            else if (strcmp(path, "models.implant.path") == 0)
                v = (const char *const *)&a->models.implant.path;
            else
                v = (const char *const *)&a->models.fracture.path;
            if ((*v)[0] && access(*v, R_OK) != 0)
                fail_msg("%s names \"%s\", which is not readable", path, *v);
            continue;
        }
        if (!config_key_equal(a, b, i))
            fail_msg("key \"%s\" in %s differs from its default", path, shipped_path);
    }
    config_free(a);
    config_free(b);
}

static void test_models_and_batching(void **state)
{
    (void)state;
    xregd_config *cfg = load_ok("");
    assert_string_equal(cfg->models.body_part.path, "");
    assert_string_equal(cfg->models.fracture.body_parts, "PELVIS,HIP");
    assert_true(isnan(cfg->models.implant.threshold_value));
    assert_int_equal(cfg->pipeline.batch_max, 8);
    assert_int_equal(cfg->pipeline.batch_wait_ms, 20);
    assert_int_equal(cfg->pipeline.threads_per_worker, 1);
    config_free(cfg);

    /* relative model paths are taken from the configuration file's folder */
    const char *yaml = "models:\n  body_part: {path: ../models/bp.onnx}\n"
                       "  implant: {path: /abs/im.onnx, threshold: \"0.3\"}\n"
                       "  fracture: {path: fr.onnx, body_parts: \"*\"}\n"
                       "pipeline: {batch_max: 256, batch_wait_ms: 0, threads_per_worker: 4}\n";
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(config_load_buffer(yaml, strlen(yaml), "/etc/xreg/xregd.yaml", &cfg, &err),
                     XR_OK);
    assert_string_equal(cfg->models.body_part.path, "/etc/xreg/../models/bp.onnx");
    assert_string_equal(cfg->models.implant.path, "/abs/im.onnx");
    assert_string_equal(cfg->models.fracture.path, "/etc/xreg/fr.onnx");
    assert_true(cfg->models.implant.threshold_value > 0.299 &&
                cfg->models.implant.threshold_value < 0.301);
    assert_true(isnan(cfg->models.fracture.threshold_value));
    assert_int_equal(cfg->pipeline.batch_max, 256);
    config_free(cfg);

    load_fails("pipeline: {batch_max: 0}\n", XR_E_CONFIG,
               "t.yaml:1:23: pipeline.batch_max: 0 is out of range (expected 1 to 256) (expected "
               "an integer)");
    load_fails("pipeline: {batch_max: 257}\n", XR_E_CONFIG,
               "t.yaml:1:23: pipeline.batch_max: 257 is out of range (expected 1 to 256) "
               "(expected an integer)");
    load_fails("pipeline: {batch_wait_ms: 10001}\n", XR_E_CONFIG,
               "t.yaml:1:27: pipeline.batch_wait_ms: 10001 is out of range (expected 0 to 10000) "
               "(expected an integer)");
    load_fails("pipeline: {threads_per_worker: 0}\n", XR_E_CONFIG,
               "t.yaml:1:32: pipeline.threads_per_worker: 0 is out of range (expected 1 to 256) "
               "(expected an integer)");
    load_fails("models: {implant: {threshold: \"1\"}}\n", XR_E_CONFIG,
               "t.yaml:1:31: models.implant.threshold: \"1\" is not a number between 0 and 1 "
               "(expected a number between 0 and 1 (exclusive), or \"\" for the model's own "
               "xreg.threshold)");
    load_fails("models: {fracture: {threshold: abc}}\n", XR_E_CONFIG,
               "t.yaml:1:32: models.fracture.threshold: \"abc\" is not a number between 0 and 1 "
               "(expected a number between 0 and 1 (exclusive), or \"\" for the model's own "
               "xreg.threshold)");
    load_fails("models: {fracture: {body_parts: \"pelvis\"}}\n", XR_E_CONFIG,
               "t.yaml:1:33: models.fracture.body_parts: \"pelvis\" is not a DICOM defined term "
               "(upper-case letters, digits, space, underscore) (expected comma-separated DICOM "
               "Body Part Examined terms (upper case, e.g. \"PELVIS,HIP\"), or \"*\" for every "
               "body part)");
    load_fails("models: {fracture: {body_parts: \"PELVIS,,HIP\"}}\n", XR_E_CONFIG,
               "t.yaml:1:33: models.fracture.body_parts: a term of 0 characters in "
               "\"PELVIS,,HIP\" (each must have 1 to 16) (expected comma-separated DICOM Body "
               "Part Examined terms (upper case, e.g. \"PELVIS,HIP\"), or \"*\" for every body "
               "part)");
    load_fails("models: {colour: {path: x}}\n", XR_E_CONFIG,
               "t.yaml:1:10: models.colour: unrecognized configuration key");
}

static void test_values_and_sizes(void **state)
{
    (void)state;
    xregd_config *cfg = load_ok("state_dir: /srv/x\n"
                                "dicom:\n"
                                "  ae_title: \"CR ROOM 1\"\n"
                                "  port: 104\n"
                                "  bind: \"::1\"\n"
                                "spool:\n"
                                "  max_bytes: 512MiB\n"
                                "database:\n"
                                "  conninfo: host=db dbname=xreg\n"
                                "pipeline: {workers: 64}\n");
    assert_string_equal(cfg->dicom.ae_title, "CR ROOM 1");
    assert_int_equal(cfg->dicom.port, 104);
    assert_string_equal(cfg->dicom.bind, "::1");
    assert_int_equal(cfg->spool.max_bytes, 512LL * 1024 * 1024);
    assert_string_equal(cfg->spool.dir, "/srv/x/spool");
    assert_string_equal(cfg->database.conninfo, "host=db dbname=xreg");
    assert_int_equal(cfg->pipeline.workers, 64);
    config_free(cfg);
    cfg = load_ok("spool: {dir: /data/spool, max_bytes: 2G}\n");
    assert_string_equal(cfg->spool.dir, "/data/spool");
    assert_int_equal(cfg->spool.max_bytes, 2LL * 1024 * 1024 * 1024);
    config_free(cfg);
}

static void test_limits(void **state)
{
    (void)state;
    config_free(load_ok("dicom: {port: 65535}\n"));
    config_free(load_ok("dicom: {port: 1}\n"));
    load_fails("dicom:\n  port: 65536\n", XR_E_CONFIG,
               "t.yaml:2:9: dicom.port: 65536 is out of range (expected 1 to 65535) (expected an "
               "integer)");
    load_fails("dicom: {port: 0}\n", XR_E_CONFIG,
               "t.yaml:1:15: dicom.port: 0 is out of range (expected 1 to 65535) (expected an "
               "integer)");
    config_free(load_ok("pipeline: {workers: 64}\n"));
    load_fails("pipeline: {workers: 65}\n", XR_E_CONFIG,
               "t.yaml:1:21: pipeline.workers: 65 is out of range (expected 1 to 64) (expected "
               "an integer)");
    config_free(load_ok("dicom: {max_associations: 1024}\n"));
    load_fails("dicom: {max_associations: 1025}\n", XR_E_CONFIG,
               "t.yaml:1:27: dicom.max_associations: 1025 is out of range (expected 1 to 1024) "
               "(expected an integer)");
    config_free(load_ok("spool: {max_bytes: 64KiB}\ndicom: {max_object_bytes: 1KiB}\n"));
    load_fails("spool: {max_bytes: 65535}\n", XR_E_CONFIG,
               "t.yaml:1:20: spool.max_bytes: 65535 is out of range (expected 65536 to "
               "1125899906842624) (expected a size in bytes (optionally with KiB, MiB, GiB or "
               "TiB))");
    config_free(load_ok("dicom: {ae_title: ABCDEFGHIJKLMNOP}\n"));
    load_fails("dicom: {ae_title: ABCDEFGHIJKLMNOPQ}\n", XR_E_CONFIG,
               "t.yaml:1:19: dicom.ae_title: must be 1 to 16 characters, got 17 (expected 1 to "
               "16 printable ASCII characters, no backslash)");
}

static void test_unknown_and_duplicate_keys(void **state)
{
    (void)state;
    load_fails("dicom:\n  ae_title: XREG\n  colour: blue\n", XR_E_CONFIG,
               "t.yaml:3:3: dicom.colour: unrecognized configuration key");
    load_fails("dicomm:\n  port: 1\n", XR_E_CONFIG,
               "t.yaml:1:1: dicomm: unrecognized configuration key");
    load_fails("dicom:\n  port: 104\n  port: 105\n", XR_E_CONFIG,
               "t.yaml:3:3: dicom.port: duplicate key");
    load_fails("dicom: {port: 1}\ndicom: {port: 2}\n", XR_E_CONFIG,
               "t.yaml:2:9: dicom.port: duplicate key");
}

static void test_wrong_types(void **state)
{
    (void)state;
    load_fails("dicom:\n  port: eleven\n", XR_E_CONFIG,
               "t.yaml:2:9: dicom.port: \"eleven\" is not an integer (expected an integer)");
    load_fails("dicom:\n  port: \"104\"\n", XR_E_CONFIG,
               "t.yaml:2:9: dicom.port: expected an integer, got a quoted string");
    load_fails("dicom:\n  port: [1, 2]\n", XR_E_CONFIG,
               "t.yaml:2:9: dicom.port: expected an integer, got a list");
    load_fails("dicom: 5\n", XR_E_CONFIG, "t.yaml:1:8: dicom: expected a mapping of keys");
    load_fails("spool: {max_bytes: 10GB}\n", XR_E_CONFIG,
               "t.yaml:1:20: spool.max_bytes: \"10GB\" is not a size (a number with an optional "
               "KiB, MiB, GiB or TiB) (expected a size in bytes (optionally with KiB, MiB, GiB "
               "or TiB))");
    load_fails("spool: {max_bytes: 99999999999TiB}\n", XR_E_CONFIG,
               "t.yaml:1:20: spool.max_bytes: \"99999999999TiB\" is out of range (expected a "
               "size in bytes (optionally with KiB, MiB, GiB or TiB))");
    load_fails("log: {level: loud}\n", XR_E_CONFIG,
               "t.yaml:1:14: log.level: unrecognized level \"loud\" (expected one of error, "
               "warning, notice, info, debug)");
    load_fails("dicom: {bind: localhost}\n", XR_E_CONFIG,
               "t.yaml:1:15: dicom.bind: \"localhost\" is not a numeric IPv4 or IPv6 address "
               "(expected a numeric IPv4 or IPv6 address, or \"\" for all)");
    load_fails("state_dir: var/lib/xreg\n", XR_E_CONFIG,
               "t.yaml:1:12: state_dir: \"var/lib/xreg\" is not an absolute path (expected an "
               "absolute path)");
    load_fails("dicom: {ae_title: \"A\\\\B\"}\n", XR_E_CONFIG,
               "t.yaml:1:19: dicom.ae_title: contains character 0x5c, which an AE title cannot "
               "hold (expected 1 to 16 printable ASCII characters, no backslash)");
    load_fails("- a\n- b\n", XR_E_CONFIG, "t.yaml:1:1: the top level must be a mapping of keys");
    load_fails("{? [a]: 1}\n", XR_E_CONFIG, "t.yaml:1:4: keys must be plain strings, not "
                                            "mappings or lists");
}

static void test_syntax_and_documents(void **state)
{
    (void)state;
    xregd_config *cfg = NULL;
    xr_error err = XR_ERROR_INIT;
    const char *bad = "dicom:\n  port: 1\n bad indent: [\n";
    assert_int_equal(config_load_buffer(bad, strlen(bad), "t.yaml", &cfg, &err), XR_E_CONFIG);
    assert_non_null(strstr(err.msg, "t.yaml:3:"));
    assert_non_null(strstr(err.msg, "invalid YAML"));
    load_fails("dicom: {port: 1}\n---\nlog: {level: info}\n", XR_E_CONFIG,
               "t.yaml:3:1: a second YAML document is not allowed in the configuration");
    /* an empty file or a comment-only file means all defaults */
    cfg = load_ok("# nothing\n");
    assert_int_equal(cfg->dicom.port, 11112);
    config_free(cfg);
}

static void test_cross_key(void **state)
{
    (void)state;
    load_fails("database: {retry_initial_ms: 5000, retry_max_ms: 1000}\n", XR_E_CONFIG,
               "t.yaml: database.retry_max_ms (1000) must not be less than "
               "database.retry_initial_ms (5000)");
}

static void test_missing_file(void **state)
{
    (void)state;
    xregd_config *cfg = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(config_load("/nonexistent/xregd.yaml", &cfg, &err), XR_E_IO);
    assert_string_equal(err.msg, "reading configuration: could not open "
                                 "\"/nonexistent/xregd.yaml\": No such file or directory");
}

static void count_diff(void *userdata, const char *path)
{
    (void)path;
    (*(int *)userdata)++;
}

static void test_reload_diff(void **state)
{
    (void)state;
    xregd_config *a = load_ok("dicom: {port: 104}\nlog: {level: debug}\n");
    xregd_config *b = load_ok("dicom: {port: 105}\nlog: {level: info}\nspool: {max_bytes: 1GiB}\n");
    int n = 0;
    /* only the port needs a restart; log.level and spool.max_bytes are reloadable */
    assert_int_equal(config_diff_non_reloadable(a, b, count_diff, &n), 1);
    assert_int_equal(n, 1);
    config_free(a);
    config_free(b);
}

int main(int argc, char **argv)
{
    shipped_path = argc > 1 ? argv[1] : "etc/xregd.yaml";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_file),
        cmocka_unit_test(test_shipped_equals_defaults),
        cmocka_unit_test(test_values_and_sizes),
        cmocka_unit_test(test_models_and_batching),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_unknown_and_duplicate_keys),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_syntax_and_documents),
        cmocka_unit_test(test_cross_key),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_reload_diff),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
