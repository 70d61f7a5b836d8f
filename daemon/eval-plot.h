/*
 * eval-plot: the PNG figures of xregctl eval / compare, drawn with cairo: ROC curves (one or
 * several models), a confusion matrix (counts and row-normalized shading), a reliability
 * diagram. Each writes one PNG file; XR_E_IO when the file cannot be written.
 * Thread rule: reentrant (cairo's toy text API is thread-safe since 1.10).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "xr-error.h"
#include "eval-stats.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eval_plot_curve {
    const char *name; /* legend */
    const eval_roc_point *points;
    size_t n_points;
    double auc;
    bool auc_defined;
} eval_plot_curve;

__attribute__((warn_unused_result)) xr_code eval_plot_roc(const char *path,
                                                          const eval_plot_curve *curves,
                                                          size_t n_curves, const char *title,
                                                          xr_error *err);
/* m: k x k counts, row = truth, column = predicted. */
__attribute__((warn_unused_result)) xr_code eval_plot_confusion(const char *path,
                                                                const char *const *labels,
                                                                size_t k, const size_t *m,
                                                                const char *title,
                                                                xr_error *err);
/* x axis: what the bins are over ("p(present)", "confidence"). */
__attribute__((warn_unused_result)) xr_code eval_plot_reliability(const char *path,
                                                                  const eval_bin *bins,
                                                                  size_t n_bins, double ece,
                                                                  const char *x_label,
                                                                  const char *y_label,
                                                                  const char *title,
                                                                  xr_error *err);

#ifdef __cplusplus
}
#endif
