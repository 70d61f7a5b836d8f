/*
 * xregctl nn-info / nn-run / nn-bench: inspect, run and time an ONNX model with nn/.
 * nn-run reads a raw little-endian float32 tensor, or an image file (PNG, JPEG or DICOM, told
 * by its content) that it preprocesses per the model's xreg.* metadata through classifier.h.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>

/* nn/'s own ceiling on max_batch (NN_MAX_BATCH) */
#define NN_MAX_BATCH_CLI 1024

#include "classifier.h"
#include "ctl-nn.h"
#include "dicom.h"
#include "nn.h"

void ctl_nn_usage(FILE *f)
{
    fprintf(f,
            "  nn-info MODEL.onnx   inputs, outputs, ops, metadata and parameter count of a model\n"
            "  nn-run MODEL.onnx --input IN --output OUT.f32 [--threads N] [--top K]\n"
            "                 IN is a raw little-endian float32 tensor (the model's input shape,\n"
            "                 batch from the file length), or a PNG, JPEG or DICOM image that is\n"
            "                 preprocessed per the model's xreg.* metadata (the model must pass\n"
            "                 model-info); writes raw float32 outputs (probabilities for an image;\n"
            "                 --output optional then) and prints the top classes with labels\n"
            "  nn-bench MODEL.onnx [--batch N] [--threads N] [--runs N]  latency and throughput\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void print_tensor(const nn_tensor_info *t)
{
    printf("  %s: %s [", t->name, nn_dtype_name(t->dtype));
    for (int d = 0; d < t->rank; d++) {
        if (d)
            printf(", ");
        if (d == 0 && t->batch_dynamic)
            printf("batch");
        else
            printf("%lld", (long long)t->dims[d]);
    }
    printf("]\n");
}

static int load(const char *path, uint32_t max_batch, int threads, nn_model **m)
{
    nn_params p = nn_params_default();
    p.max_batch = max_batch;
    p.n_threads = threads;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = nn_model_load(path, &p, m, &err);
    if (rc == XR_E_UNSUPPORTED && max_batch > 1 && strstr(err.msg, "one at a time")) {
        /* samples mix in this graph: it still runs one sample (or its fixed batch) per run */
        p.max_batch = 1;
        rc = nn_model_load(path, &p, m, &err);
    }
    if (rc) {
        fprintf(stderr, "xregctl: %s\n", err.msg);
        if (err.detail[0])
            fprintf(stderr, "%s\n", err.detail);
        return err.code == XR_E_UNSUPPORTED ? 3 : 1;
    }
    return 0;
}

static int cmd_info(const char *path)
{
    nn_model *m;
    int rc = load(path, 1, 1, &m);
    if (rc)
        return rc;
    nn_model_stats st;
    nn_model_stats_get(m, &st);
    printf("model: %s\n", path);
    printf("producer: %s\nopset: %lld\n", st.producer[0] ? st.producer : "(none)",
           (long long)st.opset);
    printf("inputs:\n");
    for (size_t i = 0; i < nn_model_n_inputs(m); i++) {
        nn_tensor_info t;
        nn_model_input(m, i, &t);
        print_tensor(&t);
    }
    printf("outputs:\n");
    for (size_t i = 0; i < nn_model_n_outputs(m); i++) {
        nn_tensor_info t;
        nn_model_output(m, i, &t);
        print_tensor(&t);
    }
    printf("parameters: %llu\n", (unsigned long long)st.n_parameters);
    printf("nodes: %zu in the file, %zu steps after folding and fusion (%zu fused)\n",
           st.n_nodes_file, st.n_steps, st.n_fused);
    printf("activation memory per session: %.1f MiB\n", (double)st.arena_bytes / 1048576.0);
    printf("ops:\n");
    for (size_t i = 0; i < nn_model_n_op_types(m); i++) {
        const char *name;
        size_t count;
        nn_model_op_type(m, i, &name, &count);
        printf("  %-22s %zu\n", name, count);
    }
    printf("metadata:%s\n", nn_model_n_metadata(m) ? "" : " (none)");
    for (size_t i = 0; i < nn_model_n_metadata(m); i++) {
        const char *k, *v;
        nn_model_metadata(m, i, &k, &v);
        printf("  %s = %s\n", k, v);
    }
    nn_model_free(m);
    return 0;
}

/* The label of class c from xreg.labels, or NULL. */
static const char *label(const char *labels, size_t c, char *buf, size_t n)
{
    if (!labels)
        return NULL;
    const char *p = labels;
    for (size_t i = 0; i < c; i++) {
        p = strchr(p, ',');
        if (!p)
            return NULL;
        p++;
    }
    size_t l = strcspn(p, ",");
    if (l >= n)
        l = n - 1;
    memcpy(buf, p, l);
    buf[l] = '\0';
    return buf;
}

static void *read_all(const char *path, size_t *ret_n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "xregctl: cannot open \"%s\": %s\n", path, strerror(errno));
        return NULL;
    }
    void *buf = NULL;
    size_t n = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long l = ftell(f);
        if (l >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)l + 1)) &&
            fread(buf, 1, (size_t)l, f) == (size_t)l)
            n = (size_t)l;
        else {
            free(buf);
            buf = NULL;
        }
    }
    if (!buf)
        fprintf(stderr, "xregctl: could not read \"%s\"\n", path);
    fclose(f);
    *ret_n = n;
    return buf;
}

/* PNG/JPEG signature or a DICOM Part-10 preamble: an image, not a raw tensor. */
static bool is_image_file(const char *path)
{
    int sig = classifier_file_signature(path);
    if (sig != 0)
        return sig > 0;
    size_t l = strlen(path);
    return l > 4 && strcasecmp(path + l - 4, ".dcm") == 0;
}

static int cmd_run_image(const char *path, const char *in_path, const char *out_path,
                         int threads, int top)
{
    int rc = 1;
    classifier *c = NULL;
    classifier_session *s = NULL;
    float *in = NULL, *probs = NULL;
    xr_error err = XR_ERROR_INIT;
    if (dicom_global_init(&err) || classifier_load(path, 1, threads, &c, &err) ||
        classifier_session_new(c, threads, &s, &err)) {
        fprintf(stderr, "xregctl: %s\n", err.msg);
        if (err.detail[0])
            fprintf(stderr, "%s\n", err.detail);
        rc = err.code == XR_E_UNSUPPORTED ? 3 : 1;
        goto out;
    }
    const classifier_meta *mi = classifier_info(c);
    in = malloc(classifier_input_floats(c) * sizeof(float));
    probs = malloc(mi->n_labels * sizeof(float));
    if (!in || !probs) {
        fprintf(stderr, "xregctl: out of memory\n");
        goto out;
    }
    classifier_file_kind kind;
    if (classifier_prepare_file(s, in_path, NULL, in, &kind, &err) ||
        classifier_run(s, 1, in, probs, &err)) {
        fprintf(stderr, "xregctl: %s\n", err.msg);
        if (err.detail[0])
            fprintf(stderr, "%s\n", err.detail);
        rc = err.code == XR_E_UNSUPPORTED ? 3 : 1;
        goto out;
    }
    if (out_path) {
        FILE *f = fopen(out_path, "wb");
        bool ok = f && fwrite(probs, sizeof(float), mi->n_labels, f) == mi->n_labels;
        if (!f || fclose(f) != 0 || !ok) {
            fprintf(stderr, "xregctl: could not write \"%s\"\n", out_path);
            goto out;
        }
    }
    printf("model: %s %s (%s)\n", mi->name, mi->version, classifier_task_name(mi->task));
    if (mi->placeholder)
        printf("PLACEHOLDER MODEL, do not trust: %s\n", mi->placeholder);
    printf("input: %s (%s), preprocessing %s\n", in_path,
           kind == CLASSIFIER_FILE_DICOM ? "DICOM" : kind == CLASSIFIER_FILE_PNG ? "PNG" : "JPEG",
           mi->preproc_fingerprint);
    bool used[1024] = {0};
    for (int k = 0; k < top && (size_t)k < mi->n_labels && k < 1024; k++) {
        size_t best = SIZE_MAX;
        for (size_t i = 0; i < mi->n_labels && i < 1024; i++)
            if (!used[i] && (best == SIZE_MAX || probs[i] > probs[best]))
                best = i;
        used[best] = true;
        printf("  %-14s %.5f%s%s%s\n", mi->labels[best], probs[best],
               mi->dicom_terms ? "  (DICOM " : "", mi->dicom_terms ? mi->dicom_terms[best] : "",
               mi->dicom_terms ? ")" : "");
    }
    if (mi->positive_index >= 0)
        printf("decision at threshold %.3g: %s\n", mi->threshold,
               probs[mi->positive_index] >= mi->threshold ? mi->positive_label
                                                          : mi->labels[1 - mi->positive_index]);
    rc = 0;
out:
    free(in);
    free(probs);
    classifier_session_free(s);
    classifier_free(c);
    return rc;
}

static int cmd_run(const char *path, const char *in_path, const char *out_path, int threads,
                   int top)
{
    if (is_image_file(in_path))
        return cmd_run_image(path, in_path, out_path, threads, top);
    if (!out_path) {
        fprintf(stderr, "xregctl: nn-run with a raw float32 input needs --output OUT.f32\n");
        return 2;
    }
    size_t n_in;
    float *in = read_all(in_path, &n_in);
    if (!in)
        return 1;
    int rc = 1;
    nn_model *m = NULL;
    nn_session *s = NULL;
    void **outs = NULL;
    nn_tensor_info ti;
    xr_error err = XR_ERROR_INIT;
    /* the batch comes from the input length, which needs the sample size: a batch of several
     * reloads with max_batch = the batch (a batch plan costs activation memory per sample) */
    if ((rc = load(path, 1, threads, &m)))
        goto out;
    if (nn_model_n_inputs(m) == 1 && nn_model_input(m, 0, &ti) && ti.batch_dynamic &&
        ti.sample_bytes && n_in % ti.sample_bytes == 0 && n_in / ti.sample_bytes > 1 &&
        n_in / ti.sample_bytes <= NN_MAX_BATCH_CLI) {
        m = nn_model_free(m);
        if ((rc = load(path, (uint32_t)(n_in / ti.sample_bytes), threads, &m)))
            goto out;
    }
    rc = 1;
    if (nn_model_n_inputs(m) != 1 || !nn_model_input(m, 0, &ti) || ti.dtype != NN_DTYPE_FLOAT) {
        fprintf(stderr, "xregctl: nn-run needs a model with one float input\n");
        goto out;
    }
    if (n_in == 0 || n_in % ti.sample_bytes) {
        fprintf(stderr, "xregctl: \"%s\" has %zu bytes, not a multiple of one sample (%zu bytes "
                "of float32 for input \"%s\")\n", in_path, n_in, ti.sample_bytes, ti.name);
        goto out;
    }
    size_t n_samples = n_in / ti.sample_bytes;
    if (n_samples > 1 && !ti.batch_dynamic) {
        fprintf(stderr, "xregctl: \"%s\" holds %zu samples but the model's batch is fixed\n",
                in_path, n_samples);
        goto out;
    }
    if (n_samples > nn_model_max_batch(m)) {
        fprintf(stderr, "xregctl: \"%s\" holds %zu samples, at most %u per run\n", in_path,
                n_samples, nn_model_max_batch(m));
        goto out;
    }
    uint32_t batch = (uint32_t)n_samples;
    if (nn_session_new(m, threads, &s, &err)) {
        fprintf(stderr, "xregctl: %s\n", err.msg);
        goto out;
    }
    size_t n_out = nn_model_n_outputs(m);
    outs = calloc(n_out, sizeof(void *));
    for (size_t i = 0; outs && i < n_out; i++) {
        nn_tensor_info to;
        nn_model_output(m, i, &to);
        if (!(outs[i] = malloc(to.sample_bytes * batch + 1)))
            break;
    }
    const void *ins[1] = {in};
    if (nn_session_run(s, batch, ins, outs, &err)) {
        fprintf(stderr, "xregctl: %s\n", err.msg);
        goto out;
    }
    FILE *f = fopen(out_path, "wb");
    if (!f) {
        fprintf(stderr, "xregctl: cannot create \"%s\": %s\n", out_path, strerror(errno));
        goto out;
    }
    bool ok = true;
    for (size_t i = 0; i < n_out; i++) {
        nn_tensor_info to;
        nn_model_output(m, i, &to);
        ok &= fwrite(outs[i], 1, to.sample_bytes * batch, f) == to.sample_bytes * batch;
    }
    if (fclose(f) != 0 || !ok) {
        fprintf(stderr, "xregctl: could not write \"%s\"\n", out_path);
        goto out;
    }
    nn_tensor_info to;
    nn_model_output(m, 0, &to);
    const char *labels = nn_model_metadata_get(m, "xreg.labels");
    if (to.dtype == NN_DTYPE_FLOAT) {
        size_t n_cls = to.sample_bytes / sizeof(float);
        for (uint32_t b = 0; b < batch; b++) {
            const float *y = (const float *)outs[0] + b * n_cls;
            printf("sample %u:", b);
            bool used[4096] = {0};
            for (int k = 0; k < top && (size_t)k < n_cls && k < 4096; k++) {
                size_t best = SIZE_MAX;
                for (size_t c = 0; c < n_cls && c < 4096; c++)
                    if (!used[c] && (best == SIZE_MAX || y[c] > y[best]))
                        best = c;
                used[best] = true;
                char lb[128];
                const char *l = label(labels, best, lb, sizeof(lb));
                printf(" %s%zu%s%s%s=%.5g", k ? "" : "", best, l ? " (" : "", l ? l : "",
                       l ? ")" : "", y[best]);
            }
            printf("\n");
        }
    }
    rc = 0;
out:
    for (size_t i = 0; outs && m && i < nn_model_n_outputs(m); i++)
        free(outs[i]);
    free(outs);
    nn_session_free(s);
    nn_model_free(m);
    free(in);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmd_bench(const char *path, uint32_t batch, int threads, int runs)
{
    nn_model *m = NULL;
    nn_session *s = NULL;
    xr_error err = XR_ERROR_INIT;
    double t0 = now_s();
    int rc = load(path, batch, threads, &m);
    if (rc)
        return rc;
    double t_load = now_s() - t0;
    rc = 1;
    size_t n_in = nn_model_n_inputs(m), n_out = nn_model_n_outputs(m);
    void **ins = calloc(n_in + 1, sizeof(void *)), **outs = calloc(n_out + 1, sizeof(void *));
    double *times = calloc((size_t)runs, sizeof(double));
    if (!ins || !outs || !times)
        goto out;
    uint32_t b_eff = batch;
    for (size_t i = 0; i < n_in; i++) {
        nn_tensor_info t;
        nn_model_input(m, i, &t);
        if (!t.batch_dynamic)
            b_eff = 1;
        size_t n = t.sample_bytes * batch;
        if (!(ins[i] = malloc(n + 1)))
            goto out;
        /* deterministic N(0,1)-ish floats (Irwin-Hall) for float inputs, zeros otherwise */
        memset(ins[i], 0, n);
        if (t.dtype == NN_DTYPE_FLOAT) {
            uint64_t st = 0x9E3779B97F4A7C15ULL + i;
            for (size_t k = 0; k < n / 4; k++) {
                double acc = 0;
                for (int r = 0; r < 4; r++) {
                    st = st * 6364136223846793005ULL + 1442695040888963407ULL;
                    acc += (double)(st >> 11) / 9007199254740992.0;
                }
                ((float *)ins[i])[k] = (float)((acc - 2.0) * 1.7320508);
            }
        }
    }
    for (size_t i = 0; i < n_out; i++) {
        nn_tensor_info t;
        nn_model_output(m, i, &t);
        if (!(outs[i] = malloc(t.sample_bytes * batch + 1)))
            goto out;
    }
    if (nn_session_new(m, threads, &s, &err)) {
        fprintf(stderr, "xregctl: %s\n", err.msg);
        goto out;
    }
    for (int w = 0; w < 2; w++)
        if (nn_session_run(s, b_eff, (const void *const *)ins, outs, &err)) {
            fprintf(stderr, "xregctl: %s\n", err.msg);
            goto out;
        }
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    for (int r = 0; r < runs; r++) {
        double a = now_s();
        if (nn_session_run(s, b_eff, (const void *const *)ins, outs, &err)) {
            fprintf(stderr, "xregctl: %s\n", err.msg);
            goto out;
        }
        times[r] = now_s() - a;
    }
    qsort(times, (size_t)runs, sizeof(double), cmp_double);
    double sum = 0;
    for (int r = 0; r < runs; r++)
        sum += times[r];
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)(ru.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                 (double)(ru.ru_utime.tv_usec - ru0.ru_utime.tv_usec) * 1e-6 +
                 (double)(ru.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1e-6;
    printf("model: %s\nbatch: %u  threads: %d  runs: %d\n", path, b_eff, threads, runs);
    nn_model_stats st;
    nn_model_stats_get(m, &st);
    if (threads > 1 && b_eff > 1 && st.side_by_side)
        printf("batch runs: samples side by side, %u at a time per thread\n", st.lane_batch);
    else if (threads > 1 && b_eff > 1)
        printf("batch runs: every thread in every step\n");
    printf("load: %.3f s\n", t_load);
    printf("latency: median %.2f ms, min %.2f ms, mean %.2f ms\n", times[runs / 2] * 1e3,
           times[0] * 1e3, sum / runs * 1e3);
    printf("throughput: %.2f images/s\n", b_eff / times[runs / 2]);
    /* CPU time is what a busy machine distorts least (spinning OpenMP threads count too) */
    printf("cpu: %.2f ms per run (all threads)\n", cpu / runs * 1e3);
    printf("peak RSS: %.1f MiB\n", (double)ru.ru_maxrss / 1024.0);
    rc = 0;
out:
    for (size_t i = 0; ins && i < n_in; i++)
        free(ins[i]);
    for (size_t i = 0; outs && i < n_out; i++)
        free(outs[i]);
    free(ins);
    free(outs);
    free(times);
    nn_session_free(s);
    nn_model_free(m);
    return rc;
}

static bool parse_int(const char *s, long lo, long hi, long *ret)
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

int ctl_nn_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"input", required_argument, NULL, 'i'},   {"output", required_argument, NULL, 'o'},
        {"threads", required_argument, NULL, 't'}, {"top", required_argument, NULL, 'k'},
        {"batch", required_argument, NULL, 'b'},   {"runs", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},          {0},
    };
    const char *cmd = argv[0], *in = NULL, *out = NULL;
    long threads = 1, top = 5, batch = 1, runs = 20;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "i:o:t:k:b:r:h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 't': if (!parse_int(optarg, 1, 256, &threads)) return 2; break;
        case 'k': if (!parse_int(optarg, 0, 1000, &top)) return 2; break;
        case 'b': if (!parse_int(optarg, 1, 1024, &batch)) return 2; break;
        case 'r': if (!parse_int(optarg, 1, 100000, &runs)) return 2; break;
        case 'h': ctl_nn_usage(stdout); return 0;
        default: ctl_nn_usage(stderr); return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "xregctl: %s needs exactly one MODEL.onnx\n", cmd);
        ctl_nn_usage(stderr);
        return 2;
    }
    const char *model = argv[optind];
    if (strcmp(cmd, "nn-info") == 0)
        return cmd_info(model);
    if (strcmp(cmd, "nn-run") == 0) {
        if (!in) {
            fprintf(stderr, "xregctl: nn-run needs --input IN (float32 tensor or image)\n");
            return 2;
        }
        return cmd_run(model, in, out, (int)threads, (int)top);
    }
    if (strcmp(cmd, "nn-bench") == 0)
        return cmd_bench(model, (uint32_t)batch, (int)threads, (int)runs);
    fprintf(stderr, "xregctl: unrecognized command \"%s\"\n", cmd);
    return 2;
}
