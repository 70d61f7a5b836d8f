/*
 * Metrics registry and its rendering in the Prometheus text exposition format 0.0.4 (metrics.h).
 * The HTTP endpoint that serves it is in http.c.
 *
 * DESIGN
 * A registry is a list of families in creation order, guarded by metrics.lock, which only family
 * creation, rendering and metrics_free take. Each family guards its series with its own mutex;
 * add, set and observe take only that mutex, for a binary search over at most
 * METRICS_MAX_SERIES + 1 series and one to three additions, so an association thread never waits
 * long for a worker or for a scrape. Lock order: metrics.lock, then one family lock.
 *
 * Series are allocated one by one and freed only by metrics_free, and their label values never
 * change once stored, so rendering copies the values under the family lock (a snapshot in which a
 * histogram's buckets, sum and count agree) and formats them after releasing it.
 *
 * Label values are stored cut to METRICS_LABEL_VALUE_MAX_BYTES with invalid UTF-8 replaced by '?'
 * (the exposition format is UTF-8 and a peer chooses its AE title); lookups try the value as given
 * first, so the common case does no copy.
 */
#include "metrics.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xr-log.h"
#include "xr-utf8.h"

/* Label values come from peers (AE titles: 16 characters) and from our own code (stage names,
 * xr_code names); a longer value is cut so that one series costs at most a few hundred bytes. */
#define METRICS_LABEL_VALUE_MAX_BYTES 128
/* Metric and label names come from our own code; the bound keeps the collision check on the
 * stack. */
#define METRICS_NAME_MAX_BYTES 128
/* Buckets per histogram (+Inf excluded): each is one line per series per scrape; Prometheus
 * guidance is about a dozen. */
#define METRICS_MAX_BUCKETS 64
/* The label value new label sets fold into past METRICS_MAX_SERIES. */
#define METRICS_OTHER "_other_"
/* A formatted double: "-2.2250738585072014e-308" is 24 characters. */
#define NUMBER_BYTES 32

/* Roughly 1-2.5-5 steps from 1 ms (a spool write) to 60 s (a slow association or database). */
const double metrics_latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5,   1,      2.5,   5,    10,    25,   60};
const size_t metrics_n_latency_buckets =
    sizeof(metrics_latency_buckets) / sizeof(metrics_latency_buckets[0]);

typedef enum family_kind {
    FAMILY_COUNTER,
    FAMILY_GAUGE,
    FAMILY_GAUGE_FN,
    FAMILY_HISTOGRAM,
    FAMILY_KIND_MAX,
} family_kind;

typedef struct series {
    char *values[2]; /* label values, owned; NULL past the family's n_labels */
    double v[];      /* family.n_values values */
} series;

typedef struct family {
    struct family *next;
    family_kind kind;
    char *name;
    char *help;
    char *labels[2];
    size_t n_labels;
    double *bounds; /* histogram upper bounds, +Inf excluded */
    size_t n_bounds;
    /* Values per series: 1 for counters and gauges; for histograms n_bounds + 1 bucket counts
     * (not cumulative; the last one is +Inf) and then the sum. The count is the sum of the
     * buckets. */
    size_t n_values;
    double (*fn)(void *userdata); /* FAMILY_GAUGE_FN */
    void *userdata;

    pthread_mutex_t lock;
    /* Sorted by label values (strcmp, first label first); METRICS_MAX_SERIES + 1 slots, the
     * extra one for the _other_ series. */
    series **series;
    size_t n_series;
} family;

/* The public handles are families; the wrappers only give each kind its own pointer type. */
struct metrics_counter {
    family f;
};
struct metrics_gauge {
    family f;
};
struct metrics_histogram {
    family f;
};

struct metrics {
    pthread_mutex_t lock;
    family *head;
    family *tail;
};

/* The word for the "# TYPE" line. */
static const char *family_kind_name(family_kind kind)
{
    static const char *const names[FAMILY_KIND_MAX] = {
        [FAMILY_COUNTER] = "counter",
        [FAMILY_GAUGE] = "gauge",
        [FAMILY_GAUGE_FN] = "gauge",
        [FAMILY_HISTOGRAM] = "histogram",
    };
    return (unsigned)kind < FAMILY_KIND_MAX ? names[kind] : "untyped";
}

/* ---- names ---------------------------------------------------------------------------------- */

static bool char_is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool char_is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* */
static bool metric_name_is_valid(const char *s)
{
    if (!s || !(char_is_alpha(s[0]) || s[0] == ':'))
        return false;
    for (const char *p = s + 1; *p; p++)
        if (!(char_is_alpha(*p) || char_is_digit(*p) || *p == ':'))
            return false;
    return true;
}

/* [a-zA-Z_][a-zA-Z0-9_]*, without the "__" prefix Prometheus reserves for itself. */
static bool label_name_is_valid(const char *s)
{
    if (!s || !char_is_alpha(s[0]) || strncmp(s, "__", 2) == 0)
        return false;
    for (const char *p = s + 1; *p; p++)
        if (!(char_is_alpha(*p) || char_is_digit(*p)))
            return false;
    return true;
}

/* The sample names a family exposes: a histogram "h" exposes h_bucket, h_sum and h_count. */
static size_t family_suffixes(family_kind kind, const char *const **ret_suffixes)
{
    static const char *const plain[] = {""};
    static const char *const histogram[] = {"", "_bucket", "_sum", "_count"};
    if (kind == FAMILY_HISTOGRAM) {
        *ret_suffixes = histogram;
        return sizeof(histogram) / sizeof(histogram[0]);
    }
    *ret_suffixes = plain;
    return 1;
}

/* Whether a family (name, kind) would expose a sample name that f already exposes. */
static bool family_collides(const family *f, const char *name, family_kind kind)
{
    const char *const *sa, *const *sb;
    size_t na = family_suffixes(f->kind, &sa), nb = family_suffixes(kind, &sb);
    for (size_t i = 0; i < na; i++)
        for (size_t j = 0; j < nb; j++) {
            char a[METRICS_NAME_MAX_BYTES + 16], b[METRICS_NAME_MAX_BYTES + 16];
            snprintf(a, sizeof(a), "%s%s", f->name, sa[i]);
            snprintf(b, sizeof(b), "%s%s", name, sb[j]);
            if (strcmp(a, b) == 0)
                return true;
        }
    return false;
}

/* ---- families ------------------------------------------------------------------------------- */

static void series_free(series *s)
{
    if (!s)
        return;
    free(s->values[0]);
    free(s->values[1]);
    free(s);
}

/* A series with the given (already normalized) label values and all values 0, or NULL on OOM. */
static series *series_new(const family *f, const char *const key[2])
{
    series *s = calloc(1, sizeof(*s) + f->n_values * sizeof(s->v[0]));
    if (!s)
        return NULL;
    for (size_t i = 0; i < f->n_labels; i++)
        if (!(s->values[i] = strdup(key[i]))) {
            series_free(s);
            return NULL;
        }
    return s;
}

static family *family_free(family *f)
{
    if (!f)
        return NULL;
    for (size_t i = 0; i < f->n_series; i++)
        series_free(f->series[i]);
    free(f->series);
    free(f->bounds);
    free(f->labels[0]);
    free(f->labels[1]);
    free(f->help);
    free(f->name);
    pthread_mutex_destroy(&f->lock);
    free(f);
    return NULL;
}

/* Why the arguments cannot make a family, or NULL if they can. */
static const char *family_check(family_kind kind, const char *name, const char *label1,
                                const char *label2, const double *buckets, size_t n_buckets,
                                double (*fn)(void *userdata))
{
    if (kind == FAMILY_GAUGE_FN && !fn)
        return "no function";
    if (!metric_name_is_valid(name))
        return "invalid metric name (expected [a-zA-Z_:][a-zA-Z0-9_:]*)";
    if (strlen(name) > METRICS_NAME_MAX_BYTES)
        return "metric name too long";
    if (label2 && !label1)
        return "second label without a first";
    const char *labels[2] = {label1, label2};
    for (size_t i = 0; i < 2 && labels[i]; i++) {
        if (!label_name_is_valid(labels[i]))
            return "invalid label name (expected [a-zA-Z_][a-zA-Z0-9_]*, not starting with __)";
        if (strlen(labels[i]) > METRICS_NAME_MAX_BYTES)
            return "label name too long";
        if (kind == FAMILY_HISTOGRAM && strcmp(labels[i], "le") == 0)
            return "label \"le\" is reserved for histogram buckets";
    }
    if (label1 && label2 && strcmp(label1, label2) == 0)
        return "duplicate label name";
    if (kind != FAMILY_HISTOGRAM)
        return NULL;
    if (n_buckets > 0 && !buckets)
        return "no bucket bounds";
    if (n_buckets > METRICS_MAX_BUCKETS)
        return "too many buckets";
    for (size_t i = 0; i < n_buckets; i++) {
        if (isnan(buckets[i]))
            return "NaN bucket bound";
        if (i > 0 && !(buckets[i] > buckets[i - 1]))
            return "bucket bounds not strictly increasing";
    }
    return NULL;
}

/*
 * Build and register a family; NULL (with a debug line saying why) on an invalid argument, a
 * name already taken or OOM.
 */
static family *family_new(metrics *m, family_kind kind, const char *name, const char *help,
                          const char *label1, const char *label2, const double *buckets,
                          size_t n_buckets, double (*fn)(void *userdata), void *userdata)
{
    assert(m);
    if (!m)
        return NULL;
    const char *why = family_check(kind, name, label1, label2, buckets, n_buckets, fn);
    if (why) {
        xr_log_debug("metrics: cannot create \"%s\": %s", name ? name : "(null)", why);
        return NULL;
    }
    /* +Inf is implicit; a caller that lists it gets the same histogram. */
    if (kind == FAMILY_HISTOGRAM && n_buckets > 0 && isinf(buckets[n_buckets - 1]) &&
        buckets[n_buckets - 1] > 0)
        n_buckets--;

    family *f = calloc(1, sizeof(*f));
    if (!f)
        goto oom;
    if (pthread_mutex_init(&f->lock, NULL) != 0) {
        free(f);
        f = NULL;
        goto oom;
    }
    f->kind = kind;
    f->fn = fn;
    f->userdata = userdata;
    f->n_labels = label2 ? 2 : label1 ? 1 : 0;
    f->n_bounds = n_buckets;
    f->n_values = kind == FAMILY_HISTOGRAM ? n_buckets + 2 : 1;
    if (!(f->name = strdup(name)) || !(f->help = strdup(help ? help : "")) ||
        (label1 && !(f->labels[0] = strdup(label1))) ||
        (label2 && !(f->labels[1] = strdup(label2))))
        goto oom;
    if (n_buckets > 0) {
        if (!(f->bounds = malloc(n_buckets * sizeof(*f->bounds))))
            goto oom;
        memcpy(f->bounds, buckets, n_buckets * sizeof(*f->bounds));
    }
    if (kind != FAMILY_GAUGE_FN) {
        if (!(f->series = calloc(METRICS_MAX_SERIES + 1, sizeof(*f->series))))
            goto oom;
        /* A family without labels has its one series from the start, so it renders as 0
         * before the first event rather than being absent. */
        if (f->n_labels == 0) {
            const char *const none[2] = {NULL, NULL};
            if (!(f->series[0] = series_new(f, none)))
                goto oom;
            f->n_series = 1;
        }
    }

    pthread_mutex_lock(&m->lock);
    for (const family *o = m->head; o; o = o->next)
        if (family_collides(o, name, kind)) {
            pthread_mutex_unlock(&m->lock);
            xr_log_debug("metrics: cannot create \"%s\": name already used by \"%s\"", name,
                         o->name);
            return family_free(f);
        }
    if (m->tail)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    pthread_mutex_unlock(&m->lock);
    return f;

oom:
    xr_log_debug("metrics: cannot create \"%s\": out of memory", name);
    return family_free(f);
}

metrics *metrics_new(void)
{
    metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

metrics *metrics_free(metrics *m)
{
    if (!m)
        return NULL;
    for (family *f = m->head, *next; f; f = next) {
        next = f->next;
        family_free(f);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
    return NULL;
}

metrics_counter *metrics_counter_new(metrics *m, const char *name, const char *help,
                                     const char *label1, const char *label2)
{
    _Static_assert(sizeof(metrics_counter) == sizeof(family), "a counter is a family");
    return (metrics_counter *)family_new(m, FAMILY_COUNTER, name, help, label1, label2, NULL, 0,
                                         NULL, NULL);
}

metrics_gauge *metrics_gauge_new(metrics *m, const char *name, const char *help, const char *label1)
{
    _Static_assert(sizeof(metrics_gauge) == sizeof(family), "a gauge is a family");
    return (metrics_gauge *)family_new(m, FAMILY_GAUGE, name, help, label1, NULL, NULL, 0, NULL,
                                       NULL);
}

bool metrics_gauge_fn_new(metrics *m, const char *name, const char *help,
                          double (*fn)(void *userdata), void *userdata)
{
    return family_new(m, FAMILY_GAUGE_FN, name, help, NULL, NULL, NULL, 0, fn, userdata) != NULL;
}

metrics_histogram *metrics_histogram_new(metrics *m, const char *name, const char *help,
                                         const char *label1, const double *buckets,
                                         size_t n_buckets)
{
    _Static_assert(sizeof(metrics_histogram) == sizeof(family), "a histogram is a family");
    return (metrics_histogram *)family_new(m, FAMILY_HISTOGRAM, name, help, label1, NULL, buckets,
                                           n_buckets, NULL, NULL);
}

/* ---- series lookup (hot path) --------------------------------------------------------------- */

static int key_cmp(const family *f, char *const stored[2], const char *const key[2])
{
    for (size_t i = 0; i < f->n_labels; i++) {
        int c = strcmp(stored[i], key[i]);
        if (c != 0)
            return c;
    }
    return 0;
}

/* Index of the first series whose label values are >= key, and whether it equals key. */
static size_t series_search(const family *f, const char *const key[2], bool *ret_found)
{
    size_t lo = 0, hi = f->n_series;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_cmp(f, f->series[mid]->values, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *ret_found = lo < f->n_series && key_cmp(f, f->series[lo]->values, key) == 0;
    return lo;
}

/* v as it is stored: v itself when short and valid UTF-8, else a cut, repaired copy in buf. */
static const char *label_value_normalize(const char *v, char buf[METRICS_LABEL_VALUE_MAX_BYTES + 1])
{
    size_t len = strnlen(v, METRICS_LABEL_VALUE_MAX_BYTES + 1);
    if (len <= METRICS_LABEL_VALUE_MAX_BYTES && xr_utf8_is_valid(v))
        return v;
    if (len > METRICS_LABEL_VALUE_MAX_BYTES)
        len = METRICS_LABEL_VALUE_MAX_BYTES;
    memcpy(buf, v, len);
    buf[len] = '\0';
    /* A multi-byte character cut in two becomes '?' too. */
    (void)xr_utf8_sanitize(buf);
    return buf;
}

/*
 * The series for (v1, v2), created on first use; past METRICS_MAX_SERIES the _other_ series.
 * NULL only on OOM. Caller holds f->lock.
 */
static series *series_get(family *f, const char *v1, const char *v2)
{
    if (f->n_labels == 0)
        return f->series[0];
    const char *key[2] = {v1 ? v1 : "", v2 ? v2 : ""};
    bool found;
    size_t i = series_search(f, key, &found);
    if (found)
        return f->series[i];

    char buf[2][METRICS_LABEL_VALUE_MAX_BYTES + 1];
    bool changed = false;
    for (size_t j = 0; j < f->n_labels; j++) {
        const char *n = label_value_normalize(key[j], buf[j]);
        changed = changed || n != key[j];
        key[j] = n;
    }
    if (changed) {
        i = series_search(f, key, &found);
        if (found)
            return f->series[i];
    }
    if (f->n_series >= METRICS_MAX_SERIES) {
        key[0] = key[1] = METRICS_OTHER;
        i = series_search(f, key, &found);
        if (found)
            return f->series[i];
        /* Only _other_ may take the one slot past the cap. */
        assert(f->n_series == METRICS_MAX_SERIES);
    }
    series *s = series_new(f, key);
    if (!s)
        return NULL;
    memmove(&f->series[i + 1], &f->series[i], (f->n_series - i) * sizeof(f->series[0]));
    f->series[i] = s;
    f->n_series++;
    return s;
}

static void series_oom(const family *f)
{
    xr_log_debug("metrics: out of memory adding a series to \"%s\", dropping the value", f->name);
}

void metrics_counter_add(metrics_counter *c, const char *v1, const char *v2, double n)
{
    /* A family that could not be created counts nothing rather than crashing the daemon. */
    if (!c)
        return;
    /* Counters only go up; a negative or NaN increment is a bug in the caller. */
    assert(n >= 0);
    if (!(n >= 0))
        return;
    family *f = &c->f;
    pthread_mutex_lock(&f->lock);
    series *s = series_get(f, v1, v2);
    if (s)
        s->v[0] += n;
    pthread_mutex_unlock(&f->lock);
    if (!s)
        series_oom(f);
}

static void gauge_update(metrics_gauge *g, const char *v1, double x, bool set)
{
    if (!g)
        return;
    family *f = &g->f;
    pthread_mutex_lock(&f->lock);
    series *s = series_get(f, v1, NULL);
    if (s)
        s->v[0] = set ? x : s->v[0] + x;
    pthread_mutex_unlock(&f->lock);
    if (!s)
        series_oom(f);
}

void metrics_gauge_set(metrics_gauge *g, const char *v1, double value)
{
    gauge_update(g, v1, value, true);
}

void metrics_gauge_add(metrics_gauge *g, const char *v1, double delta)
{
    gauge_update(g, v1, delta, false);
}

void metrics_histogram_observe(metrics_histogram *h, const char *v1, double value)
{
    if (!h)
        return;
    /* A NaN would make the sum NaN for the life of the process; measuring code never
     * produces one on purpose. */
    if (isnan(value))
        return;
    family *f = &h->f;
    /* The first bucket whose upper bound is >= value (Prometheus "le"), found before locking. */
    size_t lo = 0, hi = f->n_bounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->bounds[mid] < value)
            lo = mid + 1;
        else
            hi = mid;
    }
    pthread_mutex_lock(&f->lock);
    series *s = series_get(f, v1, NULL);
    if (s) {
        s->v[lo] += 1;
        s->v[f->n_bounds + 1] += value;
    }
    pthread_mutex_unlock(&f->lock);
    if (!s)
        series_oom(f);
}

/* ---- rendering ------------------------------------------------------------------------------ */

/*
 * Format v as Prometheus clients do: integers without exponent up to 1e15, other values with the
 * fewest digits that read back to the same double ("0.25", "1e-05"), "NaN", "+Inf", "-Inf".
 * Assumes the "C" LC_NUMERIC locale, which the daemon never changes.
 */
static void format_number(double v, char buf[NUMBER_BYTES])
{
    if (isnan(v)) {
        snprintf(buf, NUMBER_BYTES, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, NUMBER_BYTES, "%s", v > 0 ? "+Inf" : "-Inf");
    } else if (v == 0) {
        snprintf(buf, NUMBER_BYTES, "0"); /* also -0 */
    } else if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v) {
        snprintf(buf, NUMBER_BYTES, "%" PRId64, (int64_t)v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, NUMBER_BYTES, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    }
}

/* s with backslash, newline and, in label values, double quote escaped. */
static void write_escaped(FILE *out, const char *s, bool label_value)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", out);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p == '"' && label_value)
            fputs("\\\"", out);
        else
            fputc(*p, out);
    }
}

/* One sample line: name{labels,le="..."} value. values may be NULL without labels. */
static void write_sample(FILE *out, const family *f, const char *suffix, char *const values[2],
                         const char *le, double v)
{
    fputs(f->name, out);
    fputs(suffix, out);
    if (f->n_labels > 0 || le) {
        fputc('{', out);
        for (size_t i = 0; i < f->n_labels; i++) {
            fprintf(out, "%s%s=\"", i > 0 ? "," : "", f->labels[i]);
            write_escaped(out, values[i], true);
            fputc('"', out);
        }
        if (le)
            fprintf(out, "%sle=\"%s\"", f->n_labels > 0 ? "," : "", le);
        fputc('}', out);
    }
    char num[NUMBER_BYTES];
    format_number(v, num);
    fprintf(out, " %s\n", num);
}

static void histogram_write(FILE *out, const family *f, char *const values[2], const double *v)
{
    char le[NUMBER_BYTES];
    double cumulative = 0;
    for (size_t b = 0; b < f->n_bounds; b++) {
        cumulative += v[b];
        format_number(f->bounds[b], le);
        write_sample(out, f, "_bucket", values, le, cumulative);
    }
    cumulative += v[f->n_bounds];
    write_sample(out, f, "_bucket", values, "+Inf", cumulative);
    write_sample(out, f, "_sum", values, NULL, v[f->n_bounds + 1]);
    write_sample(out, f, "_count", values, NULL, cumulative);
}

/* Write one family; false on OOM. Caller holds the registry lock. */
static bool family_write(FILE *out, family *f)
{
    if (f->help[0] != '\0') {
        fprintf(out, "# HELP %s ", f->name);
        write_escaped(out, f->help, false);
        fputc('\n', out);
    }
    fprintf(out, "# TYPE %s %s\n", f->name, family_kind_name(f->kind));
    if (f->kind == FAMILY_GAUGE_FN) {
        write_sample(out, f, "", NULL, NULL, f->fn(f->userdata));
        return true;
    }

    /* Allocated for the most series the family can hold, so that nothing allocates under the
     * family lock and the lock is held only for the copy. */
    series **ss = malloc((METRICS_MAX_SERIES + 1) * sizeof(*ss));
    double *vals = malloc((METRICS_MAX_SERIES + 1) * f->n_values * sizeof(*vals));
    if (!ss || !vals) {
        free(ss);
        free(vals);
        return false;
    }
    pthread_mutex_lock(&f->lock);
    size_t n = f->n_series;
    for (size_t i = 0; i < n; i++) {
        ss[i] = f->series[i];
        memcpy(&vals[i * f->n_values], ss[i]->v, f->n_values * sizeof(*vals));
    }
    pthread_mutex_unlock(&f->lock);

    for (size_t i = 0; i < n; i++) {
        const double *v = &vals[i * f->n_values];
        if (f->kind == FAMILY_HISTOGRAM)
            histogram_write(out, f, ss[i]->values, v);
        else
            write_sample(out, f, "", ss[i]->values, NULL, v[0]);
    }
    free(ss);
    free(vals);
    return true;
}

char *metrics_render(metrics *m)
{
    assert(m);
    if (!m)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (!out)
        return NULL;
    bool ok = true;
    pthread_mutex_lock(&m->lock);
    for (family *f = m->head; f && ok; f = f->next)
        ok = family_write(out, f);
    pthread_mutex_unlock(&m->lock);
    if (ferror(out))
        ok = false;
    if (fclose(out) != 0)
        ok = false;
    if (!ok) {
        free(buf);
        return NULL;
    }
    return buf;
}
