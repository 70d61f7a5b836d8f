/*
 * ONNX backend conformance: runs every case under the given data folders (Debian
 * libonnx-testdata: node, pytorch-converted, pytorch-operator, simple) whose ops are all in
 * nn/'s claimed list, compares each output with the reference at the backend tests' default
 * tolerance (|a-b| <= 1e-7 + 1e-3|b|), and ends with "N passed, N failed, N skipped". Skipped =
 * outside the claim: an op nn/ does not claim, a type it does not hold (float16, bfloat16,
 * string, sequences, optionals) or training mode (Dropout/BatchNormalization training_mode).
 * Inputs that carry shapes, axes or bounds are frozen at load (nn_params.bindings), as a
 * static-shape engine needs. Exit status 1 when a claimed case fails.
 *
 *     nn-conformance [-v] [-k SUBSTRING] DIR...
 *     nn-conformance --list-ops      (the claimed ops, one per line, sorted)
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nn-internal.h"
#include "nn.h"

static uint8_t *slurp(const char *path, size_t *ret_n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *ret_n = n > 0 ? (size_t)n : 0;
    return buf;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted subdirectory names of dir (or files matching prefix when prefix is set). */
static size_t list(const char *dir, const char *prefix, char ***ret)
{
    DIR *d = opendir(dir);
    size_t n = 0, cap = 0;
    char **names = NULL;
    struct dirent *e;
    if (!d)
        return 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (prefix && strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, cap * sizeof(char *));
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof(char *), cmp_names);
    *ret = names;
    return n;
}

static void free_list(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static bool load_pb(const char *path, nn_value *v, char *why, size_t why_n)
{
    size_t n;
    uint8_t *buf = slurp(path, &n);
    if (!buf) {
        snprintf(why, why_n, "cannot read %s", path);
        return false;
    }
    Onnx__TensorProto *t = onnx__tensor_proto__unpack(NULL, n, buf);
    free(buf);
    if (!t) {
        snprintf(why, why_n, "cannot parse %s", path);
        return false;
    }
    xr_error err = XR_ERROR_INIT;
    memset(v, 0, sizeof(*v));
    v->name = "pb";
    bool ok = nn_tensor_load(t, NULL, v, "reference", &err) == XR_OK;
    if (!ok)
        snprintf(why, why_n, "%s", err.msg);
    onnx__tensor_proto__free_unpacked(t, NULL);
    return ok;
}

static bool close_enough(const nn_value *ref, const void *got, char *why, size_t why_n)
{
    for (int64_t i = 0; i < ref->n_elems; i++) {
        double a, b;
        switch (ref->dtype) {
        case NN_DTYPE_FLOAT:
            a = ((const float *)got)[i];
            b = ((const float *)ref->data)[i];
            break;
        case NN_DTYPE_DOUBLE:
            a = ((const double *)got)[i];
            b = ((const double *)ref->data)[i];
            break;
        default: {
            size_t es = nn_elem_size(ref->dtype);
            if (memcmp((const uint8_t *)got + i * es, (const uint8_t *)ref->data + i * es, es)) {
                snprintf(why, why_n, "element %lld differs", (long long)i);
                return false;
            }
            continue;
        }
        }
        if (isnan(a) && isnan(b))
            continue;
        if (isinf(b) && a == b)
            continue;
        if (!(fabs(a - b) <= 1e-7 + 1e-3 * fabs(b))) {
            snprintf(why, why_n, "element %lld is %.9g, expected %.9g", (long long)i, a, b);
            return false;
        }
    }
    return true;
}

typedef enum { R_PASS, R_FAIL, R_SKIP } result;

/* Types nn/ does not claim: float16, bfloat16, string, and non-tensor values. */
static bool type_claimed(const Onnx__ValueInfoProto *vi)
{
    const Onnx__TypeProto *tp = vi->type;
    if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
        return false;
    int t = tp->tensor_type->elem_type;
    return t != NN_DTYPE_FLOAT16 && t != NN_DTYPE_STRING && t != 16 /* bfloat16 */;
}

/* Load with the data set's inputs; when the graph takes shapes, axes or bounds as inputs,
 * load again with those frozen (scalars and integer tensors), as a static-shape engine must. */
static xr_code load_model(const char *path, char **names, size_t n_names, const nn_value *iv,
                          nn_model **ret, bool *ret_bound, xr_error *err)
{
    nn_params prm = nn_params_default();
    prm.max_batch = n_names && iv[0].rank > 0 && iv[0].dims[0] > 0 ? (uint32_t)iv[0].dims[0] : 1;
    *ret_bound = false;
    xr_code rc = nn_model_load(path, &prm, ret, err);
    if (rc != XR_E_UNSUPPORTED || !strstr(err->msg, "not constant"))
        return rc;
    nn_binding *b = calloc(n_names + 1, sizeof(nn_binding));
    size_t nb = 0;
    for (size_t i = 0; i < n_names; i++) {
        const nn_value *v = &iv[i];
        if (v->rank == 0 || v->dtype == NN_DTYPE_INT64 || v->dtype == NN_DTYPE_INT32 ||
            v->dtype == NN_DTYPE_BOOL)
            b[nb++] = (nn_binding){names[i], v->dtype, v->rank, v->dims, v->data};
    }
    prm.bindings = b;
    prm.n_bindings = nb;
    xr_error_clear(err);
    rc = nn_model_load(path, &prm, ret, err);
    free(b);
    *ret_bound = true;
    return rc;
}

static result run_case(const char *dir, char *why, size_t why_n)
{
    char path[4300];
    snprintf(path, sizeof(path), "%s/model.onnx", dir);
    size_t n;
    uint8_t *buf = slurp(path, &n);
    if (!buf) {
        snprintf(why, why_n, "no model.onnx");
        return R_SKIP;
    }
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, n, buf);
    free(buf);
    if (!mp || !mp->graph) {
        snprintf(why, why_n, "cannot parse model.onnx");
        return R_FAIL;
    }
    result res = R_FAIL;
    char **sets = NULL, **names = NULL;
    size_t n_sets = 0, n_names = 0;
    const Onnx__GraphProto *gp = mp->graph;
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *np = gp->node[i];
        if (!nn_op_is_claimed(np->op_type) || (np->domain && np->domain[0])) {
            snprintf(why, why_n, "op %s not claimed", np->op_type);
            res = R_SKIP;
            goto out;
        }
    }
    names = calloc(gp->n_input + 1, sizeof(char *));
    for (size_t i = 0; i < gp->n_input; i++) {
        bool init = false;
        for (size_t k = 0; k < gp->n_initializer; k++)
            init |= strcmp(gp->initializer[k]->name, gp->input[i]->name) == 0;
        if (!type_claimed(gp->input[i])) {
            snprintf(why, why_n, "input type not claimed");
            res = R_SKIP;
            goto out;
        }
        if (!init)
            names[n_names++] = strdup(gp->input[i]->name);
    }
    for (size_t i = 0; i < gp->n_output; i++)
        if (!type_claimed(gp->output[i])) {
            snprintf(why, why_n, "output type not claimed");
            res = R_SKIP;
            goto out;
        }
    n_sets = list(dir, "test_data_set_", &sets);
    if (!n_sets) {
        snprintf(why, why_n, "no test data");
        goto out;
    }
    for (size_t k = 0; k < n_sets; k++) {
        char sd[4300];
        snprintf(sd, sizeof(sd), "%s/%s", dir, sets[k]);
        char **ins = NULL, **outs = NULL;
        size_t n_in = list(sd, "input_", &ins), n_out = list(sd, "output_", &outs);
        nn_value *iv = calloc(n_in + 1, sizeof(nn_value)), *ov = calloc(n_out + 1, sizeof(nn_value));
        const void **ip = calloc(n_in + 1, sizeof(void *));
        void **op = calloc(n_out + 1, sizeof(void *));
        bool ok = n_in == n_names, bound = false;
        nn_model *m = NULL;
        nn_session *s = NULL;
        xr_error err = XR_ERROR_INIT;
        if (!ok)
            snprintf(why, why_n, "%zu input files for %zu graph inputs", n_in, n_names);
        /* input_10 sorts before input_2: read by number */
        for (size_t i = 0; ok && i < n_in; i++) {
            char p[4400];
            snprintf(p, sizeof(p), "%s/input_%zu.pb", sd, i);
            ok = load_pb(p, &iv[i], why, why_n);
        }
        for (size_t i = 0; ok && i < n_out; i++) {
            char p[4400];
            snprintf(p, sizeof(p), "%s/output_%zu.pb", sd, i);
            ok = load_pb(p, &ov[i], why, why_n);
        }
        if (ok && (load_model(path, names, n_names, iv, &m, &bound, &err) ||
                   nn_session_new(m, 1, &s, &err))) {
            snprintf(why, why_n, "%s", err.msg);
            if (strstr(err.msg, "training")) {
                res = R_SKIP; /* training mode is not claimed */
                snprintf(why, why_n, "training mode not claimed");
            }
            ok = false;
        }
        uint32_t batch = 1;
        if (ok && nn_model_n_outputs(m) != n_out) {
            snprintf(why, why_n, "model has %zu outputs, data set %zu", nn_model_n_outputs(m),
                     n_out);
            ok = false;
        }
        size_t n_rt = ok ? nn_model_n_inputs(m) : 0;
        for (size_t i = 0; ok && i < n_rt; i++) {
            nn_tensor_info ti;
            nn_model_input(m, i, &ti);
            size_t j = 0;
            while (j < n_names && strcmp(names[j], ti.name) != 0)
                j++;
            if (j == n_names) {
                snprintf(why, why_n, "model input \"%s\" has no data", ti.name);
                ok = false;
                break;
            }
            if (ti.batch_dynamic && iv[j].rank && iv[j].dims[0] > 0)
                batch = (uint32_t)iv[j].dims[0];
            if (ti.dtype != iv[j].dtype || (size_t)iv[j].n_bytes != ti.sample_bytes * batch) {
                snprintf(why, why_n, "input %zu: data set has %s of %zu bytes, model wants %s of %zu",
                         j, nn_dtype_name(iv[j].dtype), iv[j].n_bytes, nn_dtype_name(ti.dtype),
                         ti.sample_bytes * batch);
                ok = false;
            }
            ip[i] = iv[j].data;
        }
        for (size_t i = 0; ok && i < n_out; i++) {
            nn_tensor_info ti;
            nn_model_output(m, i, &ti);
            if (ti.dtype != ov[i].dtype || ti.sample_bytes * batch != ov[i].n_bytes) {
                snprintf(why, why_n, "output %zu: reference is %s of %zu bytes, model gives %s of %zu",
                         i, nn_dtype_name(ov[i].dtype), ov[i].n_bytes, nn_dtype_name(ti.dtype),
                         ti.sample_bytes * batch);
                ok = false;
            }
            op[i] = ok ? malloc(ov[i].n_bytes + 1) : NULL;
        }
        if (ok && nn_session_run(s, batch, ip, op, &err)) {
            snprintf(why, why_n, "%s", err.msg);
            ok = false;
        }
        for (size_t i = 0; ok && i < n_out; i++) {
            char w[256];
            if (!close_enough(&ov[i], op[i], w, sizeof(w))) {
                snprintf(why, why_n, "%s output %zu: %s", sets[k], i, w);
                ok = false;
            }
        }
        for (size_t i = 0; i < n_in; i++)
            free(iv[i].data);
        for (size_t i = 0; i < n_out; i++) {
            free(ov[i].data);
            free(op[i]);
        }
        free(iv);
        free(ov);
        free(ip);
        free(op);
        free_list(ins, n_in);
        free_list(outs, n_out);
        nn_session_free(s);
        nn_model_free(m);
        if (!ok)
            goto out;
    }
    res = R_PASS;
out:
    onnx__model_proto__free_unpacked(mp, NULL);
    free_list(sets, n_sets);
    free_list(names, n_names);
    return res;
}

int main(int argc, char **argv)
{
    bool verbose = false;
    const char *filter = NULL;
    int first = 1;
    if (argc == 2 && strcmp(argv[1], "--list-ops") == 0) {
        const char *ops[512];
        size_t n = 0;
        while (n < 512 && (ops[n] = nn_claimed_op(n)))
            n++;
        qsort(ops, n, sizeof(ops[0]), cmp_names);
        for (size_t i = 0; i < n; i++)
            printf("%s\n", ops[i]);
        return 0;
    }
    while (first < argc && argv[first][0] == '-') {
        if (strcmp(argv[first], "-v") == 0)
            verbose = true;
        else if (strcmp(argv[first], "-k") == 0 && first + 1 < argc)
            filter = argv[++first];
        else {
            fprintf(stderr, "usage: nn-conformance [-v] [-k SUBSTRING] DIR...\n");
            return 2;
        }
        first++;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: nn-conformance [-v] [-k SUBSTRING] DIR...\n");
        return 2;
    }
    size_t passed = 0, failed = 0, skipped = 0;
    for (int a = first; a < argc; a++) {
        char **cases = NULL;
        size_t n = list(argv[a], NULL, &cases);
        if (!n) {
            fprintf(stderr, "nn-conformance: no cases in \"%s\"\n", argv[a]);
            failed++;
        }
        for (size_t i = 0; i < n; i++) {
            if (filter && !strstr(cases[i], filter))
                continue;
            char dir[4200], why[600] = "";
            snprintf(dir, sizeof(dir), "%s/%s", argv[a], cases[i]);
            result r = run_case(dir, why, sizeof(why));
            if (r == R_PASS) {
                passed++;
                if (verbose)
                    printf("PASS %s\n", cases[i]);
            } else if (r == R_FAIL) {
                failed++;
                printf("FAIL %s: %s\n", cases[i], why);
            } else {
                skipped++;
                if (verbose)
                    printf("SKIP %s: %s\n", cases[i], why);
            }
            fflush(stdout);
        }
        free_list(cases, n);
    }
    printf("%zu passed, %zu failed, %zu skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
