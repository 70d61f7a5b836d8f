/*
 * The daemon's model set (see models.h for the DESIGN notes).
 */
#include "models.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "nn.h"
#include "xr-time.h"

static _Atomic uint64_t next_generation = 1;

/* Append s (JSON-quoted when quote) to *buf; false on OOM (then *buf is freed and NULL). */
static bool json_put(char **buf, size_t *len, size_t *cap, const char *s, bool quote)
{
    if (!*buf)
        return false;
    size_t need = *len + (quote ? 2 : 0) + strlen(s) * 6 + 1;
    if (need > *cap) {
        char *nb = realloc(*buf, need * 2);
        if (!nb) {
            free(*buf);
            *buf = NULL;
            return false;
        }
        *buf = nb;
        *cap = need * 2;
    }
    char *o = *buf + *len;
    if (quote)
        *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (quote && (*p == '"' || *p == '\\')) {
            *o++ = '\\';
            *o++ = (char)*p;
        } else if (quote && *p < 0x20)
            o += sprintf(o, "\\u%04x", *p);
        else
            *o++ = (char)*p;
    }
    if (quote)
        *o++ = '"';
    *o = '\0';
    *len = (size_t)(o - *buf);
    return true;
}

/* All metadata_props as a JSON object of strings; NULL on OOM. */
static char *metadata_json(const nn_model *m)
{
    size_t len = 0, cap = 64;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    buf[0] = '\0';
    json_put(&buf, &len, &cap, "{", false);
    size_t n = nn_model_n_metadata(m);
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        if (!nn_model_metadata(m, i, &k, &v))
            continue;
        if (i)
            json_put(&buf, &len, &cap, ",", false);
        json_put(&buf, &len, &cap, k, true);
        json_put(&buf, &len, &cap, ":", false);
        json_put(&buf, &len, &cap, v, true);
    }
    json_put(&buf, &len, &cap, "}", false);
    return buf;
}

static void set_free(model_set *ms)
{
    for (int t = 0; t < CLASSIFIER_TASK_MAX; t++) {
        ms->slot[t].c = classifier_free(ms->slot[t].c);
        free(ms->slot[t].metadata_json);
        free(ms->slot[t].path);
    }
    for (size_t i = 0; i < ms->n_fracture_terms; i++)
        free(ms->fracture_terms[i]);
    free(ms->fracture_terms);
    free(ms);
}

static xr_code parse_terms(model_set *ms, const char *list, xr_error *err)
{
    if (strcmp(list, "*") == 0) {
        ms->fracture_all = true;
        return XR_OK;
    }
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    ms->fracture_terms = calloc(n, sizeof(char *));
    if (!ms->fracture_terms)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    const char *p = list;
    for (size_t i = 0; i < n; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        ms->fracture_terms[i] = strndup(p, len);
        if (!ms->fracture_terms[i])
            return xr_error_set(err, XR_E_NOMEM, "out of memory");
        ms->n_fracture_terms = i + 1;
        p = end ? end + 1 : p + len;
    }
    return XR_OK;
}

xr_code model_set_load(const xregd_config *cfg, uint32_t max_batch, int n_threads,
                       model_set **ret, xr_error *err)
{
    model_set *ms = calloc(1, sizeof(*ms));
    if (!ms)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    atomic_init(&ms->refs, 1);
    ms->generation = atomic_fetch_add(&next_generation, 1);
    const struct {
        classifier_task task;
        const char *key;
        const char *path;
        double threshold; /* NAN: the model's */
    } want[] = {
        {CLASSIFIER_TASK_BODY_PART, "models.body_part.path", cfg->models.body_part.path, NAN},
        {CLASSIFIER_TASK_IMPLANT, "models.implant.path", cfg->models.implant.path,
         cfg->models.implant.threshold_value},
        {CLASSIFIER_TASK_FRACTURE, "models.fracture.path", cfg->models.fracture.path,
         cfg->models.fracture.threshold_value},
    };
    xr_code rc = parse_terms(ms, cfg->models.fracture.body_parts, err);
    if (rc)
        goto fail;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (!want[i].path[0])
            continue;
        model_slot *s = &ms->slot[want[i].task];
        double t0 = xr_mono_s();
        rc = classifier_load(want[i].path, max_batch, n_threads, &s->c, err);
        if (rc) {
            xr_error_prefix(err, "%s \"%s\": ", want[i].key, want[i].path);
            goto fail;
        }
        s->load_seconds = xr_mono_s() - t0;
        s->path = strdup(want[i].path);
        if (!s->path) {
            rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
            goto fail;
        }
        s->meta = classifier_info(s->c);
        if (s->meta->task != want[i].task) {
            rc = xr_error_set(err, XR_E_CONFIG,
                              "%s \"%s\": the model's xreg.task is \"%s\" but this key is for "
                              "\"%s\" models",
                              want[i].key, want[i].path, classifier_task_name(s->meta->task),
                              classifier_task_name(want[i].task));
            goto fail;
        }
        if (want[i].task != CLASSIFIER_TASK_BODY_PART) {
            s->threshold_from_config = !isnan(want[i].threshold);
            s->threshold = s->threshold_from_config ? want[i].threshold : s->meta->threshold;
        }
        s->metadata_json = metadata_json(classifier_model(s->c));
        if (!s->metadata_json) {
            rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
            goto fail;
        }
        ms->n_loaded++;
    }
    *ret = ms;
    return XR_OK;
fail:
    set_free(ms);
    return rc;
}

model_set *model_set_ref(model_set *ms)
{
    if (ms)
        atomic_fetch_add(&ms->refs, 1);
    return ms;
}

model_set *model_set_unref(model_set *ms)
{
    if (ms && atomic_fetch_sub(&ms->refs, 1) == 1)
        set_free(ms);
    return NULL;
}

bool model_set_fracture_applies(const model_set *ms, const char *term)
{
    if (!ms->slot[CLASSIFIER_TASK_FRACTURE].c || !term || !*term)
        return false;
    if (ms->fracture_all)
        return true;
    for (size_t i = 0; i < ms->n_fracture_terms; i++)
        if (strcasecmp(ms->fracture_terms[i], term) == 0)
            return true;
    return false;
}

void model_slot_describe(const model_slot *s, char *buf, size_t n)
{
    if (!s->c) {
        snprintf(buf, n, "off");
        return;
    }
    const classifier_meta *m = s->meta;
    char thr[64] = "";
    if (m->task != CLASSIFIER_TASK_BODY_PART)
        snprintf(thr, sizeof(thr), ", threshold %.3g%s", s->threshold,
                 s->threshold_from_config ? " (configured)" : "");
    snprintf(buf, n, "\"%s\" version %s (sha256 %.12s, %zu labels, input %s%s) from \"%s\"%s%s",
             m->name, m->version, m->sha256, m->n_labels, m->preproc_fingerprint, thr, s->path,
             m->placeholder ? "; PLACEHOLDER: " : "", m->placeholder ? m->placeholder : "");
}
