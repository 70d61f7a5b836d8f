/*
 * eval-stats: hand-computed cases and degenerate inputs (one class only, all correct, ties,
 * empty, bad probabilities): a clear error or a defined value with its *_defined flag, never a
 * NaN. The comparison with scikit-learn/scipy on random data is tests/unit/daemon/test_eval.py.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "eval-stats.h"

static eval_result *compute(size_t n, size_t k, const int *truth, const float *probs, int positive,
                            double thr)
{
    eval_input in = {.n = n, .n_classes = k, .truth = truth, .probs = probs,
                     .positive = positive, .threshold = thr};
    eval_result *r = NULL;
    xr_error err = XR_ERROR_INIT;
    if (eval_stats_compute(&in, &r, &err))
        fail_msg("%s", err.msg);
    return r;
}

static xr_code compute_err(size_t n, size_t k, const int *truth, const float *probs,
                           int positive, double thr, const char *want)
{
    eval_input in = {.n = n, .n_classes = k, .truth = truth, .probs = probs,
                     .positive = positive, .threshold = thr};
    eval_result *r = NULL;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = eval_stats_compute(&in, &r, &err);
    assert_null(r);
    if (!strstr(err.msg, want))
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, want);
    return rc;
}

/* 4 binary samples: scores 0.9(+) 0.8(-) 0.6(+) 0.2(-): AUC = 3/4 */
static void test_binary_hand(void **state)
{
    (void)state;
    int t[4] = {1, 0, 1, 0};
    float p[8] = {0.1f, 0.9f, 0.2f, 0.8f, 0.4f, 0.6f, 0.8f, 0.2f};
    eval_result *r = compute(4, 2, t, p, 1, 0.5);
    assert_true(r->binary);
    assert_true(r->auc.defined);
    assert_float_equal(r->auc.value, 0.75, 1e-12);
    assert_true(r->auc.ci_defined);
    assert_true(r->auc.lo >= 0 && r->auc.hi <= 1 && r->auc.lo <= 0.75 && r->auc.hi >= 0.75);
    /* at 0.5: predicted + for 0.9, 0.8, 0.6: tp 2 fp 1 tn 1 fn 0 */
    assert_int_equal(r->at_threshold.tp, 2);
    assert_int_equal(r->at_threshold.fp, 1);
    assert_int_equal(r->at_threshold.tn, 1);
    assert_int_equal(r->at_threshold.fn, 0);
    assert_float_equal(r->accuracy, 0.75, 1e-12);
    /* log loss = -(ln .9 + ln .2 + ln .6 + ln .8)/4 */
    assert_float_equal(r->log_loss, -(log(0.9) + log(0.2) + log(0.6) + log(0.8)) / 4, 1e-6);
    /* kappa: po .75, pe = (.5*.25)+(.5*.75) = .5 -> .5 */
    assert_true(r->kappa_defined);
    assert_float_equal(r->kappa, 0.5, 1e-12);
    /* Youden: thresholds .9 (J=.5), .8 (J=0), .6 (J=.5), .2 (J=0): highest on ties = .9 */
    assert_float_equal(r->youden.threshold, 0.9f, 1e-7);
    assert_float_equal(r->youden.youden, 0.5, 1e-12);
    assert_int_equal(r->n_roc, 5);
    assert_float_equal(r->roc[4].fpr, 1, 0);
    assert_float_equal(r->roc[4].tpr, 1, 0);
    /* Wilson for 2/2: [0.3424, 1] */
    assert_float_equal(r->at_threshold.sensitivity.lo, 0.34237, 1e-4);
    assert_float_equal(r->at_threshold.sensitivity.hi, 1.0, 1e-12);
    eval_result_free(r);
}

static void test_wilson(void **state)
{
    (void)state;
    /* 8/10: Wilson 95% [0.4902, 0.9433] (R binom::binom.wilson) */
    eval_ci c = eval_wilson(8, 10, EVAL_Z95);
    assert_float_equal(c.lo, 0.4902, 1e-4);
    assert_float_equal(c.hi, 0.9433, 1e-4);
    c = eval_wilson(0, 0, EVAL_Z95);
    assert_false(c.defined);
    assert_false(c.ci_defined);
    c = eval_wilson(0, 5, EVAL_Z95);
    assert_float_equal(c.lo, 0, 0);
}

/* Ties: all scores equal -> AUC 0.5 exactly, one ROC step. */
static void test_ties(void **state)
{
    (void)state;
    int t[6] = {0, 1, 0, 1, 1, 0};
    float p[12];
    for (int i = 0; i < 6; i++) {
        p[2 * i] = 0.5f;
        p[2 * i + 1] = 0.5f;
    }
    eval_result *r = compute(6, 2, t, p, 1, 0.5);
    assert_float_equal(r->auc.value, 0.5, 1e-12);
    assert_int_equal(r->n_roc, 2);
    assert_true(r->auc.ci_defined);
    assert_false(isnan(r->auc.lo) || isnan(r->auc.hi));
    eval_result_free(r);
}

/* One class only in the truth: AUC and specificity undefined, not NaN; kappa undefined when
 * every prediction is that class too. */
static void test_one_class(void **state)
{
    (void)state;
    int t[3] = {1, 1, 1};
    float p[6] = {0.2f, 0.8f, 0.3f, 0.7f, 0.1f, 0.9f};
    eval_result *r = compute(3, 2, t, p, 1, 0.5);
    assert_false(r->auc.defined);
    assert_false(r->auc.ci_defined);
    assert_false(r->at_threshold.specificity.defined);
    assert_true(r->at_threshold.sensitivity.defined);
    assert_false(r->kappa_defined);
    assert_float_equal(r->accuracy, 1, 0);
    assert_false(r->classes[0].precision_defined);
    assert_false(r->classes[0].recall_defined);
    assert_false(r->classes[0].f1_defined); /* class 0 neither present nor predicted */
    assert_true(r->classes[1].f1_defined);
    assert_float_equal(r->macro_f1, 1, 0);
    /* a class present but never predicted: precision n/a, F1 0, counted as 0 in the macro */
    int t2[2] = {0, 1};
    float p2[4] = {0.2f, 0.8f, 0.3f, 0.7f};
    eval_result *r2 = compute(2, 2, t2, p2, -1, 0);
    assert_false(r2->classes[0].precision_defined);
    assert_true(r2->classes[0].f1_defined);
    assert_float_equal(r2->classes[0].f1, 0, 0);
    assert_float_equal(r2->macro_precision, 0.25, 1e-12);
    assert_float_equal(r2->macro_f1, (0 + 2.0 / 3) / 2, 1e-12);
    eval_result_free(r2);
    eval_result_free(r);
}

/* All correct, multi-class: kappa 1, every F1 1, log loss small; confusion diagonal. */
static void test_all_correct(void **state)
{
    (void)state;
    int t[3] = {0, 1, 2};
    float p[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    eval_result *r = compute(3, 3, t, p, -1, 0);
    assert_false(r->binary);
    assert_float_equal(r->kappa, 1, 1e-12);
    assert_float_equal(r->accuracy, 1, 0);
    assert_float_equal(r->log_loss, 0, 1e-12);
    for (int c = 0; c < 3; c++) {
        assert_float_equal(r->classes[c].f1, 1, 0);
        assert_int_equal(r->confusion[c * 3 + c], 1);
    }
    /* a certain wrong answer is clipped at 1e-15, not infinite */
    float q[9] = {0, 1, 0, 0, 1, 0, 0, 0, 1};
    eval_result *r2 = compute(3, 3, t, q, -1, 0);
    assert_float_equal(r2->log_loss, -log(1e-15) / 3, 1e-9);
    assert_true(isfinite(r2->log_loss));
    eval_result_free(r2);
    eval_result_free(r);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    int t[2] = {0, 1};
    float p[4] = {0.5f, 0.5f, 0.2f, 0.8f};
    assert_int_equal(compute_err(0, 2, t, p, -1, 0, "no samples"), XR_E_INPUT);
    assert_int_equal(compute_err(2, 1, t, p, -1, 0, "need at least 2"), XR_E_INPUT);
    int tb[2] = {0, 2};
    assert_int_equal(compute_err(2, 2, tb, p, -1, 0, "sample 1: true class 2"), XR_E_INPUT);
    float pn[4] = {0.5f, 0.5f, NAN, 0.8f};
    assert_int_equal(compute_err(2, 2, t, pn, -1, 0, "sample 1: probability nan"), XR_E_INPUT);
    float ps[4] = {0.5f, 0.6f, 0.2f, 0.8f};
    assert_int_equal(compute_err(2, 2, t, ps, -1, 0, "sample 0: probabilities sum to 1.1"),
                     XR_E_INPUT);
    assert_int_equal(compute_err(2, 2, t, p, 1, 1.0, "threshold 1"), XR_E_INPUT);
    assert_int_equal(compute_err(2, 2, t, p, 2, 0.5, "positive class 2"), XR_E_INPUT);
}

/* The reliability bins partition the samples; ECE of a perfectly calibrated toy is 0. */
static void test_reliability(void **state)
{
    (void)state;
    int t[4] = {1, 0, 1, 1};
    float p[8] = {0.25f, 0.75f, 0.25f, 0.75f, 0.25f, 0.75f, 0.25f, 0.75f};
    eval_result *r = compute(4, 2, t, p, 1, 0.5);
    assert_int_equal(r->bins[7].n, 4);
    assert_float_equal(r->bins[7].observed, 0.75, 1e-12);
    assert_float_equal(r->ece, 0, 1e-7);
    eval_result_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_binary_hand), cmocka_unit_test(test_wilson),
        cmocka_unit_test(test_ties),        cmocka_unit_test(test_one_class),
        cmocka_unit_test(test_all_correct), cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_reliability),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
