/*
 * eval-stats: the evaluation statistics of xregctl eval / compare (the thesis's model
 * evaluation), pure C over arrays of ground-truth class indices and predicted probabilities.
 *
 *     eval_input in = {.n = n, .n_classes = k, .truth = truth, .probs = probs,
 *                      .positive = 1, .threshold = 0.5};       // positive = -1: multi-class
 *     eval_result *r;
 *     if (eval_stats_compute(&in, &r, &err)) ...;
 *     printf("%g\n", r->accuracy);
 *     r = eval_result_free(r);
 *
 * Definitions (each checked against scikit-learn / scipy in tests/unit/daemon/test_eval.py):
 *   - predicted class: argmax of the probabilities (lowest index on ties); for binary tasks
 *     (positive >= 0) the positive class iff p(positive) >= threshold, so accuracy, kappa, the
 *     confusion matrix and precision/recall/F1 are at the configured threshold.
 *   - log loss: mean of -ln(max(p(true class), 1e-15)) (probabilities are used as given: they
 *     must sum to 1 within 1e-3).
 *   - Cohen's kappa (unweighted) on truth vs predicted; undefined when the expected agreement is
 *     1 (truth and predictions all one same class).
 *   - per class: precision = TP/(TP+FP) (undefined with no prediction of the class), recall =
 *     TP/(TP+FN) (undefined with no sample of the class), F1 = 2TP/(2TP+FP+FN) (= 2PR/(P+R); 0
 *     for a class never predicted; undefined only for a class neither present nor predicted);
 *     macro averages over the classes present in the truth or the predictions, an undefined
 *     precision/recall counting 0 (scikit-learn's average="macro", zero_division=0).
 *   - binary: AUC = Mann-Whitney (ties count 1/2); its variance by DeLong et al. 1988 (computed
 *     with midranks, Sun & Xu 2014), 95% CI = AUC +- 1.959964 SE clipped to [0,1] (as pROC);
 *     undefined without both classes, CI undefined with fewer than 2 of either.
 *     Sensitivity/specificity with Wilson score 95% intervals at the threshold and at Youden's
 *     optimum: the threshold among the distinct positive-class scores (positive iff score >= t)
 *     maximizing sensitivity + specificity - 1, the highest such score on ties.
 *   - multi-class: per class, one-vs-rest AUC (DeLong CI as above) and ROC curve of p(class).
 *   - reliability: 10 equal-width bins over [0,1] of the positive-class probability (binary) or
 *     of the top-class confidence (multi-class), with the mean predicted value and the observed
 *     frequency (positive rate / accuracy) per bin; ECE = sum over bins n_b/n |obs - pred|.
 * Every value that can be undefined has a *_defined flag (and JSON null / "n/a" in reports):
 * nothing is NaN.
 *
 * Thread rule: reentrant; results are plain data owned by the caller.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Samples one evaluation takes (keeps n x classes and the sort buffers bounded). */
#define EVAL_SAMPLES_MAX (50u * 1000u * 1000u)
#define EVAL_CLASSES_MAX 1024u
#define EVAL_RELIABILITY_BINS 10
#define EVAL_Z95 1.959963984540054

typedef struct eval_input {
    size_t n;           /* samples */
    size_t n_classes;   /* >= 2 */
    const int *truth;   /* n class indices in [0, n_classes) */
    const float *probs; /* n x n_classes, rows summing to 1 */
    int positive;       /* binary tasks: index of the positive class; -1 for multi-class */
    double threshold;   /* binary: decision threshold on p(positive), in (0,1) */
} eval_input;

typedef struct eval_ci {
    double value, lo, hi;
    bool defined;    /* value is defined */
    bool ci_defined; /* lo/hi are defined */
} eval_ci;

typedef struct eval_roc_point eval_roc_point;

typedef struct eval_class {
    size_t support;   /* samples of the class */
    size_t predicted; /* samples predicted as the class */
    double precision, recall, f1;
    bool precision_defined, recall_defined, f1_defined;
    /* multi-class only: one-vs-rest AUC (DeLong 95% CI) and ROC curve of p(class) */
    eval_ci auc;
    double auc_se;
    eval_roc_point *roc;
    size_t n_roc;
} eval_class;

typedef struct eval_operating_point {
    double threshold;
    size_t tp, fp, tn, fn;
    eval_ci sensitivity, specificity; /* Wilson 95% */
    double youden;                    /* sens + spec - 1 (0 when either is undefined) */
} eval_operating_point;

struct eval_roc_point {
    double threshold; /* positive iff score >= threshold; +inf for the (0,0) point */
    double fpr, tpr;
};

typedef struct eval_bin {
    size_t n;
    double mean_predicted, observed; /* defined when n > 0 */
} eval_bin;

typedef struct eval_result {
    size_t n, n_classes;
    size_t *confusion;  /* n_classes x n_classes: row = truth, column = predicted */
    eval_class *classes; /* n_classes */
    double accuracy;
    double log_loss;
    double kappa;
    bool kappa_defined;
    double macro_precision, macro_recall, macro_f1;
    bool macro_precision_defined, macro_recall_defined, macro_f1_defined;

    /* binary tasks only (binary = true) */
    bool binary;
    eval_ci auc; /* DeLong 95% */
    double auc_se;
    eval_operating_point at_threshold, youden;
    eval_roc_point *roc; /* n_roc points, threshold descending, (0,0) first and (1,1) last */
    size_t n_roc;

    eval_bin bins[EVAL_RELIABILITY_BINS];
    double ece;
} eval_result;

/*
 * Compute everything above. XR_E_INPUT for no samples, fewer than 2 classes, a truth index
 * out of range, a probability that is not finite or outside [0,1], a row not summing to 1
 * within 1e-3, a bad positive index or threshold (the message names the sample); XR_E_LIMIT
 * past EVAL_SAMPLES_MAX / EVAL_CLASSES_MAX; XR_E_NOMEM. Free *ret with eval_result_free.
 */
__attribute__((warn_unused_result)) xr_code eval_stats_compute(const eval_input *in,
                                                               eval_result **ret, xr_error *err);
eval_result *eval_result_free(eval_result *r);

/* AUC (Mann-Whitney, ties 1/2) and DeLong's variance of n_pos + n_neg scores: scores[i] with
 * positive[i]. *ret_var is undefined (false) with fewer than 2 of either class; the AUC with
 * none of one. */
__attribute__((warn_unused_result)) xr_code eval_auc_delong(const double *scores,
                                                            const bool *positive, size_t n,
                                                            double *ret_auc, bool *ret_auc_defined,
                                                            double *ret_var, bool *ret_var_defined,
                                                            xr_error *err);

/* Wilson score interval for k successes of n at normal quantile z; undefined for n = 0. */
eval_ci eval_wilson(size_t k, size_t n, double z);

#ifdef __cplusplus
}
#endif
