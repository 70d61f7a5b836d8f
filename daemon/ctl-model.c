/*
 * xregctl model-info MODEL.onnx [--json]: every xreg.* metadata key of a model, what it means
 * (labels with their DICOM Body Part Examined terms, preprocessing, threshold), the file's
 * sha256, a placeholder flag shown first and loudly, and the validation classifier_load would
 * do (all problems listed, not just the first), including a warm-up run. Exit status 1 when the
 * daemon would refuse the model.
 */
#include "xr-json.h"
#include "ctl-model.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "classifier.h"
#include "dicom.h"
#include "nn.h"

void ctl_model_usage(FILE *f)
{
    fprintf(f, "  model-info MODEL.onnx [--json]  print and validate a model's metadata (task,\n"
               "                 labels, preprocessing, version, sha256, placeholder flag,\n"
               "                 metrics, provenance); exit status 1 if the daemon would refuse it\n");
}

typedef struct problem_list {
    char **key, **msg;
    size_t n, cap;
} problem_list;

static void add_problem(void *ud, const char *key, const char *msg)
{
    problem_list *pl = ud;
    if (pl->n == pl->cap) {
        size_t cap = pl->cap ? 2 * pl->cap : 16;
        char **k = realloc(pl->key, cap * sizeof(char *));
        if (k)
            pl->key = k;
        char **m = realloc(pl->msg, cap * sizeof(char *));
        if (m)
            pl->msg = m;
        if (!k || !m)
            return;
        pl->cap = cap;
    }
    pl->key[pl->n] = strdup(key);
    pl->msg[pl->n] = strdup(msg);
    if (pl->key[pl->n] && pl->msg[pl->n])
        pl->n++;
}

static const char *const known_keys[] = {
    "xreg.task",      "xreg.name",     "xreg.version",        "xreg.labels",
    "xreg.output",    "xreg.positive_label", "xreg.threshold", "xreg.input_size",
    "xreg.channels",  "xreg.mean",     "xreg.std",            "xreg.resize",
    "xreg.placeholder", "xreg.provenance", "xreg.metrics",
};
#define N_KNOWN (sizeof(known_keys) / sizeof(known_keys[0]))

static bool is_known(const char *k)
{
    for (size_t i = 0; i < N_KNOWN; i++)
        if (strcmp(k, known_keys[i]) == 0)
            return true;
    return false;
}

/* Labels of xreg.labels, split into a malloc'ed NUL-separated copy. */
static size_t split(const char *v, char **ret_buf)
{
    *ret_buf = NULL;
    if (!v)
        return 0;
    char *b = strdup(v);
    if (!b)
        return 0;
    size_t n = 1;
    for (char *p = b; *p; p++)
        if (*p == ',') {
            *p = '\0';
            n++;
        }
    *ret_buf = b;
    return n;
}

int ctl_model_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {0}};
    bool json = false;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = true; break;
        case 'h': ctl_model_usage(stdout); return 0;
        default: ctl_model_usage(stderr); return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "xregctl: model-info needs exactly one MODEL.onnx\n");
        return 2;
    }
    const char *path = argv[optind];
    xr_error err = XR_ERROR_INIT;
    nn_model *m = NULL;
    char sha[65] = "";
    problem_list pl = {0};
    char *labels = NULL;
    int rc = 1;
    if (dicom_global_init(&err) || classifier_file_sha256(path, sha, &err) ||
        nn_model_load(path, NULL, &m, &err)) {
        fprintf(stderr, "xregctl: model \"%s\": %s\n", path, err.msg);
        if (err.detail[0])
            fprintf(stderr, "%s\n", err.detail);
        return err.code == XR_E_UNSUPPORTED ? 3 : 1;
    }
    classifier_check_model(m, add_problem, &pl);
    if (pl.n == 0) { /* what the daemon does next: build, warm up, check the outputs */
        classifier *cl = NULL;
        if (classifier_load(path, 1, 1, &cl, &err))
            add_problem(&pl, "warm-up", err.msg);
        classifier_free(cl);
    }
    struct stat st;
    long long bytes = stat(path, &st) == 0 ? (long long)st.st_size : -1;
    const char *task = nn_model_metadata_get(m, "xreg.task");
    const char *placeholder = nn_model_metadata_get(m, "xreg.placeholder");
    const char *metrics = nn_model_metadata_get(m, "xreg.metrics");
    size_t n_labels = split(nn_model_metadata_get(m, "xreg.labels"), &labels);
    bool body = task && strcmp(task, "body_part") == 0;
    nn_tensor_info ti = {0}, to = {0};
    bool have_io = nn_model_n_inputs(m) >= 1 && nn_model_n_outputs(m) >= 1 &&
                   nn_model_input(m, 0, &ti) && nn_model_output(m, 0, &to);
    nn_model_stats stats;
    nn_model_stats_get(m, &stats);

    if (json) {
        printf("{\"path\": ");
        xr_json_write_str(stdout, path);
        printf(", \"sha256\": \"%s\", \"bytes\": %lld, \"valid\": %s", sha, bytes,
               pl.n ? "false" : "true");
        printf(", \"placeholder\": ");
        xr_json_write_str(stdout, placeholder);
        printf(", \"metadata\": {");
        for (size_t i = 0; i < nn_model_n_metadata(m); i++) {
            const char *k, *v;
            nn_model_metadata(m, i, &k, &v);
            printf("%s", i ? ", " : "");
            xr_json_write_str(stdout, k);
            printf(": ");
            xr_json_write_str(stdout, v);
        }
        printf("}, \"labels\": [");
        const char *l = labels;
        for (size_t i = 0; i < n_labels; i++, l += strlen(l) + 1) {
            printf("%s{\"index\": %zu, \"label\": ", i ? ", " : "", i);
            xr_json_write_str(stdout, l);
            if (body) {
                printf(", \"dicom_body_part\": ");
                xr_json_write_str(stdout, classifier_body_part_term(l));
            }
            printf("}");
        }
        printf("], \"metrics\": ");
        /* embedded as JSON when it parses (no problem reported for it), else as a string */
        bool metrics_ok = metrics != NULL;
        for (size_t i = 0; i < pl.n; i++)
            metrics_ok &= strcmp(pl.key[i], "xreg.metrics") != 0;
        if (metrics_ok)
            fputs(metrics, stdout);
        else
            xr_json_write_str(stdout, metrics);
        printf(", \"parameters\": %llu, \"opset\": %lld", (unsigned long long)stats.n_parameters,
               (long long)stats.opset);
        printf(", \"problems\": [");
        for (size_t i = 0; i < pl.n; i++) {
            printf("%s{\"key\": ", i ? ", " : "");
            xr_json_write_str(stdout, pl.key[i]);
            printf(", \"message\": ");
            xr_json_write_str(stdout, pl.msg[i]);
            printf("}");
        }
        printf("]}\n");
    } else {
        printf("model: %s\n", path);
        if (placeholder) {
            printf("\n!!! PLACEHOLDER MODEL: its results must not be trusted !!!\n"
                   "!!! %s\n\n", placeholder);
        }
        printf("sha256: %s (%lld bytes)\n", sha, bytes);
        const char *v;
        printf("name: %s\n", (v = nn_model_metadata_get(m, "xreg.name")) ? v : "(missing)");
        printf("version: %s\n", (v = nn_model_metadata_get(m, "xreg.version")) ? v : "(missing)");
        printf("task: %s\n", task ? task : "(missing)");
        printf("output: %s\n", (v = nn_model_metadata_get(m, "xreg.output")) ? v : "(missing)");
        printf("labels (output order):%s\n", n_labels ? "" : " (missing)");
        const char *l = labels;
        for (size_t i = 0; i < n_labels; i++, l += strlen(l) + 1) {
            const char *term = body ? classifier_body_part_term(l) : NULL;
            if (body)
                printf("  %2zu  %-14s  DICOM Body Part Examined: %s\n", i, l,
                       term ? term : "(not in xreg.body_part_map)");
            else
                printf("  %2zu  %s\n", i, l);
        }
        if (!body) {
            const char *pos = nn_model_metadata_get(m, "xreg.positive_label");
            const char *thr = nn_model_metadata_get(m, "xreg.threshold");
            printf("positive label: %s\n", pos ? pos : "(missing)");
            printf("threshold: %s\n", thr ? thr : "0.5 (default)");
        }
        printf("preprocessing: input %s (H,W), %s channel(s), mean %s, std %s, resize %s\n",
               (v = nn_model_metadata_get(m, "xreg.input_size")) ? v : "(missing)",
               nn_model_metadata_get(m, "xreg.channels") ? nn_model_metadata_get(m, "xreg.channels")
                                                         : "(missing)",
               nn_model_metadata_get(m, "xreg.mean") ? nn_model_metadata_get(m, "xreg.mean")
                                                     : "(missing)",
               nn_model_metadata_get(m, "xreg.std") ? nn_model_metadata_get(m, "xreg.std")
                                                    : "(missing)",
               nn_model_metadata_get(m, "xreg.resize") ? nn_model_metadata_get(m, "xreg.resize")
                                                       : "(missing)");
        if (have_io)
            printf("graph: input \"%s\" %lldx%lldx%lld%s, output \"%s\" %lld values; %llu "
                   "parameters, opset %lld\n", ti.name, (long long)(ti.rank > 1 ? ti.dims[1] : 0),
                   (long long)(ti.rank > 2 ? ti.dims[2] : 0),
                   (long long)(ti.rank > 3 ? ti.dims[3] : 0),
                   ti.batch_dynamic ? " (dynamic batch)" : " (fixed batch)", to.name,
                   (long long)(to.sample_bytes / (to.dtype == NN_DTYPE_FLOAT ? 4 : 1)),
                   (unsigned long long)stats.n_parameters, (long long)stats.opset);
        printf("metrics: %s\n", metrics ? metrics : "(none recorded)");
        printf("provenance: %s\n", (v = nn_model_metadata_get(m, "xreg.provenance"))
                                       ? v
                                       : "(none recorded)");
        bool header = false;
        for (size_t i = 0; i < nn_model_n_metadata(m); i++) {
            const char *k, *val;
            nn_model_metadata(m, i, &k, &val);
            if (is_known(k))
                continue;
            if (!header)
                printf("other metadata:\n");
            header = true;
            printf("  %s = %s%s\n", k, val,
                   strncmp(k, "xreg.", 5) == 0 ? "  (unrecognized xreg key, ignored)" : "");
        }
        if (pl.n == 0) {
            printf("validation: OK (metadata valid, warm-up run finite)\n");
        } else {
            printf("validation: FAILED, %zu problem(s); the daemon would refuse this model:\n",
                   pl.n);
            for (size_t i = 0; i < pl.n; i++)
                printf("  %s: %s\n", pl.key[i], pl.msg[i]);
        }
    }
    rc = pl.n ? 1 : 0;
    for (size_t i = 0; i < pl.n; i++) {
        free(pl.key[i]);
        free(pl.msg[i]);
    }
    free(pl.key);
    free(pl.msg);
    free(labels);
    nn_model_free(m);
    return rc;
}
