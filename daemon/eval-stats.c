/*
 * eval-stats: classification metrics for xregctl eval / compare; definitions in eval-stats.h.
 */
#include "eval-stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

eval_ci eval_wilson(size_t k, size_t n, double z)
{
    eval_ci r = {0};
    if (n == 0)
        return r;
    double nn = (double)n, p = (double)k / nn, z2 = z * z;
    double denom = 1 + z2 / nn;
    double center = (p + z2 / (2 * nn)) / denom;
    double half = z / denom * sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
    r.value = p;
    r.lo = center - half < 0 ? 0 : center - half;
    r.hi = center + half > 1 ? 1 : center + half;
    r.defined = r.ci_defined = true;
    return r;
}

typedef struct scored {
    double s;
    size_t i;
} scored;

static int cmp_scored(const void *a, const void *b)
{
    double x = ((const scored *)a)->s, y = ((const scored *)b)->s;
    if (x < y)
        return -1;
    if (x > y)
        return 1;
    size_t i = ((const scored *)a)->i, j = ((const scored *)b)->i;
    return i < j ? -1 : i > j;
}

/* Midranks (1-based, ties averaged) of v[0..n) into rank[v's index order]. buf: n scored. */
static void midranks(const double *v, size_t n, double *rank, scored *buf)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (scored){.s = v[i], .i = i};
    qsort(buf, n, sizeof(*buf), cmp_scored);
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && buf[b].s == buf[a].s)
            b++;
        double r = 0.5 * (double)(a + 1 + b); /* mean of ranks a+1..b */
        for (size_t k = a; k < b; k++)
            rank[buf[k].i] = r;
        a = b;
    }
}

xr_code eval_auc_delong(const double *scores, const bool *positive, size_t n, double *ret_auc,
                        bool *ret_auc_defined, double *ret_var, bool *ret_var_defined,
                        xr_error *err)
{
    size_t m = 0; /* positives */
    for (size_t i = 0; i < n; i++)
        m += positive[i];
    size_t k = n - m;
    *ret_auc_defined = m > 0 && k > 0;
    *ret_var_defined = m > 1 && k > 1;
    *ret_auc = 0;
    *ret_var = 0;
    if (!*ret_auc_defined)
        return XR_OK;
    xr_code rc = XR_OK;
    double *x = malloc(m * sizeof(double)), *y = malloc(k * sizeof(double));
    double *tz = malloc(n * sizeof(double)), *tx = malloc(m * sizeof(double));
    double *ty = malloc(k * sizeof(double)), *z = malloc(n * sizeof(double));
    scored *buf = malloc(n * sizeof(scored));
    if (!x || !y || !tz || !tx || !ty || !z || !buf) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory for %zu scores", n);
        goto out;
    }
    /* positives first, then negatives (Sun & Xu 2014 fast DeLong) */
    size_t a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        if (positive[i])
            x[a++] = scores[i];
        else
            y[b++] = scores[i];
    }
    memcpy(z, x, m * sizeof(double));
    memcpy(z + m, y, k * sizeof(double));
    midranks(x, m, tx, buf);
    midranks(y, k, ty, buf);
    midranks(z, n, tz, buf);
    double dm = (double)m, dk = (double)k;
    double auc = 0;
    for (size_t i = 0; i < m; i++)
        auc += tz[i] - tx[i];
    auc /= dm * dk;
    /* structural components: V10_i = (tz_i - tx_i) / k, V01_j = 1 - (tz_{m+j} - ty_j) / m */
    double s10 = 0, s01 = 0;
    if (*ret_var_defined) {
        for (size_t i = 0; i < m; i++) {
            double v = (tz[i] - tx[i]) / dk - auc;
            s10 += v * v;
        }
        for (size_t j = 0; j < k; j++) {
            double v = 1 - (tz[m + j] - ty[j]) / dm - auc;
            s01 += v * v;
        }
        s10 /= dm - 1;
        s01 /= dk - 1;
        *ret_var = s10 / dm + s01 / dk;
    }
    *ret_auc = auc;
out:
    free(x);
    free(y);
    free(tz);
    free(tx);
    free(ty);
    free(z);
    free(buf);
    return rc;
}

static void operating_point(eval_operating_point *op, double t, size_t tp, size_t fp, size_t tn,
                            size_t fn)
{
    op->threshold = t;
    op->tp = tp;
    op->fp = fp;
    op->tn = tn;
    op->fn = fn;
    op->sensitivity = eval_wilson(tp, tp + fn, EVAL_Z95);
    op->specificity = eval_wilson(tn, tn + fp, EVAL_Z95);
    op->youden = op->sensitivity.defined && op->specificity.defined
                     ? op->sensitivity.value + op->specificity.value - 1
                     : 0;
}

static int cmp_desc(const void *a, const void *b)
{
    return -cmp_scored(a, b);
}

/* ROC points (*ret_roc, malloc'ed, *ret_n) of class cls against the rest, and, when youden is
 * not NULL, Youden's optimum over the distinct scores of that class. */
static xr_code roc_one(const eval_input *in, size_t cls, eval_roc_point **ret_roc, size_t *ret_n,
                       eval_operating_point *youden, xr_error *err)
{
    size_t n = in->n, npos = 0;
    for (size_t i = 0; i < n; i++)
        npos += (size_t)in->truth[i] == cls;
    size_t nneg = n - npos;
    scored *s = malloc(n * sizeof(scored));
    eval_roc_point *roc = malloc((n + 2) * sizeof(eval_roc_point));
    if (!s || !roc) {
        free(s);
        free(roc);
        return xr_error_set(err, XR_E_NOMEM, "out of memory for the ROC curve");
    }
    for (size_t i = 0; i < n; i++)
        s[i] = (scored){.s = in->probs[i * in->n_classes + cls], .i = (size_t)in->truth[i] == cls};
    qsort(s, n, sizeof(*s), cmp_desc);
    size_t tp = 0, fp = 0, nr = 0;
    roc[nr++] = (eval_roc_point){.threshold = INFINITY, .fpr = 0, .tpr = 0};
    bool have = false;
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && s[b].s == s[a].s) {
            tp += s[b].i;
            fp += !s[b].i;
            b++;
        }
        roc[nr++] = (eval_roc_point){
            .threshold = s[a].s,
            .fpr = nneg ? (double)fp / (double)nneg : 0,
            .tpr = npos ? (double)tp / (double)npos : 0,
        };
        if (youden) {
            eval_operating_point op;
            operating_point(&op, s[a].s, tp, fp, nneg - fp, npos - tp);
            if (!have || op.youden > youden->youden) {
                *youden = op;
                have = true;
            }
        }
        a = b;
    }
    free(s);
    *ret_roc = roc;
    *ret_n = nr;
    return XR_OK;
}

/* AUC of class cls against the rest with its DeLong 95% CI. sc/pos: n scratch. */
static xr_code auc_one(const eval_input *in, size_t cls, double *sc, bool *pos, eval_ci *ret,
                       double *ret_se, xr_error *err)
{
    for (size_t i = 0; i < in->n; i++) {
        sc[i] = in->probs[i * in->n_classes + cls];
        pos[i] = (size_t)in->truth[i] == cls;
    }
    double var;
    bool var_defined;
    eval_ci a = {0};
    xr_code rc = eval_auc_delong(sc, pos, in->n, &a.value, &a.defined, &var, &var_defined, err);
    if (rc)
        return rc;
    *ret_se = 0;
    if (a.defined && var_defined) {
        *ret_se = sqrt(var > 0 ? var : 0);
        a.lo = a.value - EVAL_Z95 * *ret_se;
        a.hi = a.value + EVAL_Z95 * *ret_se;
        a.lo = a.lo < 0 ? 0 : a.lo;
        a.hi = a.hi > 1 ? 1 : a.hi;
        a.ci_defined = true;
    }
    *ret = a;
    return XR_OK;
}

xr_code eval_stats_compute(const eval_input *in, eval_result **ret, xr_error *err)
{
    if (!in || !ret)
        return xr_error_set(err, XR_E_INPUT, "eval_stats_compute: NULL argument");
    size_t n = in->n, k = in->n_classes;
    if (n == 0)
        return xr_error_set(err, XR_E_INPUT, "no samples to evaluate");
    if (k < 2)
        return xr_error_set(err, XR_E_INPUT, "%zu classes, need at least 2", k);
    if (n > EVAL_SAMPLES_MAX || k > EVAL_CLASSES_MAX)
        return xr_error_set(err, XR_E_LIMIT, "%zu samples of %zu classes, limits are %u and %u",
                            n, k, EVAL_SAMPLES_MAX, EVAL_CLASSES_MAX);
    if (in->positive >= 0 && (k != 2 || (size_t)in->positive >= k))
        return xr_error_set(err, XR_E_INPUT, "positive class %d for %zu classes (binary tasks "
                            "have 2 classes)", in->positive, k);
    if (in->positive >= 0 && !(in->threshold > 0 && in->threshold < 1))
        return xr_error_set(err, XR_E_INPUT, "threshold %g, must be strictly between 0 and 1",
                            in->threshold);
    for (size_t i = 0; i < n; i++) {
        if (in->truth[i] < 0 || (size_t)in->truth[i] >= k)
            return xr_error_set(err, XR_E_INPUT, "sample %zu: true class %d, must be in [0, %zu]",
                                i, in->truth[i], k - 1);
        double sum = 0;
        for (size_t c = 0; c < k; c++) {
            float p = in->probs[i * k + c];
            if (!isfinite(p) || p < 0 || p > 1)
                return xr_error_set(err, XR_E_INPUT, "sample %zu: probability %g of class %zu "
                                    "is not in [0,1]", i, (double)p, c);
            sum += p;
        }
        if (fabs(sum - 1) > 1e-3)
            return xr_error_set(err, XR_E_INPUT, "sample %zu: probabilities sum to %.6g, not 1",
                                i, sum);
    }

    xr_code rc = XR_OK;
    int *pred = malloc(n * sizeof(int));
    double *sc = NULL;
    bool *pos = NULL;
    eval_result *r = calloc(1, sizeof(*r));
    if (!pred || !r || !(r->confusion = calloc(k * k, sizeof(size_t))) ||
        !(r->classes = calloc(k, sizeof(eval_class)))) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto out;
    }
    r->n = n;
    r->n_classes = k;
    r->binary = in->positive >= 0;

    double ll = 0;
    size_t correct = 0;
    for (size_t i = 0; i < n; i++) {
        const float *p = in->probs + i * k;
        int best = 0;
        if (r->binary) {
            best = p[in->positive] >= in->threshold ? in->positive : 1 - in->positive;
        } else {
            for (size_t c = 1; c < k; c++)
                if (p[c] > p[best])
                    best = (int)c;
        }
        pred[i] = best;
        r->confusion[(size_t)in->truth[i] * k + (size_t)best]++;
        correct += best == in->truth[i];
        double pt = p[in->truth[i]];
        ll -= log(pt < 1e-15 ? 1e-15 : pt);
    }
    r->accuracy = (double)correct / (double)n;
    r->log_loss = ll / (double)n;

    /* kappa = (po - pe) / (1 - pe) */
    double pe = 0;
    for (size_t c = 0; c < k; c++) {
        size_t row = 0, col = 0;
        for (size_t d = 0; d < k; d++) {
            row += r->confusion[c * k + d];
            col += r->confusion[d * k + c];
        }
        r->classes[c].support = row;
        r->classes[c].predicted = col;
        pe += ((double)row / (double)n) * ((double)col / (double)n);
    }
    if (pe < 1 - 1e-12) {
        r->kappa = (r->accuracy - pe) / (1 - pe);
        r->kappa_defined = true;
    }

    /* Macro averages over the classes that occur in the truth or the predictions (scikit-learn's
     * label set), an undefined precision or recall counting as 0 there (its zero_division=0). */
    double sp = 0, sr = 0, sf = 0;
    size_t nm = 0;
    for (size_t c = 0; c < k; c++) {
        eval_class *ec = &r->classes[c];
        double tp = (double)r->confusion[c * k + c];
        if (ec->predicted) {
            ec->precision = tp / (double)ec->predicted;
            ec->precision_defined = true;
        }
        if (ec->support) {
            ec->recall = tp / (double)ec->support;
            ec->recall_defined = true;
        }
        /* F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted): defined whenever the class
         * occurs at all (0 for a class never predicted, as the limit of 2PR/(P+R)) */
        if (ec->support + ec->predicted) {
            ec->f1 = 2 * tp / (double)(ec->support + ec->predicted);
            ec->f1_defined = true;
            sp += ec->precision;
            sr += ec->recall;
            sf += ec->f1;
            nm++;
        }
    }
    r->macro_precision_defined = r->macro_recall_defined = r->macro_f1_defined = nm > 0;
    if (nm) {
        r->macro_precision = sp / (double)nm;
        r->macro_recall = sr / (double)nm;
        r->macro_f1 = sf / (double)nm;
    }

    /* reliability */
    double sum_p[EVAL_RELIABILITY_BINS] = {0}, sum_o[EVAL_RELIABILITY_BINS] = {0};
    for (size_t i = 0; i < n; i++) {
        const float *p = in->probs + i * k;
        double v, o;
        if (r->binary) {
            v = p[in->positive];
            o = in->truth[i] == in->positive;
        } else {
            v = p[pred[i]];
            o = pred[i] == in->truth[i];
        }
        int b = (int)(v * EVAL_RELIABILITY_BINS);
        if (b >= EVAL_RELIABILITY_BINS)
            b = EVAL_RELIABILITY_BINS - 1;
        r->bins[b].n++;
        sum_p[b] += v;
        sum_o[b] += o;
    }
    for (int b = 0; b < EVAL_RELIABILITY_BINS; b++)
        if (r->bins[b].n) {
            r->bins[b].mean_predicted = sum_p[b] / (double)r->bins[b].n;
            r->bins[b].observed = sum_o[b] / (double)r->bins[b].n;
            r->ece += (double)r->bins[b].n / (double)n *
                      fabs(r->bins[b].observed - r->bins[b].mean_predicted);
        }

    sc = malloc(n * sizeof(double));
    pos = malloc(n * sizeof(bool));
    if (!sc || !pos) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto out;
    }
    if (r->binary) {
        size_t tp = 0, fp = 0, tn = 0, fn = 0;
        for (size_t i = 0; i < n; i++) {
            bool p = in->truth[i] == in->positive, said = pred[i] == in->positive;
            tp += p && said;
            fp += !p && said;
            tn += !p && !said;
            fn += p && !said;
        }
        operating_point(&r->at_threshold, in->threshold, tp, fp, tn, fn);
        if ((rc = auc_one(in, (size_t)in->positive, sc, pos, &r->auc, &r->auc_se, err)) ||
            (rc = roc_one(in, (size_t)in->positive, &r->roc, &r->n_roc, &r->youden, err)))
            goto out;
    } else {
        /* one-vs-rest per class (multi-class ROC curves) */
        for (size_t c = 0; c < k; c++) {
            eval_class *ec = &r->classes[c];
            if ((rc = auc_one(in, c, sc, pos, &ec->auc, &ec->auc_se, err)) ||
                (rc = roc_one(in, c, &ec->roc, &ec->n_roc, NULL, err)))
                goto out;
        }
    }
out:
    free(pred);
    free(sc);
    free(pos);
    if (rc) {
        eval_result_free(r);
        return rc;
    }
    *ret = r;
    return XR_OK;
}

eval_result *eval_result_free(eval_result *r)
{
    if (!r)
        return NULL;
    free(r->confusion);
    for (size_t c = 0; r->classes && c < r->n_classes; c++)
        free(r->classes[c].roc);
    free(r->classes);
    free(r->roc);
    free(r);
    return NULL;
}
