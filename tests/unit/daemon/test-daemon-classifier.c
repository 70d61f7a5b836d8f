/*
 * classifier.h: loading and validating self-describing models (every metadata problem gives
 * XR_E_INPUT naming the key and what was expected), sha256, probabilities against PyTorch,
 * softmax, preprocessing of gray images and files. Models come from make_test_models.py (argv[1]
 * is its output folder).
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

#include "classifier.h"

static const char *dir;

static char *path_of(const char *name, const char *ext)
{
    static char buf[4096];
    snprintf(buf, sizeof(buf), "%s/%s%s", dir, name, ext);
    return buf;
}

static float *read_f32(const char *path, size_t *ret_n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *v = malloc((size_t)l);
    assert_non_null(v);
    assert_int_equal(fread(v, 1, (size_t)l, f), (size_t)l);
    fclose(f);
    *ret_n = (size_t)l / sizeof(float);
    return v;
}

static classifier *load_ok(const char *name, uint32_t batch)
{
    classifier *c = NULL;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = classifier_load(path_of(name, ".onnx"), batch, 1, &c, &err);
    if (rc)
        fail_msg("%s: %s (%s)", name, err.msg, err.detail);
    return c;
}

static void test_good_body(void **state)
{
    (void)state;
    /* the path is copied: the caller's string may go away (a reloaded configuration) */
    char *tmp = strdup(path_of("good-body", ".onnx"));
    classifier *c = NULL;
    xr_error err0 = XR_ERROR_INIT;
    assert_int_equal(classifier_load(tmp, 4, 1, &c, &err0), XR_OK);
    memset(tmp, 'x', strlen(tmp));
    free(tmp);
    assert_string_equal(classifier_info(c)->path, path_of("good-body", ".onnx"));
    classifier_free(c);
    c = load_ok("good-body", 4);
    const classifier_meta *m = classifier_info(c);
    assert_int_equal(m->task, CLASSIFIER_TASK_BODY_PART);
    assert_string_equal(m->name, "test-body-part");
    assert_string_equal(m->version, "1.0-test");
    assert_int_equal(m->n_labels, 3);
    assert_string_equal(m->labels[0], "chest");
    assert_string_equal(m->labels[2], "hand");
    assert_string_equal(m->dicom_terms[1], "KNEE");
    assert_int_equal(m->positive_index, -1);
    assert_null(m->positive_label);
    assert_null(m->placeholder);
    assert_int_equal(m->output, CLASSIFIER_OUTPUT_LOGITS);
    assert_non_null(m->metrics_json);
    assert_non_null(strstr(m->provenance, "random weights"));
    assert_int_equal(m->preproc.channels, 1);
    assert_int_equal(m->preproc.height, 32);
    assert_int_equal(m->preproc.resize, NN_RESIZE_LETTERBOX);
    assert_string_equal(m->preproc_fingerprint, "32x32 c1 letterbox mean=0.5 std=0.25");
    assert_int_equal(m->max_batch, 4);
    assert_int_equal(classifier_input_floats(c), 32 * 32);

    /* sha256 as Python's hashlib computed it */
    char want[80] = {0};
    FILE *f = fopen(path_of("good-body", ".sha256"), "r");
    assert_non_null(f);
    assert_non_null(fgets(want, sizeof(want), f));
    fclose(f);
    want[64] = '\0';
    assert_string_equal(m->sha256, want);
    classifier_free(c);
}

/* Probabilities equal PyTorch's for the same inputs (logits model: softmax applied by xreg;
 * probabilities model: used as they are). */
static void check_ref(const char *name)
{
    classifier *c = load_ok(name, 3);
    const classifier_meta *m = classifier_info(c);
    char ref_in[64], ref_out[64];
    snprintf(ref_in, sizeof(ref_in), "ref-%s", name);
    snprintf(ref_out, sizeof(ref_out), "ref-%s", name);
    size_t n_in, n_out;
    float *in = read_f32(path_of(ref_in, ".f32"), &n_in);
    float *want = read_f32(path_of(ref_out, ".probs"), &n_out);
    assert_int_equal(n_in, 3 * classifier_input_floats(c));
    assert_int_equal(n_out, 3 * m->n_labels);
    classifier_session *s;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(classifier_session_new(c, 1, &s, &err), XR_OK);
    float probs[3 * 8];
    assert_int_equal(classifier_run(s, 3, in, probs, &err), XR_OK);
    for (size_t i = 0; i < n_out; i++)
        assert_float_equal(probs[i], want[i], 2e-5);
    for (int b = 0; b < 3; b++) {
        double sum = 0;
        for (size_t k = 0; k < m->n_labels; k++)
            sum += probs[b * m->n_labels + k];
        assert_float_equal(sum, 1.0, 1e-5);
    }
    /* batch bounds */
    assert_int_equal(classifier_run(s, 0, in, probs, &err), XR_E_INPUT);
    assert_int_equal(classifier_run(s, 4, in, probs, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "[1, 3]"));
    classifier_session_free(s);
    free(in);
    free(want);
    classifier_free(c);
}

static void test_ref_body(void **state)
{
    (void)state;
    check_ref("good-body");
}

static void test_good_implant(void **state)
{
    (void)state;
    check_ref("good-implant");
    classifier *c = load_ok("good-implant", 1);
    const classifier_meta *m = classifier_info(c);
    assert_int_equal(m->task, CLASSIFIER_TASK_IMPLANT);
    assert_int_equal(m->positive_index, 1);
    assert_string_equal(m->positive_label, "present");
    assert_true(m->threshold_given);
    assert_float_equal(m->threshold, 0.3, 1e-12);
    assert_int_equal(m->output, CLASSIFIER_OUTPUT_PROBABILITIES);
    assert_string_equal(m->placeholder, "random weights: tests only");
    assert_null(m->dicom_terms);
    assert_int_equal(m->preproc.width, 20);
    assert_int_equal(m->preproc.height, 24);
    classifier_free(c);
}

/* Each bad model: XR_E_INPUT, and the message names the key and says what was expected. */
static void check_bad(const char *name, const char *key, const char *expect)
{
    classifier *c = NULL;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = classifier_load(path_of(name, ".onnx"), 1, 1, &c, &err);
    if (rc != XR_E_INPUT)
        fail_msg("%s: got %s: %s", name, xr_code_name(rc), err.msg);
    assert_null(c);
    if (!strstr(err.msg, key) || !strstr(err.msg, expect))
        fail_msg("%s: message \"%s\" lacks \"%s\" or \"%s\"", name, err.msg, key, expect);
    assert_non_null(strstr(err.msg, name)); /* the path is in the message */
}

static void test_bad_metadata(void **state)
{
    (void)state;
    check_bad("bad-no-task", "xreg.task", "body_part, implant or fracture");
    check_bad("bad-task", "xreg.task", "\"organ\"");
    check_bad("bad-label-count", "xreg.labels", "4 labels but output \"logits\" has 3 values");
    check_bad("bad-body-label", "xreg.labels", "\"toe\" is not a body part");
    check_bad("bad-dup-label", "xreg.labels", "\"chest\" appears twice");
    check_bad("bad-no-name", "xreg.name", "missing");
    check_bad("bad-output", "xreg.output", "expected logits or probabilities");
    check_bad("bad-no-input-size", "xreg.input_size", "missing");
    check_bad("bad-input-size", "xreg.input_size", "1x32x32");
    check_bad("bad-channels", "xreg.channels", "= 3");
    check_bad("bad-std", "xreg.std", "");
    check_bad("bad-metrics", "xreg.metrics", "not a valid JSON object");
    check_bad("bad-body-threshold", "xreg.threshold", "body_part");
    check_bad("bad-threshold", "xreg.threshold", "strictly between 0 and 1");
    check_bad("bad-no-positive", "xreg.positive_label", "required for task implant");
    check_bad("bad-positive", "xreg.positive_label", "\"yes\" is not one of xreg.labels");
    check_bad("bad-binary-labels", "xreg.labels", "expected absent,present");
}

static void count_problem(void *ud, const char *key, const char *msg)
{
    (void)msg;
    char *keys = ud;
    strcat(keys, key);
    strcat(keys, ";");
}

static void test_all_problems(void **state)
{
    (void)state;
    classifier *c = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(classifier_load(path_of("bad-multi", ".onnx"), 1, 1, &c, &err), XR_E_INPUT);
    assert_non_null(strstr(err.detail, "2 metadata problems"));

    nn_model *m;
    assert_int_equal(nn_model_load(path_of("bad-multi", ".onnx"), NULL, &m, &err), XR_OK);
    char keys[256] = "";
    assert_int_equal(classifier_check_model(m, count_problem, keys), 2);
    assert_string_equal(keys, "xreg.task;xreg.version;");
    nn_model_free(m);
    assert_int_equal(nn_model_load(path_of("good-body", ".onnx"), NULL, &m, &err), XR_OK);
    assert_int_equal(classifier_check_model(m, NULL, NULL), 0);
    nn_model_free(m);
}

static void test_load_errors(void **state)
{
    (void)state;
    classifier *c = NULL;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(classifier_load(path_of("missing", ".onnx"), 1, 1, &c, &err), XR_E_IO);
    assert_int_equal(classifier_load(path_of("not-an-image", ".txt"), 1, 1, &c, &err), XR_E_INPUT);
    assert_int_equal(classifier_load(path_of("good-body", ".onnx"), 0, 1, &c, &err), XR_E_INPUT);
    assert_null(c);
    assert_null(classifier_free(NULL));
    assert_null(classifier_session_free(NULL));
}

static void test_softmax(void **state)
{
    (void)state;
    float v[3] = {1, 2, 3};
    classifier_softmax(v, 3);
    double e1 = exp(1), e2 = exp(2), e3 = exp(3), s = e1 + e2 + e3;
    assert_float_equal(v[0], e1 / s, 1e-7);
    assert_float_equal(v[1], e2 / s, 1e-7);
    assert_float_equal(v[2], e3 / s, 1e-7);
    /* large logits: no overflow, no NaN */
    float w[2] = {1000, -1000};
    classifier_softmax(w, 2);
    assert_float_equal(w[0], 1.0, 0);
    assert_float_equal(w[1], 0.0, 0);
    float u[4] = {-5, -5, -5, -5};
    classifier_softmax(u, 4);
    for (int i = 0; i < 4; i++)
        assert_float_equal(u[i], 0.25, 1e-7);
    classifier_softmax(NULL, 0);
}

static void test_names(void **state)
{
    (void)state;
    assert_int_equal(classifier_task_from_string("fracture"), CLASSIFIER_TASK_FRACTURE);
    assert_int_equal(classifier_task_from_string("Fracture"), CLASSIFIER_TASK_MAX);
    assert_int_equal(classifier_task_from_string(NULL), CLASSIFIER_TASK_MAX);
    assert_string_equal(classifier_task_name(CLASSIFIER_TASK_BODY_PART), "body_part");
    assert_null(classifier_task_name(CLASSIFIER_TASK_MAX));
    assert_string_equal(classifier_body_part_term("pelvis_hip"), "PELVIS");
    assert_null(classifier_body_part_term("toe"));
    assert_string_equal(classifier_output_name(CLASSIFIER_OUTPUT_PROBABILITIES), "probabilities");
}

/* Letterbox + normalization of a gray image; a PNG through prepare_file equals the same pixels
 * through prepare_gray; non-images are refused with the path. */
static void test_prepare(void **state)
{
    (void)state;
    classifier *c = load_ok("good-body", 1);
    classifier_session *s;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(classifier_session_new(c, 1, &s, &err), XR_OK);
    float in[32 * 32], in2[32 * 32];
    /* 64 wide x 16 high constant 0.5: rows 12..19 hold (0.5-0.5)/0.25 = 0, padding -2 */
    float *gray = malloc(64 * 16 * sizeof(float));
    for (int i = 0; i < 64 * 16; i++)
        gray[i] = 0.5f;
    assert_int_equal(classifier_prepare_gray(s, gray, 64, 16, in, &err), XR_OK);
    assert_float_equal(in[0], -2.0, 1e-6);
    assert_float_equal(in[16 * 32 + 5], 0.0, 1e-6);
    assert_float_equal(in[31 * 32 + 31], -2.0, 1e-6);
    assert_int_equal(classifier_prepare_gray(s, gray, 0, 16, in, &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "empty image"));
    free(gray);

    /* gray.png: 40x30, left half 200, right half 128 */
    classifier_file_kind kind = CLASSIFIER_FILE_KIND_MAX;
    assert_int_equal(classifier_prepare_file(s, path_of("gray", ".png"), NULL, in, &kind, &err),
                     XR_OK);
    assert_int_equal(kind, CLASSIFIER_FILE_PNG);
    float *g = malloc(40 * 30 * sizeof(float));
    for (int y = 0; y < 30; y++)
        for (int x = 0; x < 40; x++)
            g[y * 40 + x] = (x < 20 ? 200 : 128) / 255.0f;
    assert_int_equal(classifier_prepare_gray(s, g, 40, 30, in2, &err), XR_OK);
    assert_memory_equal(in, in2, sizeof(in));
    free(g);

    assert_int_equal(classifier_prepare_file(s, path_of("not-an-image", ".txt"), NULL, in, &kind,
                                             &err), XR_E_INPUT);
    assert_non_null(strstr(err.msg, "not a DICOM file"));
    assert_non_null(strstr(err.msg, "not-an-image.txt"));
    assert_int_equal(classifier_prepare_file(s, path_of("nope", ".png"), NULL, in, &kind, &err),
                     XR_E_IO);
    assert_non_null(strstr(err.msg, "nope.png"));

    /* run the prepared PNG: a valid probability vector */
    float probs[3];
    assert_int_equal(classifier_run(s, 1, in2, probs, &err), XR_OK);
    assert_float_equal(probs[0] + probs[1] + probs[2], 1.0, 1e-5);
    classifier_session_free(s);
    classifier_free(c);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test-daemon-classifier MODELDIR\n");
        return 2;
    }
    dir = argv[1];
    if (dicom_global_init(NULL)) {
        fprintf(stderr, "dicom_global_init failed\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_body),     cmocka_unit_test(test_ref_body),
        cmocka_unit_test(test_good_implant),  cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_all_problems),  cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_softmax),       cmocka_unit_test(test_names),
        cmocka_unit_test(test_prepare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
