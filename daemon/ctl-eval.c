/*
 * xregctl eval / compare: the thesis's evaluation and model selection, built in.
 *
 *   xregctl eval    (--truth CSV | --data DIR) CANDIDATE [options]
 *   xregctl compare (--truth CSV | --data DIR) CANDIDATE CANDIDATE... [options]
 *
 * Ground truth: a CSV of key,label rows (key: SOP Instance UID, or a file path, relative paths
 * taken from the CSV's folder; a header row naming a "label" column is recognised, with the key
 * in a sop_instance_uid/uid/file/path/key column), or a folder with one subfolder per label
 * (files found recursively; the thesis's layout: pass DATASET/test).
 * Candidates (predictions): MODEL.onnx (run over the files through classifier.h, exactly as the
 * daemon preprocesses them), registry:NAME[@SHA256] (xreg.prediction rows of that model joined
 * to xreg.instance by SOP Instance UID; a file's UID is read from its DICOM header), or
 * csv:PREDICTIONS.csv (a key column and one probability column per label, e.g. the
 * predictions.csv an earlier eval wrote, or a training run's probabilities) with --labels and,
 * for binary tasks, --positive.
 *
 * Matching: every truth row needs a prediction from every candidate; rows without one are
 * counted and listed (-v), and compare uses only the rows all candidates predicted, so the
 * models are ranked on one same test set. Files that are not images (no PNG/JPEG signature and
 * not DICOM) are skipped and counted; images that fail to decode are "unreadable", counted and
 * listed on stderr; --strict makes either an error.
 *
 * Ranking (compare): lowest log loss first (it scores the probabilities, which is what a
 * threshold is later chosen on); ties within 1e-9 by higher AUC (binary) or Cohen's kappa
 * (multi-class), then by name.
 *
 * Output: a text report on stdout (or metrics JSON with --json); with --out DIR also
 * metrics.json, predictions.csv, confusion.png, reliability.png, roc.png (binary), report.txt;
 * compare writes compare.json, compare.txt, roc.png (all models, binary) and one subfolder per
 * model with its eval outputs.
 */
#include "xr-json.h"
#include "ctl-eval.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "xr-fs.h"
#include "classifier.h"
#include "config.h"
#include "dicom.h"
#include "eval-plot.h"
#include "eval-stats.h"
#include "pgembed.h"
#include "registry.h"

#define CANDIDATES_MAX 64

void ctl_eval_usage(FILE *f)
{
    fprintf(f,
            "  eval (--truth CSV | --data DIR) CANDIDATE [--out DIR] [--json] [--threshold T]\n"
            "                 accuracy, log loss, Cohen's kappa, per-class precision/recall/F1,\n"
            "                 confusion matrix; binary tasks: AUC with DeLong 95%% CI,\n"
            "                 sensitivity/specificity with Wilson CIs at the threshold and at\n"
            "                 Youden's optimum; PNG plots, metrics.json, predictions.csv in DIR.\n"
            "                 CANDIDATE: MODEL.onnx | registry:NAME[@SHA256] | csv:FILE.csv\n"
            "                 (see eval --help)\n"
            "  compare (--truth CSV | --data DIR) CANDIDATE... [--out DIR] [--json]\n"
            "                 rank models on one test set by log loss, then AUC/kappa\n");
}

static void help(void)
{
    printf("Usage: xregctl eval|compare (--truth CSV | --data DIR) CANDIDATE... [options]\n\n"
           "Ground truth:\n"
           "  --truth CSV       rows key,label; key = SOP Instance UID or file path (relative to\n"
           "                    the CSV's folder); an optional header names the columns\n"
           "  --data DIR        one subfolder per label (e.g. DATASET/test)\n"
           "Candidates:\n"
           "  MODEL.onnx        run the model over the files (classifier.h, as the daemon does)\n"
           "  registry:NAME[@SHA256]  predictions stored in the registry by that model\n"
           "  csv:FILE.csv      a key column and one probability column per label\n"
           "Options:\n"
           "  --labels A,B,...  labels of csv: candidates (in any column order)\n"
           "  --positive LABEL  positive label of csv: candidates (binary task)\n"
           "  --threshold T     decision threshold on p(positive) (default: the model's)\n"
           "  --out DIR         write metrics.json, predictions.csv, PNG plots, report.txt\n"
           "  --json            print the metrics JSON instead of the text report\n"
           "  --threads N       OpenMP threads for model runs (default 1)\n"
           "  --batch N         images per model run (default 8)\n"
           "  --db CONNINFO     registry connection (default: the configuration's database)\n"
           "  --strict          fail on unreadable files and rows without prediction\n"
           "  -v, --verbose     list skipped files and rows without prediction\n");
}

/* ------------------------------------------------------------------------------------------
 * Small helpers
 */
static void json_num(FILE *f, double v, bool defined)
{
    if (defined && isfinite(v))
        fprintf(f, "%.17g", v);
    else
        fputs("null", f);
}

static void csv_field(FILE *f, const char *s)
{
    if (strpbrk(s, ",\"\r\n")) {
        fputc('"', f);
        for (; *s; s++) {
            if (*s == '"')
                fputc('"', f);
            fputc(*s, f);
        }
        fputc('"', f);
    } else {
        fputs(s, f);
    }
}

/* "0.912" or "n/a" */
static const char *fmt(char *buf, size_t n, double v, bool defined)
{
    if (defined && isfinite(v))
        snprintf(buf, n, "%.4f", v);
    else
        snprintf(buf, n, "n/a");
    return buf;
}

/* One CSV record (RFC 4180 quoting, no newlines inside fields) split in place. */
typedef struct csv_row {
    char *line;
    char **f;
    size_t n, cap;
} csv_row;

static int csv_next(FILE *in, csv_row *r, size_t *line_no)
{
    size_t cap = 0;
    free(r->line);
    r->line = NULL;
    ssize_t l = getline(&r->line, &cap, in);
    if (l < 0)
        return 0;
    (*line_no)++;
    while (l > 0 && (r->line[l - 1] == '\n' || r->line[l - 1] == '\r'))
        r->line[--l] = '\0';
    r->n = 0;
    char *p = r->line, *w;
    if (*line_no == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3; /* a UTF-8 byte order mark (spreadsheet exports) */
    for (;;) {
        if (r->n == r->cap) {
            size_t nc = r->cap ? 2 * r->cap : 16;
            char **nf = realloc(r->f, nc * sizeof(char *));
            if (!nf)
                return -1;
            r->f = nf;
            r->cap = nc;
        }
        r->f[r->n++] = w = p;
        if (*p == '"') {
            p++;
            for (;;) {
                if (*p == '\0')
                    return -2; /* unterminated quote */
                if (*p == '"' && p[1] == '"') {
                    *w++ = '"';
                    p += 2;
                } else if (*p == '"') {
                    p++;
                    break;
                } else {
                    *w++ = *p++;
                }
            }
            if (*p != ',' && *p != '\0')
                return -2;
        } else {
            while (*p && *p != ',')
                *w++ = *p++;
        }
        char end = *p;
        *w = '\0';
        if (end == '\0')
            break;
        p++;
    }
    /* trim spaces around unquoted fields */
    for (size_t i = 0; i < r->n; i++) {
        char *s = r->f[i];
        while (*s == ' ')
            s++;
        size_t k = strlen(s);
        while (k && s[k - 1] == ' ')
            s[--k] = '\0';
        r->f[i] = s;
    }
    return 1;
}

static void csv_done(csv_row *r)
{
    free(r->line);
    free(r->f);
}

static bool looks_like_uid(const char *s)
{
    if (!*s || strlen(s) > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || *s == '.'))
            return false;
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Ground truth
 */
typedef struct sample {
    char *key;   /* what reports show: the UID or the path */
    char *path;  /* a file to run a model on, or NULL */
    char *uid;   /* SOP Instance UID, or NULL until read from the file */
    char *label; /* ground-truth label as given */
    char *note;  /* why a candidate could not predict it (first reason), or NULL */
    bool skipped; /* not an image file: left out */
} sample;

typedef struct truth_set {
    sample *s;
    size_t n, cap;
    size_t n_skipped; /* files of the label folders that are not images */
    char *source;
} truth_set;

static int add_sample(truth_set *t, const char *key, const char *path, const char *uid,
                      const char *label)
{
    if (t->n == t->cap) {
        size_t nc = t->cap ? 2 * t->cap : 256;
        sample *ns = realloc(t->s, nc * sizeof(sample));
        if (!ns)
            return -1;
        t->s = ns;
        t->cap = nc;
    }
    sample *s = &t->s[t->n];
    *s = (sample){.key = strdup(key), .path = path ? strdup(path) : NULL,
                  .uid = uid ? strdup(uid) : NULL, .label = strdup(label)};
    if (!s->key || !s->label || (path && !s->path) || (uid && !s->uid))
        return -1;
    t->n++;
    return 0;
}

static void truth_free(truth_set *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->s[i].key);
        free(t->s[i].path);
        free(t->s[i].uid);
        free(t->s[i].label);
        free(t->s[i].note);
    }
    free(t->s);
    free(t->source);
}

static int read_truth_csv(const char *path, truth_set *t)
{
    FILE *in = fopen(path, "r");
    if (!in) {
        fprintf(stderr, "xregctl: cannot open \"%s\": %s\n", path, strerror(errno));
        return 1;
    }
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), ".");
    csv_row r = {0};
    size_t line = 0;
    int kcol = 0, lcol = 1, rc = 1, got;
    bool first = true;
    while ((got = csv_next(in, &r, &line)) == 1) {
        if (r.n == 1 && r.f[0][0] == '\0')
            continue; /* blank line */
        if (first) {
            first = false;
            int lc = -1, kc = -1;
            for (size_t i = 0; i < r.n; i++) {
                if (strcasecmp(r.f[i], "label") == 0)
                    lc = (int)i;
                static const char *const keys[] = {"sop_instance_uid", "uid", "file", "path",
                                                   "key"};
                for (size_t k = 0; k < 5; k++)
                    if (kc < 0 && strcasecmp(r.f[i], keys[k]) == 0)
                        kc = (int)i;
            }
            if (lc >= 0) { /* a header */
                lcol = lc;
                kcol = kc >= 0 ? kc : (lc == 0 ? 1 : 0);
                continue;
            }
        }
        if ((size_t)(kcol > lcol ? kcol : lcol) >= r.n || !r.f[kcol][0] || !r.f[lcol][0]) {
            fprintf(stderr, "xregctl: \"%s\" line %zu: expected a key and a label (columns %d "
                    "and %d), got %zu field(s)\n", path, line, kcol + 1, lcol + 1, r.n);
            goto out;
        }
        const char *key = r.f[kcol];
        char full[8192];
        const char *fpath = NULL, *uid = NULL;
        if (looks_like_uid(key)) {
            uid = key;
        } else {
            if (key[0] == '/')
                snprintf(full, sizeof(full), "%s", key);
            else
                snprintf(full, sizeof(full), "%s/%s", dir, key);
            fpath = full;
        }
        if (add_sample(t, key, fpath, uid, r.f[lcol])) {
            fprintf(stderr, "xregctl: out of memory\n");
            goto out;
        }
    }
    if (got < 0) {
        fprintf(stderr, "xregctl: \"%s\" line %zu: %s\n", path, line + 1,
                got == -2 ? "unterminated or misplaced quote" : "out of memory");
        goto out;
    }
    if (t->n == 0) {
        fprintf(stderr, "xregctl: \"%s\" has no ground-truth rows\n", path);
        goto out;
    }
    rc = 0;
out:
    csv_done(&r);
    fclose(in);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Regular files under dir, recursively, sorted (deterministic order). */
static int walk(const char *dir, char ***paths, size_t *n, size_t *cap)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "xregctl: cannot open folder \"%s\": %s\n", dir, strerror(errno));
        return 1;
    }
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[8192];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            rc = walk(p, paths, n, cap);
        } else if (S_ISREG(st.st_mode)) {
            if (*n == *cap) {
                size_t nc = *cap ? 2 * *cap : 256;
                char **np = realloc(*paths, nc * sizeof(char *));
                if (!np) {
                    rc = 1;
                    break;
                }
                *paths = np;
                *cap = nc;
            }
            if (!((*paths)[*n] = strdup(p)))
                rc = 1;
            else
                (*n)++;
        }
    }
    closedir(d);
    return rc;
}

/* An image by its content, as xregctl mean-std decides: PNG/JPEG signature, the DICOM preamble,
 * or a data set dicom_header_read accepts (bare implicit VR files). READMEs, CSVs, TIFFs: no. */
static bool is_image(const char *path)
{
    if (classifier_file_signature(path) != 0)
        return true; /* an image, or unreadable: let the reader report why */
    dicom_header h;
    xr_error err = XR_ERROR_INIT;
    return dicom_header_read(path, &h, &err) == XR_OK ||
           !(err.code == XR_E_INPUT && strstr(err.msg, "not a DICOM file"));
}

static int read_truth_dir(const char *dir, truth_set *t, bool verbose)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "xregctl: cannot open folder \"%s\": %s\n", dir, strerror(errno));
        return 1;
    }
    char **labels = NULL;
    size_t n_labels = 0, cap = 0;
    struct dirent *e;
    int rc = 1;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[8192];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        if (n_labels == cap) {
            cap = cap ? 2 * cap : 16;
            char **nl = realloc(labels, cap * sizeof(char *));
            if (!nl)
                goto out;
            labels = nl;
        }
        if (!(labels[n_labels] = strdup(e->d_name)))
            goto out;
        n_labels++;
    }
    if (n_labels == 0) {
        fprintf(stderr, "xregctl: \"%s\" has no label subfolders (expected DIR/<label>/files)\n",
                dir);
        goto out;
    }
    qsort(labels, n_labels, sizeof(char *), cmp_str);
    for (size_t i = 0; i < n_labels; i++) {
        char sub[8192];
        snprintf(sub, sizeof(sub), "%s/%s", dir, labels[i]);
        char **paths = NULL;
        size_t n = 0, pc = 0;
        int wr = walk(sub, &paths, &n, &pc);
        if (!wr)
            qsort(paths, n, sizeof(char *), cmp_str);
        for (size_t k = 0; k < n; k++) {
            if (!wr && add_sample(t, paths[k], paths[k], NULL, labels[i]))
                wr = 1;
            if (!wr && !is_image(paths[k])) {
                t->s[t->n - 1].skipped = true;
                t->n_skipped++;
                if (verbose)
                    fprintf(stderr, "skipped (not an image): %s\n", paths[k]);
            }
            free(paths[k]);
        }
        free(paths);
        if (wr)
            goto out;
    }
    if (t->n == 0) {
        fprintf(stderr, "xregctl: no files under the label folders of \"%s\"\n", dir);
        goto out;
    }
    rc = 0;
out:
    for (size_t i = 0; i < n_labels; i++)
        free(labels[i]);
    free(labels);
    closedir(d);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Candidates
 */
typedef enum cand_kind { CAND_MODEL, CAND_REGISTRY, CAND_CSV } cand_kind;

typedef struct candidate {
    cand_kind kind;
    const char *spec; /* as given */
    char *name, *version, *sha256, *placeholder, *task;
    char **labels;
    size_t n_labels;
    int positive; /* -1 multi-class */
    double threshold;
    float *probs; /* n_samples x n_labels */
    bool *have;   /* n_samples */
    size_t n_missing, n_unreadable, n_skipped;
    eval_result *res;
    int *truth_idx; /* per sample: index in labels, -1 unknown */
} candidate;

static void cand_free(candidate *c)
{
    free(c->name);
    free(c->version);
    free(c->sha256);
    free(c->placeholder);
    free(c->task);
    for (size_t i = 0; i < c->n_labels; i++)
        free(c->labels[i]);
    free(c->labels);
    free(c->probs);
    free(c->have);
    free(c->truth_idx);
    eval_result_free(c->res);
}

static int set_labels(candidate *c, const char *csv)
{
    size_t n = 1;
    for (const char *p = csv; *p; p++)
        n += *p == ',';
    c->labels = calloc(n, sizeof(char *));
    if (!c->labels)
        return -1;
    const char *p = csv;
    for (size_t i = 0; i < n; i++) {
        size_t l = strcspn(p, ",");
        if (!(c->labels[i] = strndup(p, l)))
            return -1;
        c->n_labels++;
        p += l + (p[l] == ',');
        if (!c->labels[i][0]) {
            fprintf(stderr, "xregctl: empty label in \"%s\"\n", csv);
            return -1;
        }
    }
    return 0;
}

static int label_index(const candidate *c, const char *label)
{
    for (size_t i = 0; i < c->n_labels; i++)
        if (strcasecmp(c->labels[i], label) == 0)
            return (int)i;
    return -1;
}

typedef struct eval_opts {
    const char *config_path, *db;
    const char *csv_labels, *csv_positive;
    double threshold;
    bool threshold_given;
    int threads;
    uint32_t batch;
    bool strict, verbose;
} eval_opts;

static void print_err(const char *what, const xr_error *err)
{
    fprintf(stderr, "xregctl: %s%s%s\n", what ? what : "", what ? ": " : "", err->msg);
    if (err->detail[0])
        fprintf(stderr, "%s\n", err->detail);
}

/* Candidate from an ONNX file: metadata from classifier.h, predictions by running it. */
static int run_model(candidate *c, truth_set *t, const eval_opts *o)
{
    xr_error err = XR_ERROR_INIT;
    classifier *cl = NULL;
    classifier_session *s = NULL;
    float *in = NULL, *probs = NULL;
    size_t *idx = NULL;
    int rc = 1;
    if (classifier_load(c->spec, o->batch, o->threads, &cl, &err) ||
        classifier_session_new(cl, o->threads, &s, &err)) {
        print_err(NULL, &err);
        goto out;
    }
    const classifier_meta *mi = classifier_info(cl);
    if (!(c->name = strdup(mi->name)) || !(c->version = strdup(mi->version)) ||
        !(c->sha256 = strdup(mi->sha256)) ||
        !(c->task = strdup(classifier_task_name(mi->task))) ||
        (mi->placeholder && !(c->placeholder = strdup(mi->placeholder))))
        goto oom;
    if (!(c->labels = calloc(mi->n_labels, sizeof(char *))))
        goto oom;
    for (size_t i = 0; i < mi->n_labels; i++, c->n_labels++)
        if (!(c->labels[i] = strdup(mi->labels[i])))
            goto oom;
    c->positive = mi->positive_index;
    c->threshold = mi->threshold;
    size_t k = mi->n_labels, nin = classifier_input_floats(cl);
    uint32_t bmax = mi->max_batch;
    c->probs = calloc(t->n * k, sizeof(float));
    c->have = calloc(t->n, sizeof(bool));
    in = malloc((size_t)bmax * nin * sizeof(float));
    probs = malloc((size_t)bmax * k * sizeof(float));
    idx = malloc(bmax * sizeof(size_t));
    if (!c->probs || !c->have || !in || !probs || !idx)
        goto oom;
    uint32_t nb = 0;
    for (size_t i = 0; i <= t->n; i++) {
        if (i < t->n) {
            sample *sm = &t->s[i];
            if (!sm->path || sm->skipped)
                continue;
            classifier_file_kind kind;
            if (classifier_prepare_file(s, sm->path, NULL, in + (size_t)nb * nin, &kind,
                                        &err)) {
                if (err.code == XR_E_INPUT && strstr(err.msg, "not a DICOM file")) {
                    sm->skipped = true; /* not an image at all (README, labels.csv) */
                    c->n_skipped++;
                    if (o->verbose)
                        fprintf(stderr, "skipped (not an image): %s\n", sm->path);
                } else {
                    c->n_unreadable++;
                    fprintf(stderr, "unreadable: %s\n", err.msg);
                    if (!sm->note)
                        sm->note = strdup(err.msg);
                    if (o->strict)
                        goto out;
                }
                continue;
            }
            idx[nb++] = i;
        }
        if (nb == bmax || (i == t->n && nb > 0)) {
            if (classifier_run(s, nb, in, probs, &err)) {
                print_err(c->spec, &err);
                goto out;
            }
            for (uint32_t b = 0; b < nb; b++) {
                memcpy(c->probs + idx[b] * k, probs + (size_t)b * k, k * sizeof(float));
                c->have[idx[b]] = true;
            }
            nb = 0;
        }
    }
    rc = 0;
    goto out;
oom:
    fprintf(stderr, "xregctl: out of memory\n");
out:
    free(in);
    free(probs);
    free(idx);
    classifier_session_free(s);
    classifier_free(cl);
    return rc;
}

/* path equals key, or ends with "/" + key (tools/train.py's probs/ name files relative to the
 * dataset root: "test/present/x.png" matches "DATASET/test/present/x.png"). */
static bool path_suffix(const char *path, const char *key)
{
    size_t lp = strlen(path), lk = strlen(key);
    if (lk == 0 || lk > lp)
        return false;
    return strcmp(path + lp - lk, key) == 0 && (lk == lp || path[lp - lk - 1] == '/');
}

/* Candidate from a predictions CSV: key column + one column per label. */
static int read_pred_csv(candidate *c, truth_set *t, const eval_opts *o)
{
    const char *path = c->spec + 4;
    if (!o->csv_labels) {
        fprintf(stderr, "xregctl: csv: candidates need --labels (and --positive for a binary "
                "task)\n");
        return 1;
    }
    if (set_labels(c, o->csv_labels))
        return 1;
    c->positive = -1;
    c->threshold = 0.5;
    if (o->csv_positive && (c->positive = label_index(c, o->csv_positive)) < 0) {
        fprintf(stderr, "xregctl: --positive \"%s\" is not one of --labels \"%s\"\n",
                o->csv_positive, o->csv_labels);
        return 1;
    }
    if (c->positive >= 0 && c->n_labels != 2) {
        fprintf(stderr, "xregctl: --positive needs exactly 2 labels, --labels has %zu\n",
                c->n_labels);
        return 1;
    }
    const char *base = strrchr(path, '/');
    if (!(c->name = strdup(base ? base + 1 : path)) ||
        !(c->task = strdup(c->positive >= 0 ? "binary" : "multi-class")))
        return 1;
    FILE *in = fopen(path, "r");
    if (!in) {
        fprintf(stderr, "xregctl: cannot open \"%s\": %s\n", path, strerror(errno));
        return 1;
    }
    size_t k = c->n_labels, line = 0;
    int rc = 1, got, kcol = 0;
    int *col = malloc(k * sizeof(int));
    char **keys = NULL;
    size_t *order = NULL;
    csv_row r = {0};
    c->probs = calloc(t->n * k, sizeof(float));
    c->have = calloc(t->n, sizeof(bool));
    if (!col || !c->probs || !c->have)
        goto out;
    if ((got = csv_next(in, &r, &line)) != 1) {
        fprintf(stderr, "xregctl: \"%s\": no header row\n", path);
        goto out;
    }
    for (size_t j = 0; j < k; j++) {
        col[j] = -1;
        for (size_t i = 0; i < r.n; i++)
            if (strcasecmp(r.f[i], c->labels[j]) == 0 ||
                (strncasecmp(r.f[i], "p_", 2) == 0 && strcasecmp(r.f[i] + 2, c->labels[j]) == 0) ||
                (strncasecmp(r.f[i], "prob_", 5) == 0 && strcasecmp(r.f[i] + 5, c->labels[j]) == 0))
                col[j] = (int)i;
        if (col[j] < 0) {
            fprintf(stderr, "xregctl: \"%s\": no column for label \"%s\" in the header\n", path,
                    c->labels[j]);
            goto out;
        }
    }
    for (size_t i = 0; i < r.n; i++) {
        static const char *const kn[] = {"key", "sop_instance_uid", "uid", "file", "path"};
        bool hit = false;
        for (size_t q = 0; q < 5 && !hit; q++)
            hit = strcasecmp(r.f[i], kn[q]) == 0;
        if (hit) {
            kcol = (int)i;
            break;
        }
    }
    /* index the truth keys (key, UID and path all match) */
    while ((got = csv_next(in, &r, &line)) == 1) {
        if (r.n == 1 && !r.f[0][0])
            continue;
        if ((size_t)kcol >= r.n) {
            fprintf(stderr, "xregctl: \"%s\" line %zu: no key column\n", path, line);
            goto out;
        }
        const char *key = r.f[kcol];
        for (size_t i = 0; i < t->n; i++) {
            sample *sm = &t->s[i];
            if (strcmp(sm->key, key) != 0 && !(sm->uid && strcmp(sm->uid, key) == 0) &&
                !(sm->path && path_suffix(sm->path, key)))
                continue;
            for (size_t j = 0; j < k; j++) {
                const char *v = (size_t)col[j] < r.n ? r.f[col[j]] : "";
                char *end;
                errno = 0;
                double p = strtod(v, &end);
                if (!*v || *end || errno) {
                    fprintf(stderr, "xregctl: \"%s\" line %zu: probability \"%s\" of label "
                            "\"%s\" is not a number\n", path, line, v, c->labels[j]);
                    goto out;
                }
                c->probs[i * k + j] = (float)p;
            }
            c->have[i] = true;
        }
    }
    if (got < 0) {
        fprintf(stderr, "xregctl: \"%s\" line %zu: bad CSV quoting\n", path, line + 1);
        goto out;
    }
    rc = 0;
out:
    csv_done(&r);
    free(col);
    free(keys);
    free(order);
    fclose(in);
    return rc;
}

typedef struct db_conn {
    pgembed *pg;
    char *conninfo;
    registry *reg;
} db_conn;

static int db_open(db_conn *d, const eval_opts *o)
{
    if (d->reg)
        return 0;
    xr_error err = XR_ERROR_INIT;
    if (o->db) {
        d->conninfo = strdup(o->db);
    } else {
        xregd_config *cfg;
        if (config_load(o->config_path, &cfg, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        if (cfg->database.conninfo[0] == '\0') {
            char dir[4096];
            snprintf(dir, sizeof(dir), "%s/postgresql", cfg->state_dir);
            if (pgembed_start(dir, cfg->database.embedded_user, &d->pg, &d->conninfo, &err)) {
                print_err("embedded PostgreSQL", &err);
                config_free(cfg);
                return 1;
            }
        } else {
            d->conninfo = strdup(cfg->database.conninfo);
        }
        config_free(cfg);
    }
    if (!d->conninfo) {
        fprintf(stderr, "xregctl: out of memory\n");
        return 1;
    }
    if (registry_open(d->conninfo, "xregctl eval", &d->reg, &err)) {
        print_err("database", &err);
        return 1;
    }
    return 0;
}

static void db_close(db_conn *d)
{
    d->reg = registry_close(d->reg);
    d->pg = pgembed_stop(d->pg);
    free(d->conninfo);
    d->conninfo = NULL;
}

static int cmp_uid_idx(const void *a, const void *b, void *ctx)
{
    const truth_set *t = ctx;
    const char *x = t->s[*(const size_t *)a].uid, *y = t->s[*(const size_t *)b].uid;
    return strcmp(x ? x : "", y ? y : "");
}

/* Candidate from the registry: NAME[@SHA256]. Samples need UIDs (from the CSV or the DICOM
 * header of the file). */
static int read_registry(candidate *c, truth_set *t, db_conn *d, const eval_opts *o)
{
    xr_error err = XR_ERROR_INIT;
    registry_rows *rows = NULL;
    size_t *order = NULL;
    int rc = 1;
    char name[512];
    snprintf(name, sizeof(name), "%s", c->spec + 9);
    char *at = strchr(name, '@');
    const char *sha = NULL;
    if (at) {
        *at = '\0';
        sha = at + 1;
    }
    if (!name[0]) {
        fprintf(stderr, "xregctl: \"%s\": expected registry:NAME[@SHA256]\n", c->spec);
        return 1;
    }
    if (db_open(d, o))
        return 1;
    const char *p1[2] = {name, sha};
    if (registry_select(d->reg,
                        "SELECT m.sha256, m.task, array_to_string(m.labels, ','), "
                        "m.positive_label, m.version, m.metadata->>'xreg.threshold', "
                        "m.metadata->>'xreg.placeholder', "
                        "(SELECT count(*) FROM xreg.prediction p WHERE p.model_ref = m.id) "
                        "FROM xreg.model m WHERE m.name = $1 AND ($2::text IS NULL OR "
                        "m.sha256 = $2) ORDER BY m.created_at, m.id",
                        2, p1, &rows, &err)) {
        print_err("database", &err);
        goto out;
    }
    size_t nr = registry_rows_count(rows);
    if (nr == 0) {
        fprintf(stderr, "xregctl: no model \"%s\"%s%s in the registry\n", name,
                sha ? " with sha256 " : "", sha ? sha : "");
        goto out;
    }
    if (nr > 1) {
        fprintf(stderr, "xregctl: model \"%s\" has %zu versions in the registry; pick one with "
                "registry:%s@SHA256:\n", name, nr, name);
        for (size_t i = 0; i < nr; i++)
            fprintf(stderr, "  %s  version %s, %s predictions\n", registry_rows_value(rows, i, 0),
                    registry_rows_value(rows, i, 4) ? registry_rows_value(rows, i, 4) : "?",
                    registry_rows_value(rows, i, 7));
        goto out;
    }
    const char *thr = registry_rows_value(rows, 0, 5), *ph = registry_rows_value(rows, 0, 6);
    const char *ver = registry_rows_value(rows, 0, 4), *pos = registry_rows_value(rows, 0, 3);
    if (!(c->name = strdup(name)) || !(c->sha256 = strdup(registry_rows_value(rows, 0, 0))) ||
        !(c->task = strdup(registry_rows_value(rows, 0, 1))) ||
        (ver && !(c->version = strdup(ver))) || (ph && !(c->placeholder = strdup(ph))) ||
        set_labels(c, registry_rows_value(rows, 0, 2)))
        goto oom;
    c->positive = pos ? label_index(c, pos) : -1;
    c->threshold = thr ? strtod(thr, NULL) : 0.5;
    if (!(c->threshold > 0 && c->threshold < 1))
        c->threshold = 0.5;
    char sha_buf[65];
    snprintf(sha_buf, sizeof(sha_buf), "%s", c->sha256);
    rows = registry_rows_free(rows);

    /* The threshold the daemon was configured with, when the registry records it per prediction
     * (migration 0005's xreg.prediction.threshold); else the model's xreg.threshold. */
    const char *p_thr[2] = {name, sha_buf};
    if (registry_select(d->reg,
                        "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                        "'xreg' AND table_name = 'prediction' AND column_name = 'threshold'",
                        0, NULL, &rows, &err)) {
        print_err("database", &err);
        goto out;
    }
    bool has_thr = strcmp(registry_rows_value(rows, 0, 0), "0") != 0;
    rows = registry_rows_free(rows);
    if (c->positive >= 0 && has_thr) {
        if (registry_select(d->reg,
                            "SELECT DISTINCT p.threshold::text FROM xreg.prediction p "
                            "JOIN xreg.model m ON m.id = p.model_ref WHERE m.name = $1 AND "
                            "m.sha256 = $2 AND p.threshold IS NOT NULL ORDER BY 1",
                            2, p_thr, &rows, &err)) {
            print_err("database", &err);
            goto out;
        }
        size_t nt = registry_rows_count(rows);
        if (nt == 1) {
            double v = strtod(registry_rows_value(rows, 0, 0), NULL);
            if (v > 0 && v < 1)
                c->threshold = v;
        } else if (nt > 1 && !o->threshold_given) {
            fprintf(stderr, "xregctl: note: the predictions of \"%s\" were labelled at %zu "
                    "different thresholds; evaluating at the model's %g (pass --threshold)\n",
                    name, nt, c->threshold);
        }
        rows = registry_rows_free(rows);
    }

    /* UIDs of file samples */
    for (size_t i = 0; i < t->n; i++) {
        sample *sm = &t->s[i];
        if (sm->uid || !sm->path || sm->skipped)
            continue;
        dicom_header h;
        if (dicom_header_read(sm->path, &h, &err)) {
            if (err.code == XR_E_INPUT && strstr(err.msg, "not a DICOM file")) {
                sm->skipped = true;
                c->n_skipped++;
                if (o->verbose)
                    fprintf(stderr, "skipped (not DICOM, no SOP Instance UID): %s\n", sm->path);
            } else {
                c->n_unreadable++;
                fprintf(stderr, "unreadable: %s\n", err.msg);
                if (o->strict)
                    goto out;
            }
            continue;
        }
        if (!(sm->uid = strdup(h.sop_instance_uid)))
            goto oom;
    }
    size_t k = c->n_labels;
    c->probs = calloc(t->n * k, sizeof(float));
    c->have = calloc(t->n, sizeof(bool));
    order = malloc(t->n * sizeof(size_t));
    if (!c->probs || !c->have || !order)
        goto oom;
    size_t nu = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->s[i].uid)
            order[nu++] = i;
    qsort_r(order, nu, sizeof(size_t), cmp_uid_idx, t);
    const char *p2[2] = {name, sha_buf};
    if (registry_select(d->reg,
                        "SELECT i.sop_instance_uid, array_to_string(ARRAY("
                        "SELECT coalesce(p.probabilities->>l.label, '') FROM "
                        "unnest(m.labels) WITH ORDINALITY AS l(label, ord) ORDER BY l.ord), ',') "
                        "FROM xreg.prediction p JOIN xreg.model m ON m.id = p.model_ref "
                        "JOIN xreg.instance i ON i.id = p.instance_ref "
                        "WHERE m.name = $1 AND m.sha256 = $2",
                        2, p2, &rows, &err)) {
        print_err("database", &err);
        goto out;
    }
    for (size_t r = 0; r < registry_rows_count(rows); r++) {
        const char *uid = registry_rows_value(rows, r, 0), *pv = registry_rows_value(rows, r, 1);
        /* binary search the sorted UIDs; equal UIDs (the same object listed twice) all match */
        size_t lo = 0, hi = nu;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (strcmp(t->s[order[mid]].uid, uid) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (; lo < nu && strcmp(t->s[order[lo]].uid, uid) == 0; lo++) {
            size_t i = order[lo];
            const char *q = pv;
            for (size_t j = 0; j < k; j++) {
                char *end;
                double v = strtod(q, &end);
                if (end == q || (*end != ',' && *end != '\0')) {
                    fprintf(stderr, "xregctl: registry prediction of %s by \"%s\" lacks a "
                            "probability for \"%s\" (%s)\n", uid, name, c->labels[j], pv);
                    goto out;
                }
                c->probs[i * k + j] = (float)v;
                q = *end ? end + 1 : end;
            }
            c->have[i] = true;
        }
    }
    rc = 0;
    goto out;
oom:
    fprintf(stderr, "xregctl: out of memory\n");
out:
    free(order);
    registry_rows_free(rows);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Reports
 */
static void write_metrics_json(FILE *f, const candidate *c, const eval_result *r,
                               const truth_set *t, size_t n_used)
{
    char b[64];
    (void)b;
    fprintf(f, "{\n  \"model\": {\"name\": ");
    xr_json_write_str(f, c->name);
    fprintf(f, ", \"version\": ");
    xr_json_write_str(f, c->version);
    fprintf(f, ", \"sha256\": ");
    xr_json_write_str(f, c->sha256);
    fprintf(f, ", \"task\": ");
    xr_json_write_str(f, c->task);
    fprintf(f, ", \"placeholder\": ");
    xr_json_write_str(f, c->placeholder);
    fprintf(f, ", \"candidate\": ");
    xr_json_write_str(f, c->spec);
    fprintf(f, "},\n  \"ground_truth\": ");
    xr_json_write_str(f, t->source);
    fprintf(f, ",\n  \"labels\": [");
    for (size_t i = 0; i < c->n_labels; i++) {
        fprintf(f, "%s", i ? ", " : "");
        xr_json_write_str(f, c->labels[i]);
    }
    fprintf(f, "],\n  \"n\": %zu, \"n_truth_rows\": %zu, \"n_without_prediction\": %zu, "
            "\"n_unreadable\": %zu, \"n_skipped\": %zu,\n",
            n_used, t->n, c->n_missing, c->n_unreadable, c->n_skipped + t->n_skipped);
    fprintf(f, "  \"accuracy\": ");
    json_num(f, r->accuracy, true);
    fprintf(f, ", \"log_loss\": ");
    json_num(f, r->log_loss, true);
    fprintf(f, ", \"cohen_kappa\": ");
    json_num(f, r->kappa, r->kappa_defined);
    fprintf(f, ",\n  \"macro\": {\"precision\": ");
    json_num(f, r->macro_precision, r->macro_precision_defined);
    fprintf(f, ", \"recall\": ");
    json_num(f, r->macro_recall, r->macro_recall_defined);
    fprintf(f, ", \"f1\": ");
    json_num(f, r->macro_f1, r->macro_f1_defined);
    fprintf(f, "},\n  \"per_class\": {");
    for (size_t i = 0; i < c->n_labels; i++) {
        const eval_class *ec = &r->classes[i];
        fprintf(f, "%s\n    ", i ? "," : "");
        xr_json_write_str(f, c->labels[i]);
        fprintf(f, ": {\"support\": %zu, \"predicted\": %zu, \"precision\": ", ec->support,
                ec->predicted);
        json_num(f, ec->precision, ec->precision_defined);
        fprintf(f, ", \"recall\": ");
        json_num(f, ec->recall, ec->recall_defined);
        fprintf(f, ", \"f1\": ");
        json_num(f, ec->f1, ec->f1_defined);
        if (!r->binary) {
            fprintf(f, ", \"auc_ovr\": ");
            json_num(f, ec->auc.value, ec->auc.defined);
            fprintf(f, ", \"auc_ovr_ci95\": [");
            json_num(f, ec->auc.lo, ec->auc.ci_defined);
            fprintf(f, ", ");
            json_num(f, ec->auc.hi, ec->auc.ci_defined);
            fprintf(f, "], \"roc_ovr\": [");
            for (size_t q = 0; q < ec->n_roc; q++) {
                fprintf(f, "%s[", q ? ", " : "");
                json_num(f, ec->roc[q].threshold, isfinite(ec->roc[q].threshold));
                fprintf(f, ", %.17g, %.17g]", ec->roc[q].fpr, ec->roc[q].tpr);
            }
            fprintf(f, "]");
        }
        fprintf(f, "}");
    }
    fprintf(f, "\n  },\n  \"confusion_matrix\": {\"rows\": \"truth\", \"columns\": "
            "\"predicted\", \"counts\": [");
    for (size_t i = 0; i < c->n_labels; i++) {
        fprintf(f, "%s[", i ? ", " : "");
        for (size_t j = 0; j < c->n_labels; j++)
            fprintf(f, "%s%zu", j ? ", " : "", r->confusion[i * c->n_labels + j]);
        fprintf(f, "]");
    }
    fprintf(f, "]},\n  \"reliability\": {\"over\": \"%s\", \"ece\": ",
            r->binary ? "positive probability" : "top-class confidence");
    json_num(f, r->ece, true);
    fprintf(f, ", \"bins\": [");
    for (int b2 = 0; b2 < EVAL_RELIABILITY_BINS; b2++) {
        fprintf(f, "%s{\"lo\": %.1f, \"hi\": %.1f, \"n\": %zu, \"mean_predicted\": ",
                b2 ? ", " : "", b2 / 10.0, (b2 + 1) / 10.0, r->bins[b2].n);
        json_num(f, r->bins[b2].mean_predicted, r->bins[b2].n > 0);
        fprintf(f, ", \"observed\": ");
        json_num(f, r->bins[b2].observed, r->bins[b2].n > 0);
        fprintf(f, "}");
    }
    fprintf(f, "]}");
    if (r->binary) {
        fprintf(f, ",\n  \"binary\": {\"positive_label\": ");
        xr_json_write_str(f, c->labels[c->positive]);
        fprintf(f, ", \"auc\": ");
        json_num(f, r->auc.value, r->auc.defined);
        fprintf(f, ", \"auc_ci95\": [");
        json_num(f, r->auc.lo, r->auc.ci_defined);
        fprintf(f, ", ");
        json_num(f, r->auc.hi, r->auc.ci_defined);
        fprintf(f, "], \"auc_se\": ");
        json_num(f, r->auc_se, r->auc.ci_defined);
        fprintf(f, ", \"auc_ci_method\": \"DeLong 1988, normal, clipped to [0,1]\"");
        const eval_operating_point *ops[2] = {&r->at_threshold, &r->youden};
        const char *names[2] = {"at_threshold", "youden"};
        for (int q = 0; q < 2; q++) {
            const eval_operating_point *op = ops[q];
            fprintf(f, ",\n    \"%s\": {\"threshold\": ", names[q]);
            json_num(f, op->threshold, q == 0 || r->n_roc > 1);
            fprintf(f, ", \"tp\": %zu, \"fp\": %zu, \"tn\": %zu, \"fn\": %zu, \"sensitivity\": ",
                    op->tp, op->fp, op->tn, op->fn);
            json_num(f, op->sensitivity.value, op->sensitivity.defined);
            fprintf(f, ", \"sensitivity_ci95\": [");
            json_num(f, op->sensitivity.lo, op->sensitivity.ci_defined);
            fprintf(f, ", ");
            json_num(f, op->sensitivity.hi, op->sensitivity.ci_defined);
            fprintf(f, "], \"specificity\": ");
            json_num(f, op->specificity.value, op->specificity.defined);
            fprintf(f, ", \"specificity_ci95\": [");
            json_num(f, op->specificity.lo, op->specificity.ci_defined);
            fprintf(f, ", ");
            json_num(f, op->specificity.hi, op->specificity.ci_defined);
            fprintf(f, "], \"youden_j\": ");
            json_num(f, op->youden, op->sensitivity.defined && op->specificity.defined);
            fprintf(f, "}");
        }
        fprintf(f, ",\n    \"roc\": [");
        for (size_t i = 0; i < r->n_roc; i++) {
            fprintf(f, "%s[", i ? ", " : "");
            json_num(f, r->roc[i].threshold, isfinite(r->roc[i].threshold));
            fprintf(f, ", %.17g, %.17g]", r->roc[i].fpr, r->roc[i].tpr);
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n}\n");
}

static void write_report(FILE *f, const candidate *c, const eval_result *r, const truth_set *t,
                         size_t n_used)
{
    char b1[32], b2[32], b3[32];
    fprintf(f, "model: %s%s%s%s (%s)\n", c->name, c->version ? " " : "",
            c->version ? c->version : "", "", c->task ? c->task : "?");
    if (c->sha256)
        fprintf(f, "sha256: %s\n", c->sha256);
    if (c->placeholder)
        fprintf(f, "!!! PLACEHOLDER MODEL, results must not be trusted: %s\n", c->placeholder);
    fprintf(f, "ground truth: %s (%zu rows)\n", t->source, t->n);
    fprintf(f, "evaluated: %zu samples (%zu without prediction, %zu unreadable, %zu skipped as "
            "not images)\n", n_used, c->n_missing, c->n_unreadable,
            c->n_skipped + t->n_skipped);
    fprintf(f, "accuracy: %s   log loss: %s   Cohen's kappa: %s\n",
            fmt(b1, sizeof(b1), r->accuracy, true), fmt(b2, sizeof(b2), r->log_loss, true),
            fmt(b3, sizeof(b3), r->kappa, r->kappa_defined));
    if (!r->kappa_defined)
        fprintf(f, "  (kappa undefined: truth and predictions are all one same class)\n");
    if (r->binary)
        fprintf(f, "(class metrics at threshold %.4g on p(%s))\n", r->at_threshold.threshold,
                c->labels[c->positive]);
    fprintf(f, "\n%-16s %8s %9s %9s %9s %9s\n", "class", "support", "predicted", "precision",
            "recall", "f1");
    for (size_t i = 0; i < c->n_labels; i++) {
        const eval_class *ec = &r->classes[i];
        fprintf(f, "%-16s %8zu %9zu %9s %9s %9s\n", c->labels[i], ec->support, ec->predicted,
                fmt(b1, sizeof(b1), ec->precision, ec->precision_defined),
                fmt(b2, sizeof(b2), ec->recall, ec->recall_defined),
                fmt(b3, sizeof(b3), ec->f1, ec->f1_defined));
    }
    fprintf(f, "%-16s %8zu %9s %9s %9s %9s\n", "macro average", n_used, "",
            fmt(b1, sizeof(b1), r->macro_precision, r->macro_precision_defined),
            fmt(b2, sizeof(b2), r->macro_recall, r->macro_recall_defined),
            fmt(b3, sizeof(b3), r->macro_f1, r->macro_f1_defined));
    fprintf(f, "(n/a: no sample of the class (recall) or no prediction of it (precision))\n");
    if (!r->binary) {
        fprintf(f, "\none-vs-rest AUC of p(class) (95%% CI, DeLong)\n");
        for (size_t i = 0; i < c->n_labels; i++) {
            const eval_class *ec = &r->classes[i];
            fprintf(f, "%-16s %s", c->labels[i],
                    fmt(b1, sizeof(b1), ec->auc.value, ec->auc.defined));
            if (ec->auc.ci_defined)
                fprintf(f, " (%.4f-%.4f)\n", ec->auc.lo, ec->auc.hi);
            else
                fprintf(f, "%s\n", ec->auc.defined ? " (CI n/a: fewer than 2 samples)"
                                                   : " (no sample of the class, or only it)");
        }
    }
    fprintf(f, "\nconfusion matrix (rows: truth, columns: predicted)\n%-16s", "");
    for (size_t j = 0; j < c->n_labels; j++)
        fprintf(f, " %10.10s", c->labels[j]);
    fprintf(f, "\n");
    for (size_t i = 0; i < c->n_labels; i++) {
        fprintf(f, "%-16s", c->labels[i]);
        for (size_t j = 0; j < c->n_labels; j++)
            fprintf(f, " %10zu", r->confusion[i * c->n_labels + j]);
        fprintf(f, "\n");
    }
    if (r->binary) {
        fprintf(f, "\nAUC: %s", fmt(b1, sizeof(b1), r->auc.value, r->auc.defined));
        if (r->auc.ci_defined)
            fprintf(f, " (95%% CI %.4f-%.4f, DeLong)\n", r->auc.lo, r->auc.hi);
        else if (r->auc.defined)
            fprintf(f, " (CI n/a: fewer than 2 samples of a class)\n");
        else
            fprintf(f, " (undefined: the ground truth has only one class)\n");
        const eval_operating_point *ops[2] = {&r->at_threshold, &r->youden};
        for (int q = 0; q < 2; q++) {
            const eval_operating_point *op = ops[q];
            if (q == 1 && r->n_roc <= 1)
                break;
            fprintf(f, "%s %.4g: sensitivity %s", q ? "Youden's optimum, threshold"
                                                    : "at threshold",
                    op->threshold, fmt(b1, sizeof(b1), op->sensitivity.value,
                                       op->sensitivity.defined));
            if (op->sensitivity.ci_defined)
                fprintf(f, " (95%% CI %.4f-%.4f)", op->sensitivity.lo, op->sensitivity.hi);
            fprintf(f, ", specificity %s", fmt(b1, sizeof(b1), op->specificity.value,
                                              op->specificity.defined));
            if (op->specificity.ci_defined)
                fprintf(f, " (95%% CI %.4f-%.4f)", op->specificity.lo, op->specificity.hi);
            fprintf(f, " [TP %zu FP %zu TN %zu FN %zu]\n", op->tp, op->fp, op->tn, op->fn);
        }
        fprintf(f, "(CIs: Wilson score 95%%)\n");
    }
    fprintf(f, "expected calibration error (10 bins, %s): %.4f\n",
            r->binary ? "positive probability" : "top-class confidence", r->ece);
}

static int write_file(const char *dir, const char *name, FILE **ret)
{
    char p[8192];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    if (!(*ret = fopen(p, "w"))) {
        fprintf(stderr, "xregctl: cannot create \"%s\": %s\n", p, strerror(errno));
        return 1;
    }
    return 0;
}

static int close_file(FILE *f, const char *dir, const char *name)
{
    if (ferror(f) | (fclose(f) != 0)) {
        fprintf(stderr, "xregctl: could not write \"%s/%s\"\n", dir, name);
        return 1;
    }
    return 0;
}

/* metrics.json, predictions.csv, report.txt and the plots of one candidate into dir. */
static int write_outputs(const char *dir, const candidate *c, const truth_set *t,
                         const bool *used, size_t n_used)
{
    xr_error err = XR_ERROR_INIT;
    if (xr_fs_mkdir_p(dir, 0755, &err)) {
        print_err(NULL, &err);
        return 1;
    }
    const eval_result *r = c->res;
    FILE *f;
    if (write_file(dir, "metrics.json", &f))
        return 1;
    write_metrics_json(f, c, r, t, n_used);
    if (close_file(f, dir, "metrics.json") || write_file(dir, "report.txt", &f))
        return 1;
    write_report(f, c, r, t, n_used);
    if (close_file(f, dir, "report.txt") || write_file(dir, "predictions.csv", &f))
        return 1;
    size_t k = c->n_labels;
    fprintf(f, "key,truth,predicted");
    for (size_t j = 0; j < k; j++) {
        fputc(',', f);
        csv_field(f, c->labels[j]);
    }
    fputc('\n', f);
    for (size_t i = 0; i < t->n; i++) {
        if (!used[i])
            continue;
        const float *p = c->probs + i * k;
        int pred = 0;
        if (c->positive >= 0)
            pred = p[c->positive] >= c->threshold ? c->positive : 1 - c->positive;
        else
            for (size_t j = 1; j < k; j++)
                if (p[j] > p[pred])
                    pred = (int)j;
        csv_field(f, t->s[i].key);
        fputc(',', f);
        csv_field(f, c->labels[c->truth_idx[i]]);
        fputc(',', f);
        csv_field(f, c->labels[pred]);
        for (size_t j = 0; j < k; j++)
            fprintf(f, ",%.9g", (double)p[j]);
        fputc('\n', f);
    }
    if (close_file(f, dir, "predictions.csv"))
        return 1;
    char p[8192], title[512];
    snprintf(title, sizeof(title), "%s: confusion matrix (n=%zu)", c->name, n_used);
    snprintf(p, sizeof(p), "%s/confusion.png", dir);
    if (eval_plot_confusion(p, (const char *const *)c->labels, k, r->confusion, title, &err))
        goto fail;
    snprintf(title, sizeof(title), "%s: reliability", c->name);
    snprintf(p, sizeof(p), "%s/reliability.png", dir);
    char xl[300];
    if (r->binary)
        snprintf(xl, sizeof(xl), "predicted p(%s)", c->labels[c->positive]);
    else
        snprintf(xl, sizeof(xl), "confidence (top-class probability)");
    if (eval_plot_reliability(p, r->bins, EVAL_RELIABILITY_BINS, r->ece, xl,
                              r->binary ? "observed frequency of the positive class"
                                        : "observed accuracy",
                              title, &err))
        goto fail;
    if (r->binary) {
        eval_plot_curve cv = {.name = c->name, .points = r->roc, .n_points = r->n_roc,
                              .auc = r->auc.value, .auc_defined = r->auc.defined};
        snprintf(title, sizeof(title), "%s: ROC (n=%zu)", c->name, n_used);
        snprintf(p, sizeof(p), "%s/roc.png", dir);
        if (eval_plot_roc(p, &cv, 1, title, &err))
            goto fail;
    } else {
        eval_plot_curve *cv = calloc(k, sizeof(eval_plot_curve));
        if (!cv) {
            fprintf(stderr, "xregctl: out of memory\n");
            return 1;
        }
        for (size_t j = 0; j < k; j++)
            cv[j] = (eval_plot_curve){.name = c->labels[j], .points = r->classes[j].roc,
                                      .n_points = r->classes[j].n_roc,
                                      .auc = r->classes[j].auc.value,
                                      .auc_defined = r->classes[j].auc.defined};
        snprintf(title, sizeof(title), "%s: ROC one-vs-rest (n=%zu)", c->name, n_used);
        snprintf(p, sizeof(p), "%s/roc.png", dir);
        xr_code prc = eval_plot_roc(p, cv, k, title, &err);
        free(cv);
        if (prc)
            goto fail;
    }
    return 0;
fail:
    print_err(NULL, &err);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */

static int cmp_rank(const void *a, const void *b)
{
    const candidate *x = *(candidate *const *)a, *y = *(candidate *const *)b;
    double d = x->res->log_loss - y->res->log_loss;
    if (fabs(d) > 1e-9)
        return d < 0 ? -1 : 1;
    double sx = x->res->binary ? (x->res->auc.defined ? x->res->auc.value : -1)
                               : (x->res->kappa_defined ? x->res->kappa : -2);
    double sy = y->res->binary ? (y->res->auc.defined ? y->res->auc.value : -1)
                               : (y->res->kappa_defined ? y->res->kappa : -2);
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static bool parse_long(const char *s, long lo, long hi, long *ret)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "xregctl: \"%s\" is not a number in [%ld, %ld]\n", s, lo, hi);
        return false;
    }
    *ret = v;
    return true;
}

int ctl_eval_main(const char *config_path, int argc, char **argv)
{
    static const struct option opts[] = {
        {"truth", required_argument, NULL, 'T'},   {"data", required_argument, NULL, 'D'},
        {"out", required_argument, NULL, 'o'},     {"json", no_argument, NULL, 'j'},
        {"threshold", required_argument, NULL, 't'}, {"labels", required_argument, NULL, 'L'},
        {"positive", required_argument, NULL, 'P'}, {"threads", required_argument, NULL, 'n'},
        {"batch", required_argument, NULL, 'b'},   {"db", required_argument, NULL, 'd'},
        {"strict", no_argument, NULL, 's'},        {"verbose", no_argument, NULL, 'v'},
        {"config", required_argument, NULL, 'c'},  {"help", no_argument, NULL, 'h'},
        {0},
    };
    const bool compare = strcmp(argv[0], "compare") == 0;
    eval_opts o = {.config_path = config_path, .threads = 1, .batch = 8};
    const char *truth_csv = NULL, *data_dir = NULL, *out_dir = NULL;
    bool json = false;
    long lv;
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "T:D:o:jt:L:P:n:b:d:svc:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'T': truth_csv = optarg; break;
        case 'D': data_dir = optarg; break;
        case 'o': out_dir = optarg; break;
        case 'j': json = true; break;
        case 't': {
            char *end;
            o.threshold = strtod(optarg, &end);
            if (*end || end == optarg || !(o.threshold > 0 && o.threshold < 1)) {
                fprintf(stderr, "xregctl: --threshold \"%s\": expected a number strictly "
                        "between 0 and 1\n", optarg);
                return 2;
            }
            o.threshold_given = true;
            break;
        }
        case 'L': o.csv_labels = optarg; break;
        case 'P': o.csv_positive = optarg; break;
        case 'n': if (!parse_long(optarg, 1, 256, &lv)) return 2; o.threads = (int)lv; break;
        case 'b': if (!parse_long(optarg, 1, 256, &lv)) return 2; o.batch = (uint32_t)lv; break;
        case 'd': o.db = optarg; break;
        case 's': o.strict = true; break;
        case 'v': o.verbose = true; break;
        case 'c': o.config_path = optarg; break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    size_t n_cand = (size_t)(argc - optind);
    if (!truth_csv == !data_dir) {
        fprintf(stderr, "xregctl: %s needs exactly one of --truth CSV and --data DIR\n", argv[0]);
        return 2;
    }
    if (n_cand == 0 || (!compare && n_cand != 1) || n_cand > CANDIDATES_MAX) {
        fprintf(stderr, "xregctl: %s needs %s (MODEL.onnx, registry:NAME[@SHA256] or "
                "csv:FILE.csv)\n", argv[0],
                compare ? "1 to 64 candidates" : "exactly one candidate");
        return 2;
    }
    int rc = 1;
    truth_set t = {0};
    candidate *cands = calloc(n_cand, sizeof(candidate));
    candidate **rank = calloc(n_cand, sizeof(candidate *));
    bool *used = NULL;
    int *ti_all = NULL;
    float *probs = NULL;
    db_conn db = {0};
    xr_error err = XR_ERROR_INIT;
    bool dicom_up = false;
    if (!cands || !rank) {
        fprintf(stderr, "xregctl: out of memory\n");
        goto out;
    }
    if (dicom_global_init(&err)) {
        print_err(NULL, &err);
        goto out;
    }
    dicom_up = true;
    if (truth_csv ? read_truth_csv(truth_csv, &t) : read_truth_dir(data_dir, &t, o.verbose))
        goto out;
    if (!(t.source = strdup(truth_csv ? truth_csv : data_dir)))
        goto out;

    for (size_t ci = 0; ci < n_cand; ci++) {
        candidate *c = &cands[ci];
        c->spec = argv[optind + (int)ci];
        int r;
        if (strncmp(c->spec, "registry:", 9) == 0) {
            c->kind = CAND_REGISTRY;
            r = read_registry(c, &t, &db, &o);
        } else if (strncmp(c->spec, "csv:", 4) == 0) {
            c->kind = CAND_CSV;
            r = read_pred_csv(c, &t, &o);
        } else {
            c->kind = CAND_MODEL;
            r = run_model(c, &t, &o);
        }
        if (r)
            goto out;
        if (o.threshold_given)
            c->threshold = o.threshold;
        if (!(c->truth_idx = malloc(t.n * sizeof(int))))
            goto out;
        /* every truth label must be one of the model's */
        for (size_t i = 0; i < t.n; i++) {
            c->truth_idx[i] = label_index(c, t.s[i].label);
            if (c->truth_idx[i] < 0) {
                fprintf(stderr, "xregctl: ground-truth label \"%s\" (%s) is not a label of "
                        "\"%s\" (", t.s[i].label, t.s[i].key, c->name);
                for (size_t j = 0; j < c->n_labels; j++)
                    fprintf(stderr, "%s%s", j ? ", " : "", c->labels[j]);
                fprintf(stderr, ")\n");
                if (data_dir && (strcmp(t.s[i].label, "train") == 0 ||
                                 strcmp(t.s[i].label, "test") == 0 ||
                                 strcmp(t.s[i].label, "validation") == 0))
                    fprintf(stderr, "hint: \"%s\" looks like a split dataset: pass --data "
                            "%s/test\n", data_dir, data_dir);
                goto out;
            }
        }
        if (ci > 0) {
            bool same = c->n_labels == cands[0].n_labels;
            for (size_t j = 0; same && j < c->n_labels; j++)
                same = strcmp(c->labels[j], cands[0].labels[j]) == 0;
            if (!same || c->positive != cands[0].positive) {
                fprintf(stderr, "xregctl: \"%s\" and \"%s\" have different labels or positive "
                        "label: compare needs models of one task\n", cands[0].spec, c->spec);
                goto out;
            }
        }
    }

    /* the common test set: rows every candidate predicted */
    used = calloc(t.n, sizeof(bool));
    if (!used)
        goto out;
    size_t n_used = 0;
    for (size_t i = 0; i < t.n; i++) {
        if (t.s[i].skipped)
            continue;
        bool all = true;
        for (size_t ci = 0; ci < n_cand; ci++) {
            if (!cands[ci].have[i]) {
                all = false;
                cands[ci].n_missing++;
                if (o.verbose)
                    fprintf(stderr, "no prediction by \"%s\": %s%s%s\n", cands[ci].name,
                            t.s[i].key, t.s[i].note ? ": " : "", t.s[i].note ? t.s[i].note : "");
            }
        }
        used[i] = all;
        n_used += all;
    }
    /* unreadable files are already counted there; keep "without prediction" for the rest */
    for (size_t ci = 0; ci < n_cand; ci++)
        cands[ci].n_missing -= cands[ci].n_missing >= cands[ci].n_unreadable
                                   ? cands[ci].n_unreadable
                                   : cands[ci].n_missing;
    if (n_used == 0) {
        fprintf(stderr, "xregctl: none of the %zu ground-truth rows has a prediction%s (keys "
                "are matched by SOP Instance UID or file path)\n", t.n,
                n_cand > 1 ? " from every candidate" : "");
        bool uid_rows = false, model = false;
        for (size_t i = 0; i < t.n; i++)
            uid_rows |= !t.s[i].path;
        for (size_t ci = 0; ci < n_cand; ci++)
            model |= cands[ci].kind == CAND_MODEL;
        if (uid_rows && model)
            fprintf(stderr, "hint: rows keyed by SOP Instance UID have no file to run a model "
                    "on; use registry:NAME, or key the CSV by file path\n");
        goto out;
    }
    if (o.strict) {
        for (size_t ci = 0; ci < n_cand; ci++)
            if (cands[ci].n_missing || cands[ci].n_unreadable) {
                fprintf(stderr, "xregctl: --strict: \"%s\" has %zu rows without prediction and "
                        "%zu unreadable files\n", cands[ci].spec, cands[ci].n_missing,
                        cands[ci].n_unreadable);
                goto out;
            }
    }
    for (size_t ci = 0; ci < n_cand; ci++) {
        candidate *c = &cands[ci];
        size_t k = c->n_labels, m = 0;
        free(ti_all);
        free(probs);
        ti_all = malloc(n_used * sizeof(int));
        probs = malloc(n_used * k * sizeof(float));
        if (!ti_all || !probs)
            goto out;
        for (size_t i = 0; i < t.n; i++) {
            if (!used[i])
                continue;
            ti_all[m] = c->truth_idx[i];
            memcpy(probs + m * k, c->probs + i * k, k * sizeof(float));
            m++;
        }
        eval_input in = {.n = n_used, .n_classes = k, .truth = ti_all, .probs = probs,
                         .positive = c->positive, .threshold = c->threshold};
        if (eval_stats_compute(&in, &c->res, &err)) {
            print_err(c->spec, &err);
            goto out;
        }
        rank[ci] = c;
    }

    if (!compare) {
        candidate *c = &cands[0];
        if (json)
            write_metrics_json(stdout, c, c->res, &t, n_used);
        else
            write_report(stdout, c, c->res, &t, n_used);
        if (out_dir && write_outputs(out_dir, c, &t, used, n_used))
            goto out;
        if (out_dir && !json)
            printf("\nwritten to %s: metrics.json predictions.csv report.txt confusion.png "
                   "reliability.png roc.png\n", out_dir);
        rc = 0;
        goto out;
    }

    qsort(rank, n_cand, sizeof(candidate *), cmp_rank);
    bool binary = rank[0]->res->binary;
    FILE *tf = NULL, *jf = NULL;
    if (out_dir) {
        if (xr_fs_mkdir_p(out_dir, 0755, &err)) {
            print_err(NULL, &err);
            goto out;
        }
        if (write_file(out_dir, "compare.txt", &tf) || write_file(out_dir, "compare.json", &jf)) {
            if (tf)
                fclose(tf);
            goto out;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        FILE *f = pass == 0 ? (json ? NULL : stdout) : tf;
        if (!f)
            continue;
        fprintf(f, "ground truth: %s, %zu samples predicted by every candidate (of %zu rows)\n",
                t.source, n_used, t.n);
        fprintf(f, "ranking: lowest log loss first; ties by higher %s, then name\n\n",
                binary ? "AUC" : "Cohen's kappa");
        fprintf(f, "%-4s %-28s %-10s %9s %9s %9s %9s%s\n", "rank", "model", "version",
                "log loss", "accuracy", "kappa", "macro F1", binary ? "       AUC (95% CI)" : "");
        for (size_t i = 0; i < n_cand; i++) {
            const candidate *c = rank[i];
            char b1[32], b2[32], b3[32], b4[32];
            fprintf(f, "%-4zu %-28.28s %-10.10s %9s %9s %9s %9s", i + 1, c->name,
                    c->version ? c->version : "-", fmt(b1, sizeof(b1), c->res->log_loss, true),
                    fmt(b2, sizeof(b2), c->res->accuracy, true),
                    fmt(b3, sizeof(b3), c->res->kappa, c->res->kappa_defined),
                    fmt(b4, sizeof(b4), c->res->macro_f1, c->res->macro_f1_defined));
            if (binary) {
                fprintf(f, " %9s", fmt(b1, sizeof(b1), c->res->auc.value, c->res->auc.defined));
                if (c->res->auc.ci_defined)
                    fprintf(f, " (%.3f-%.3f)", c->res->auc.lo, c->res->auc.hi);
            }
            fprintf(f, "%s\n", c->placeholder ? "  PLACEHOLDER" : "");
        }
    }
    FILE *jout[2] = {json ? stdout : NULL, jf};
    for (int q = 0; q < 2; q++) {
        FILE *f = jout[q];
        if (!f)
            continue;
        fprintf(f, "{\"ground_truth\": ");
        xr_json_write_str(f, t.source);
        fprintf(f, ", \"n\": %zu, \"n_truth_rows\": %zu, \"ranking_rule\": \"log_loss "
                "ascending, then %s descending, then name\", \"models\": [", n_used, t.n,
                binary ? "auc" : "cohen_kappa");
        for (size_t i = 0; i < n_cand; i++) {
            const candidate *c = rank[i];
            fprintf(f, "%s\n  {\"rank\": %zu, \"name\": ", i ? "," : "", i + 1);
            xr_json_write_str(f, c->name);
            fprintf(f, ", \"version\": ");
            xr_json_write_str(f, c->version);
            fprintf(f, ", \"sha256\": ");
            xr_json_write_str(f, c->sha256);
            fprintf(f, ", \"candidate\": ");
            xr_json_write_str(f, c->spec);
            fprintf(f, ", \"placeholder\": ");
            xr_json_write_str(f, c->placeholder);
            fprintf(f, ", \"log_loss\": ");
            json_num(f, c->res->log_loss, true);
            fprintf(f, ", \"accuracy\": ");
            json_num(f, c->res->accuracy, true);
            fprintf(f, ", \"cohen_kappa\": ");
            json_num(f, c->res->kappa, c->res->kappa_defined);
            fprintf(f, ", \"macro_f1\": ");
            json_num(f, c->res->macro_f1, c->res->macro_f1_defined);
            if (binary) {
                fprintf(f, ", \"auc\": ");
                json_num(f, c->res->auc.value, c->res->auc.defined);
                fprintf(f, ", \"auc_ci95\": [");
                json_num(f, c->res->auc.lo, c->res->auc.ci_defined);
                fprintf(f, ", ");
                json_num(f, c->res->auc.hi, c->res->auc.ci_defined);
                fprintf(f, "]");
            }
            fprintf(f, ", \"n_unreadable\": %zu, \"n_without_prediction\": %zu}",
                    c->n_unreadable, c->n_missing);
        }
        fprintf(f, "\n]}\n");
    }
    if (out_dir) {
        bool bad = close_file(tf, out_dir, "compare.txt") | close_file(jf, out_dir,
                                                                        "compare.json");
        if (bad)
            goto out;
        for (size_t i = 0; i < n_cand; i++) {
            char sub[8192], safe[64];
            snprintf(safe, sizeof(safe), "%s", rank[i]->name);
            for (char *p = safe; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
                    *p = '_';
            snprintf(sub, sizeof(sub), "%s/%02zu-%s", out_dir, i + 1, safe);
            if (write_outputs(sub, rank[i], &t, used, n_used))
                goto out;
        }
        if (binary) {
            eval_plot_curve cv[CANDIDATES_MAX];
            for (size_t i = 0; i < n_cand; i++)
                cv[i] = (eval_plot_curve){.name = rank[i]->name, .points = rank[i]->res->roc,
                                          .n_points = rank[i]->res->n_roc,
                                          .auc = rank[i]->res->auc.value,
                                          .auc_defined = rank[i]->res->auc.defined};
            char p[8192], title[256];
            snprintf(p, sizeof(p), "%s/roc.png", out_dir);
            snprintf(title, sizeof(title), "ROC, %zu models (n=%zu)", n_cand, n_used);
            if (eval_plot_roc(p, cv, n_cand, title, &err)) {
                print_err(NULL, &err);
                goto out;
            }
        }
        if (!json)
            printf("\nwritten to %s: compare.txt compare.json%s and one folder per model\n",
                   out_dir, binary ? " roc.png" : "");
    }
    rc = 0;
out:
    for (size_t ci = 0; cands && ci < n_cand; ci++)
        cand_free(&cands[ci]);
    free(cands);
    free(rank);
    free(used);
    free(ti_all);
    free(probs);
    truth_free(&t);
    db_close(&db);
    if (dicom_up)
        dicom_global_done();
    return rc;
}
