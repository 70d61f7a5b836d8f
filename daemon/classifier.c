/*
 * classifier: nn/ model + parsed xreg.* metadata + preprocessing, validated and warmed up at
 * load; see classifier.h for the metadata contract and the thread rule.
 */
#include "classifier.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "xr-limits.h"

/* Labels of one model: more than any real task needs, few enough to print. */
#define CLASSIFIER_LABELS_MAX 1024
/* One metadata string we keep (name, version, placeholder, provenance, ...). */
#define CLASSIFIER_TEXT_MAX 4096
/* Nesting of xreg.metrics. */
#define CLASSIFIER_JSON_DEPTH_MAX 32

struct classifier {
    nn_model *model;
    classifier_meta meta;
    char *path;       /* a copy: the caller's string may go away after load */
    char *labels_buf; /* the labels, NUL-separated */
    const char **labels;
    const char **terms;
    char fingerprint[256];
    size_t input_floats;
    size_t output_floats; /* per sample */
};

struct classifier_session {
    const classifier *c;
    nn_session *nn;
    nn_preproc *pp;
    float *logits; /* max_batch x output_floats */
};

static const char *const task_names[CLASSIFIER_TASK_MAX] = {
    [CLASSIFIER_TASK_BODY_PART] = "body_part",
    [CLASSIFIER_TASK_IMPLANT] = "implant",
    [CLASSIFIER_TASK_FRACTURE] = "fracture",
};

const char *classifier_task_name(classifier_task t)
{
    return (unsigned)t < CLASSIFIER_TASK_MAX ? task_names[t] : NULL;
}

classifier_task classifier_task_from_string(const char *s)
{
    for (int i = 0; s && i < CLASSIFIER_TASK_MAX; i++)
        if (strcmp(s, task_names[i]) == 0)
            return (classifier_task)i;
    return CLASSIFIER_TASK_MAX;
}

const char *classifier_output_name(classifier_output o)
{
    switch (o) {
    case CLASSIFIER_OUTPUT_LOGITS:
        return "logits";
    case CLASSIFIER_OUTPUT_PROBABILITIES:
        return "probabilities";
    default:
        return NULL;
    }
}

/* A copy of migrations/0002 xreg.body_part_map (label -> dicom_term): a model whose labels the
 * registry cannot map is refused at load, not at the first upsert. */
static const char *const body_part_map[][2] = {
    {"chest", "CHEST"},     {"spine", "SPINE"},     {"knee", "KNEE"},
    {"skull", "SKULL"},     {"finger", "FINGER"},   {"shoulder", "SHOULDER"},
    {"humerus", "HUMERUS"}, {"elbow", "ELBOW"},     {"forearm", "FOREARM"},
    {"wrist", "WRIST"},     {"hand", "HAND"},       {"pelvis_hip", "PELVIS"},
    {"pelvis", "PELVIS"},   {"hip", "HIP"},         {"abdomen", "ABDOMEN"},
    {"foot", "FOOT"},       {"ankle", "ANKLE"},     {"leg", "LEG"},
    {"head", "HEAD"},
};

const char *classifier_body_part_term(const char *label)
{
    for (size_t i = 0; label && i < sizeof(body_part_map) / sizeof(body_part_map[0]); i++)
        if (strcmp(label, body_part_map[i][0]) == 0)
            return body_part_map[i][1];
    return NULL;
}

void classifier_softmax(float *v, size_t n)
{
    if (n == 0)
        return;
    double mx = v[0];
    for (size_t i = 1; i < n; i++)
        if (v[i] > mx)
            mx = v[i];
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += exp((double)v[i] - mx);
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(exp((double)v[i] - mx) / sum);
}

/* ------------------------------------------------------------------------------------------
 * Minimal JSON validation for xreg.metrics (RFC 8259 grammar, depth-bounded).
 */
static void json_ws(const char **p)
{
    while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')
        (*p)++;
}

static bool json_value(const char **p, int depth);

static bool json_string(const char **p)
{
    if (**p != '"')
        return false;
    (*p)++;
    for (;;) {
        unsigned char ch = (unsigned char)**p;
        if (ch == '\0' || ch < 0x20)
            return false;
        (*p)++;
        if (ch == '"')
            return true;
        if (ch == '\\') {
            char e = **p;
            if (e == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!strchr("0123456789abcdefABCDEF", (*p)[i]) || !(*p)[i])
                        return false;
                *p += 5;
            } else if (e && strchr("\"\\/bfnrt", e)) {
                (*p)++;
            } else {
                return false;
            }
        }
    }
}

static bool json_number(const char **p)
{
    const char *s = *p;
    if (*s == '-')
        s++;
    if (*s == '0')
        s++;
    else if (*s >= '1' && *s <= '9')
        while (*s >= '0' && *s <= '9')
            s++;
    else
        return false;
    if (*s == '.') {
        s++;
        if (!(*s >= '0' && *s <= '9'))
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!(*s >= '0' && *s <= '9'))
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    *p = s;
    return true;
}

static bool json_value(const char **p, int depth)
{
    if (depth > CLASSIFIER_JSON_DEPTH_MAX)
        return false;
    json_ws(p);
    char ch = **p;
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        (*p)++;
        json_ws(p);
        if (**p == close) {
            (*p)++;
            return true;
        }
        for (;;) {
            if (ch == '{') {
                json_ws(p);
                if (!json_string(p))
                    return false;
                json_ws(p);
                if (**p != ':')
                    return false;
                (*p)++;
            }
            if (!json_value(p, depth + 1))
                return false;
            json_ws(p);
            if (**p == ',') {
                (*p)++;
                continue;
            }
            if (**p == close) {
                (*p)++;
                return true;
            }
            return false;
        }
    }
    if (ch == '"')
        return json_string(p);
    if (strncmp(*p, "true", 4) == 0 || strncmp(*p, "null", 4) == 0) {
        *p += 4;
        return true;
    }
    if (strncmp(*p, "false", 5) == 0) {
        *p += 5;
        return true;
    }
    return json_number(p);
}

static bool json_is_object(const char *s)
{
    const char *p = s;
    json_ws(&p);
    if (*p != '{' || !json_value(&p, 0))
        return false;
    json_ws(&p);
    return *p == '\0';
}

/* ------------------------------------------------------------------------------------------
 * Metadata check: every problem reported, parsed values written to meta as far as they go.
 */
typedef struct check_ctx {
    void (*problem)(void *ud, const char *key, const char *msg);
    void *ud;
    size_t n;
} check_ctx;

__attribute__((format(printf, 3, 4))) static void report(check_ctx *cx, const char *key,
                                                         const char *fmt, ...)
{
    char msg[XR_ERROR_MSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cx->n++;
    if (cx->problem)
        cx->problem(cx->ud, key, msg);
}

static bool one_line(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20)
            return false;
    return true;
}

/* A required or optional one-line text key; returns the value or NULL. */
static const char *text_key(const nn_model *m, check_ctx *cx, const char *key, bool required)
{
    const char *v = nn_model_metadata_get(m, key);
    if (!v) {
        if (required)
            report(cx, key, "missing metadata key \"%s\"", key);
        return NULL;
    }
    if (v[0] == '\0' || strlen(v) > CLASSIFIER_TEXT_MAX || !one_line(v)) {
        report(cx, key, "metadata \"%s\" must be one non-empty line of at most %d bytes", key,
               CLASSIFIER_TEXT_MAX);
        return NULL;
    }
    return v;
}

/* Split xreg.labels into a NUL-separated copy; *ret_n labels. NULL (reported) on failure. */
static char *split_labels(const char *v, check_ctx *cx, size_t *ret_n)
{
    size_t len = strlen(v);
    char *buf = malloc(len + 1);
    if (!buf) {
        report(cx, "xreg.labels", "out of memory");
        return NULL;
    }
    memcpy(buf, v, len + 1);
    size_t n = 1;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == ',') {
            buf[i] = '\0';
            n++;
        }
    bool ok = true;
    const char *p = buf;
    for (size_t i = 0; i < n && ok; i++, p += strlen(p) + 1) {
        size_t l = strlen(p);
        if (l == 0) {
            report(cx, "xreg.labels", "metadata \"xreg.labels\" = \"%s\": label %zu is empty "
                   "(expected comma-separated labels without spaces)", v, i + 1);
            ok = false;
            break;
        }
        for (size_t k = 0; k < l; k++)
            if (!((p[k] >= 'a' && p[k] <= 'z') || (p[k] >= '0' && p[k] <= '9') || p[k] == '_' ||
                  p[k] == '-')) {
                report(cx, "xreg.labels", "metadata \"xreg.labels\": label \"%s\" has "
                       "character '%c' (expected lower-case letters, digits, '_' or '-')", p,
                       p[k]);
                ok = false;
                break;
            }
        const char *q = buf;
        for (size_t j = 0; j < i && ok; j++, q += strlen(q) + 1)
            if (strcmp(p, q) == 0) {
                report(cx, "xreg.labels", "metadata \"xreg.labels\": label \"%s\" appears "
                       "twice", p);
                ok = false;
            }
    }
    if (ok && (n < 2 || n > CLASSIFIER_LABELS_MAX)) {
        report(cx, "xreg.labels", "metadata \"xreg.labels\" has %zu labels, must be in [2, %d]",
               n, CLASSIFIER_LABELS_MAX);
        ok = false;
    }
    if (!ok) {
        free(buf);
        return NULL;
    }
    *ret_n = n;
    return buf;
}

static const char *label_at(const char *buf, size_t i)
{
    while (i--)
        buf += strlen(buf) + 1;
    return buf;
}

/* The whole check. When c is not NULL, parsed values are stored in it (labels_buf etc.). */
static size_t check(const nn_model *m, classifier *c, check_ctx *cx)
{
    classifier_meta mt = {.positive_index = -1, .threshold = 0.5, .task = CLASSIFIER_TASK_MAX};
    char *labels = NULL;
    size_t n_labels = 0;

    const char *task = nn_model_metadata_get(m, "xreg.task");
    if (!task)
        report(cx, "xreg.task", "missing metadata key \"xreg.task\" (expected body_part, "
               "implant or fracture)");
    else if ((mt.task = classifier_task_from_string(task)) == CLASSIFIER_TASK_MAX)
        report(cx, "xreg.task", "unrecognized metadata \"xreg.task\" = \"%s\" (expected "
               "body_part, implant or fracture)", task);

    mt.name = text_key(m, cx, "xreg.name", true);
    mt.version = text_key(m, cx, "xreg.version", true);
    mt.placeholder = text_key(m, cx, "xreg.placeholder", false);
    mt.provenance = text_key(m, cx, "xreg.provenance", false);

    const char *mj = nn_model_metadata_get(m, "xreg.metrics");
    if (mj) {
        if (!json_is_object(mj))
            report(cx, "xreg.metrics", "metadata \"xreg.metrics\" is not a valid JSON object");
        else
            mt.metrics_json = mj;
    }

    const char *out = nn_model_metadata_get(m, "xreg.output");
    mt.output = CLASSIFIER_OUTPUT_MAX;
    if (!out)
        report(cx, "xreg.output", "missing metadata key \"xreg.output\" (expected logits or "
               "probabilities)");
    else if (strcmp(out, "logits") == 0)
        mt.output = CLASSIFIER_OUTPUT_LOGITS;
    else if (strcmp(out, "probabilities") == 0)
        mt.output = CLASSIFIER_OUTPUT_PROBABILITIES;
    else
        report(cx, "xreg.output", "unrecognized metadata \"xreg.output\" = \"%s\" (expected "
               "logits or probabilities)", out);

    const char *lv = nn_model_metadata_get(m, "xreg.labels");
    if (!lv)
        report(cx, "xreg.labels", "missing metadata key \"xreg.labels\" (expected the class "
               "labels in output order, comma-separated)");
    else
        labels = split_labels(lv, cx, &n_labels);

    const char *pos = nn_model_metadata_get(m, "xreg.positive_label");
    const char *thr = nn_model_metadata_get(m, "xreg.threshold");
    if (mt.task == CLASSIFIER_TASK_BODY_PART) {
        if (pos)
            report(cx, "xreg.positive_label", "metadata \"xreg.positive_label\" is given for "
                   "task body_part (only implant and fracture have a positive label)");
        if (thr)
            report(cx, "xreg.threshold", "metadata \"xreg.threshold\" is given for task "
                   "body_part (only implant and fracture have a threshold)");
        for (size_t i = 0; labels && i < n_labels; i++)
            if (!classifier_body_part_term(label_at(labels, i)))
                report(cx, "xreg.labels", "metadata \"xreg.labels\": \"%s\" is not a body part "
                       "the registry knows (xreg.body_part_map: chest, spine, knee, skull, "
                       "finger, shoulder, humerus, elbow, forearm, wrist, hand, pelvis_hip, "
                       "pelvis, hip, abdomen, foot, ankle, leg, head)", label_at(labels, i));
    } else if (mt.task != CLASSIFIER_TASK_MAX) {
        if (labels && !(n_labels == 2 &&
                        ((strcmp(labels, "absent") == 0 &&
                          strcmp(label_at(labels, 1), "present") == 0) ||
                         (strcmp(labels, "present") == 0 &&
                          strcmp(label_at(labels, 1), "absent") == 0))))
            report(cx, "xreg.labels", "metadata \"xreg.labels\" = \"%s\" for task %s (expected "
                   "absent,present)", lv, task);
        if (!pos) {
            report(cx, "xreg.positive_label", "missing metadata key \"xreg.positive_label\" "
                   "(required for task %s; expected one of the labels, usually present)", task);
        } else {
            for (size_t i = 0; labels && i < n_labels; i++)
                if (strcmp(pos, label_at(labels, i)) == 0)
                    mt.positive_index = (int)i;
            if (labels && mt.positive_index < 0)
                report(cx, "xreg.positive_label", "metadata \"xreg.positive_label\" = \"%s\" "
                       "is not one of xreg.labels (\"%s\")", pos, lv);
        }
        if (thr) {
            char *end;
            errno = 0;
            double t = strtod(thr, &end);
            if (end == thr || *end != '\0' || errno || !(t > 0 && t < 1))
                report(cx, "xreg.threshold", "metadata \"xreg.threshold\" = \"%s\" (expected a "
                       "number strictly between 0 and 1)", thr);
            else {
                mt.threshold = t;
                mt.threshold_given = true;
            }
        }
    }

    /* Preprocessing: every key must be present (a silent default would feed the model other
     * pixels than it was trained on); values are parsed by nn/. */
    static const char *const pp_keys[] = {"xreg.input_size", "xreg.channels", "xreg.mean",
                                          "xreg.std", "xreg.resize"};
    static const char *const pp_expect[] = {"\"H,W\"", "1 or 3", "one float per channel",
                                            "one float > 0 per channel", "stretch or letterbox"};
    const char *pp_vals[5];
    bool pp_ok = true;
    for (int i = 0; i < 5; i++) {
        pp_vals[i] = nn_model_metadata_get(m, pp_keys[i]);
        if (!pp_vals[i]) {
            report(cx, pp_keys[i], "missing metadata key \"%s\" (expected %s)", pp_keys[i],
                   pp_expect[i]);
            pp_ok = false;
        }
    }
    if (pp_ok) {
        xr_error e = XR_ERROR_INIT;
        if (nn_preproc_spec_from_metadata(pp_keys, pp_vals, 5, &mt.preproc, &e) ||
            nn_preproc_spec_validate(&mt.preproc, &e)) {
            const char *key = "preprocessing";
            for (int i = 0; i < 5; i++)
                if (strstr(e.msg, pp_keys[i]))
                    key = pp_keys[i];
            report(cx, key, "%s", e.msg);
            pp_ok = false;
        }
    }

    /* Graph: one float input [batch,]C,H,W as the metadata says; one float output of n_labels
     * values per sample. */
    nn_tensor_info ti, to;
    if (nn_model_n_inputs(m) != 1 || nn_model_n_outputs(m) != 1) {
        report(cx, "graph", "the model has %zu inputs and %zu outputs (expected 1 and 1)",
               nn_model_n_inputs(m), nn_model_n_outputs(m));
    } else {
        nn_model_input(m, 0, &ti);
        nn_model_output(m, 0, &to);
        if (ti.dtype != NN_DTYPE_FLOAT || to.dtype != NN_DTYPE_FLOAT)
            report(cx, "graph", "input \"%s\" is %s and output \"%s\" is %s (expected float)",
                   ti.name, nn_dtype_name(ti.dtype), to.name, nn_dtype_name(to.dtype));
        if (ti.rank != 4)
            report(cx, "graph", "input \"%s\" has rank %d (expected 4: batch, C, H, W)", ti.name,
                   ti.rank);
        else if (pp_ok && (ti.dims[1] != mt.preproc.channels || ti.dims[2] != mt.preproc.height ||
                           ti.dims[3] != mt.preproc.width))
            report(cx, "xreg.input_size", "input \"%s\" is %lldx%lldx%lld (C,H,W) but the "
                   "metadata says xreg.channels = %u and xreg.input_size = %u,%u", ti.name,
                   (long long)ti.dims[1], (long long)ti.dims[2], (long long)ti.dims[3],
                   mt.preproc.channels, mt.preproc.height, mt.preproc.width);
        int64_t per = 1;
        for (int d = 1; d < to.rank; d++)
            per *= to.dims[d];
        if (to.rank < 2 || to.dims[0] != 1 || !ti.batch_dynamic != !to.batch_dynamic)
            report(cx, "graph", "output \"%s\" has rank %d (expected batch, classes)", to.name,
                   to.rank);
        else if (labels && (size_t)per != n_labels)
            report(cx, "xreg.labels", "metadata \"xreg.labels\" has %zu labels but output \"%s\" "
                   "has %lld values per sample", n_labels, to.name, (long long)per);
        if (c) {
            c->input_floats = ti.sample_bytes / sizeof(float);
            c->output_floats = (size_t)per;
        }
    }

    if (c && cx->n == 0) {
        c->labels_buf = labels;
        labels = NULL;
        c->labels = calloc(n_labels, sizeof(char *));
        c->terms = mt.task == CLASSIFIER_TASK_BODY_PART ? calloc(n_labels, sizeof(char *)) : NULL;
        if (!c->labels || (mt.task == CLASSIFIER_TASK_BODY_PART && !c->terms)) {
            report(cx, "xreg.labels", "out of memory");
        } else {
            for (size_t i = 0; i < n_labels; i++) {
                c->labels[i] = label_at(c->labels_buf, i);
                if (c->terms)
                    c->terms[i] = classifier_body_part_term(c->labels[i]);
            }
            mt.n_labels = n_labels;
            mt.labels = c->labels;
            mt.dicom_terms = c->terms;
            if (mt.positive_index >= 0)
                mt.positive_label = c->labels[mt.positive_index];
            if (mt.task == CLASSIFIER_TASK_BODY_PART)
                mt.threshold = 0;
            const nn_preproc_spec *sp = &mt.preproc;
            int k = snprintf(c->fingerprint, sizeof(c->fingerprint), "%ux%u c%u %s mean=",
                             sp->height, sp->width, sp->channels,
                             nn_resize_mode_name(sp->resize));
            for (uint32_t i = 0; i < sp->channels && k > 0 && (size_t)k < sizeof(c->fingerprint);
                 i++)
                k += snprintf(c->fingerprint + k, sizeof(c->fingerprint) - (size_t)k, "%s%g",
                              i ? "," : "", sp->mean[i]);
            if (k > 0 && (size_t)k < sizeof(c->fingerprint))
                k += snprintf(c->fingerprint + k, sizeof(c->fingerprint) - (size_t)k, " std=");
            for (uint32_t i = 0; i < sp->channels && k > 0 && (size_t)k < sizeof(c->fingerprint);
                 i++)
                k += snprintf(c->fingerprint + k, sizeof(c->fingerprint) - (size_t)k, "%s%g",
                              i ? "," : "", sp->std[i]);
            mt.preproc_fingerprint = c->fingerprint;
            c->meta = mt;
        }
    }
    free(labels);
    return cx->n;
}

size_t classifier_check_model(const nn_model *m,
                              void (*problem)(void *ud, const char *key, const char *msg),
                              void *ud)
{
    check_ctx cx = {.problem = problem, .ud = ud};
    return check(m, NULL, &cx);
}

/* ------------------------------------------------------------------------------------------ */

xr_code classifier_file_sha256(const char *path, char out[65], xr_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return xr_error_errno(err, errno, "could not open \"%s\"", path);
    xr_code rc = XR_OK;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char buf[65536], dig[EVP_MAX_MD_SIZE];
    unsigned n_dig = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        rc = xr_error_set(err, XR_E_NOMEM, "could not start sha256");
        goto out;
    }
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        if (EVP_DigestUpdate(md, buf, n) != 1) {
            rc = xr_error_set(err, XR_E_INTERNAL, "sha256 update failed");
            goto out;
        }
    if (ferror(f)) {
        rc = xr_error_errno(err, errno ? errno : EIO, "could not read \"%s\"", path);
        goto out;
    }
    if (EVP_DigestFinal_ex(md, dig, &n_dig) != 1 || n_dig != 32) {
        rc = xr_error_set(err, XR_E_INTERNAL, "sha256 final failed");
        goto out;
    }
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", dig[i]);
out:
    EVP_MD_CTX_free(md);
    fclose(f);
    return rc;
}

typedef struct first_problem {
    xr_error *err;
    bool set;
} first_problem;

static void keep_first(void *ud, const char *key, const char *msg)
{
    (void)key;
    first_problem *fp = ud;
    if (!fp->set) {
        xr_error_set(fp->err, XR_E_INPUT, "%s", msg);
        fp->set = true;
    }
}

xr_code classifier_load(const char *path, uint32_t max_batch, int n_threads, classifier **ret,
                        xr_error *err)
{
    if (!path || !ret || max_batch == 0 || n_threads < 1)
        return xr_error_set(err, XR_E_INPUT, "classifier_load: bad arguments");
    xr_code rc;
    classifier_session *s = NULL;
    float *in = NULL, *probs = NULL;
    classifier *c = calloc(1, sizeof(*c));
    if (!c)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    nn_params p = nn_params_default();
    p.max_batch = max_batch;
    p.n_threads = n_threads;
    if ((rc = nn_model_load(path, &p, &c->model, err)))
        goto out;
    first_problem fp = {.err = err};
    check_ctx cx = {.problem = keep_first, .ud = &fp};
    size_t n = check(c->model, c, &cx);
    if (n) {
        rc = XR_E_INPUT;
        if (err && n > 1)
            xr_error_detail(err, "%zu metadata problems in all; xregctl model-info \"%s\" lists "
                            "them", n, path);
        goto out;
    }
    if (!(c->path = strdup(path))) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto out;
    }
    c->meta.path = c->path;
    c->meta.max_batch = nn_model_max_batch(c->model);
    if ((rc = classifier_file_sha256(path, c->meta.sha256, err)))
        goto out;
    /* Warm-up: the first run pays for oneDNN's JIT and page faults; it also proves the outputs
     * are usable before the model is put in service. */
    if ((rc = classifier_session_new(c, n_threads, &s, err)))
        goto out;
    in = calloc(c->input_floats, sizeof(float));
    probs = calloc(c->meta.n_labels, sizeof(float));
    if (!in || !probs) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = classifier_run(s, 1, in, probs, err))) {
        xr_error_prefix(err, "warm-up run: ");
        goto out;
    }
out:
    free(in);
    free(probs);
    classifier_session_free(s);
    if (rc) {
        xr_error_prefix(err, "model \"%s\": ", path);
        classifier_free(c);
        return rc;
    }
    *ret = c;
    return XR_OK;
}

classifier *classifier_free(classifier *c)
{
    if (!c)
        return NULL;
    nn_model_free(c->model);
    free(c->path);
    free(c->labels_buf);
    free(c->labels);
    free(c->terms);
    free(c);
    return NULL;
}

const classifier_meta *classifier_info(const classifier *c)
{
    return c ? &c->meta : NULL;
}

const nn_model *classifier_model(const classifier *c)
{
    return c ? c->model : NULL;
}

size_t classifier_input_floats(const classifier *c)
{
    return c ? c->input_floats : 0;
}

xr_code classifier_session_new(const classifier *c, int n_threads, classifier_session **ret,
                               xr_error *err)
{
    if (!c || !ret || n_threads < 1)
        return xr_error_set(err, XR_E_INPUT, "classifier_session_new: bad arguments");
    xr_code rc;
    classifier_session *s = calloc(1, sizeof(*s));
    if (!s)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    s->c = c;
    if ((rc = nn_session_new(c->model, n_threads, &s->nn, err)) ||
        (rc = nn_preproc_new(&c->meta.preproc, &s->pp, err)))
        goto fail;
    s->logits = calloc((size_t)c->meta.max_batch * c->output_floats, sizeof(float));
    if (!s->logits) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto fail;
    }
    *ret = s;
    return XR_OK;
fail:
    classifier_session_free(s);
    return rc;
}

classifier_session *classifier_session_free(classifier_session *s)
{
    if (!s)
        return NULL;
    nn_session_free(s->nn);
    nn_preproc_free(s->pp);
    free(s->logits);
    free(s);
    return NULL;
}

xr_code classifier_prepare_gray(classifier_session *s, const float *gray, uint32_t w, uint32_t h,
                                float *input, xr_error *err)
{
    if (!s || !gray || !input)
        return xr_error_set(err, XR_E_INPUT, "classifier_prepare_gray: NULL argument");
    if (w == 0 || h == 0)
        return xr_error_set(err, XR_E_INPUT, "cannot classify an empty image (%ux%u)", w, h);
    nn_image img = {.width = w, .height = h, .channels = 1, .data = (float *)gray,
                    .owned = false};
    return nn_preproc_run(s->pp, &img, input, s->c->input_floats, err);
}

classifier_file_params classifier_file_params_default(void)
{
    return (classifier_file_params){
        .dicom = dicom_pixel_limits_default(),
        .image = nn_image_params_default(),
    };
}

int classifier_file_signature(const char *path)
{
    unsigned char b[132] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t n = fread(b, 1, sizeof(b), f);
    fclose(f);
    nn_image_format fmt = nn_image_format_detect(b, n);
    return fmt == NN_IMAGE_FORMAT_PNG || fmt == NN_IMAGE_FORMAT_JPEG ||
           (n == 132 && memcmp(b + 128, "DICM", 4) == 0);
}

xr_code classifier_prepare_file(classifier_session *s, const char *path,
                                const classifier_file_params *params, float *input,
                                classifier_file_kind *ret_kind, xr_error *err)
{
    if (!s || !path || !input)
        return xr_error_set(err, XR_E_INPUT, "classifier_prepare_file: NULL argument");
    classifier_file_params fp = params ? *params : classifier_file_params_default();
    unsigned char sig[16] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return xr_error_errno(err, errno, "could not open \"%s\"", path);
    size_t n_sig = fread(sig, 1, sizeof(sig), f);
    fclose(f);
    nn_image_format fmt = nn_image_format_detect(sig, n_sig);
    xr_code rc;
    if (fmt == NN_IMAGE_FORMAT_PNG || fmt == NN_IMAGE_FORMAT_JPEG) {
        nn_image img = {0};
        fp.image.color = nn_preproc_spec_color(&s->c->meta.preproc);
        if ((rc = nn_image_read_file(path, &fp.image, &img, err)))
            return rc; /* nn-image prefixes the path */
        rc = nn_preproc_run(s->pp, &img, input, s->c->input_floats, err);
        nn_image_done(&img);
        if (rc)
            xr_error_prefix(err, "\"%s\": ", path);
        else if (ret_kind)
            *ret_kind = fmt == NN_IMAGE_FORMAT_PNG ? CLASSIFIER_FILE_PNG : CLASSIFIER_FILE_JPEG;
        return rc;
    }
    dicom_image di = {0};
    if ((rc = dicom_image_read(path, DICOM_FRAMES_FIRST, &fp.dicom, &di, err))) {
        if (!strstr(err ? err->msg : "", path))
            xr_error_prefix(err, "\"%s\": ", path);
        return rc;
    }
    rc = classifier_prepare_gray(s, di.pixels, di.columns, di.rows, input, err);
    dicom_image_done(&di);
    if (rc)
        xr_error_prefix(err, "\"%s\": ", path);
    else if (ret_kind)
        *ret_kind = CLASSIFIER_FILE_DICOM;
    return rc;
}

xr_code classifier_run(classifier_session *s, uint32_t n_batch, const float *inputs,
                       float *probs, xr_error *err)
{
    if (!s || !inputs || !probs)
        return xr_error_set(err, XR_E_INPUT, "classifier_run: NULL argument");
    const classifier *c = s->c;
    if (n_batch == 0 || n_batch > c->meta.max_batch)
        return xr_error_set(err, XR_E_INPUT, "batch of %u images, must be in [1, %u]", n_batch,
                            c->meta.max_batch);
    const void *in[1] = {inputs};
    void *out[1] = {s->logits};
    xr_code rc = nn_session_run(s->nn, n_batch, in, out, err);
    if (rc)
        return rc;
    size_t nl = c->meta.n_labels;
    for (uint32_t b = 0; b < n_batch; b++) {
        float *v = s->logits + (size_t)b * c->output_floats;
        for (size_t i = 0; i < nl; i++)
            if (!isfinite(v[i]))
                return xr_error_set(err, XR_E_INTERNAL, "model output for image %u of the batch "
                                    "is not finite (class \"%s\": %g)", b, c->meta.labels[i],
                                    (double)v[i]);
        if (c->meta.output == CLASSIFIER_OUTPUT_LOGITS) {
            classifier_softmax(v, nl);
        } else {
            double sum = 0;
            for (size_t i = 0; i < nl; i++) {
                if (v[i] < -1e-4f || v[i] > 1 + 1e-4f)
                    return xr_error_set(err, XR_E_INTERNAL, "model output for image %u is %g "
                                        "for class \"%s\", not a probability (xreg.output = "
                                        "probabilities)", b, (double)v[i], c->meta.labels[i]);
                sum += v[i];
            }
            if (fabs(sum - 1) > 1e-3)
                return xr_error_set(err, XR_E_INTERNAL, "model probabilities for image %u sum "
                                    "to %g, not 1 (xreg.output = probabilities)", b, sum);
            for (size_t i = 0; i < nl; i++)
                v[i] = v[i] < 0 ? 0 : v[i] > 1 ? 1 : v[i];
        }
        memcpy(probs + (size_t)b * nl, v, nl * sizeof(float));
    }
    return XR_OK;
}
