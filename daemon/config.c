/*
 * Configuration loader: libyaml document -> schema table -> validated xregd_config.
 *
 * Every key is one row of config_schema: dotted path, type, field offset, default, bounds,
 * whether a reload may change it, and an optional validator. Unknown keys, duplicate keys, wrong
 * types and out-of-range values are errors that name file:line:column and the key path.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#include "dicom.h"
#include "xr-fs.h"
#include "xr-limits.h"
#include "xr-log.h"

typedef enum config_type {
    CONFIG_STRING,
    CONFIG_INT,
    CONFIG_BYTES, /* integer with optional KiB/MiB/GiB/TiB suffix */
    CONFIG_TYPE_MAX,
} config_type;

typedef bool (*config_validate_fn)(const char *value, char *why, size_t why_bytes);

typedef struct config_key {
    const char *path;
    config_type type;
    size_t offset;
    const char *def; /* default, as it would be written in YAML */
    int64_t min;
    int64_t max;
    bool reloadable;
    config_validate_fn validate; /* strings only; NULL = any */
    const char *expected;        /* for messages: what a valid value looks like */
} config_key;

static bool validate_ae_title(const char *v, char *why, size_t n);
static bool validate_bind(const char *v, char *why, size_t n);
static bool validate_log_level(const char *v, char *why, size_t n);
static bool validate_abs_path(const char *v, char *why, size_t n);
static bool validate_abs_path_or_empty(const char *v, char *why, size_t n);
static bool validate_conninfo(const char *v, char *why, size_t n);
static bool validate_user(const char *v, char *why, size_t n);
static bool validate_frames(const char *v, char *why, size_t n);
static bool validate_pseudonym_mode(const char *v, char *why, size_t n);
static bool validate_model_path(const char *v, char *why, size_t n);
static bool validate_threshold(const char *v, char *why, size_t n);
static bool validate_body_part_terms(const char *v, char *why, size_t n);

#define OFF(field) offsetof(xregd_config, field)
#define MODEL_PATH_EXPECTED                                                                        \
    "the path of an ONNX file (absolute, or relative to the configuration file's folder), or "    \
    "\"\" to turn the task off"
#define THRESHOLD_EXPECTED                                                                         \
    "a number between 0 and 1 (exclusive), or \"\" for the model's own xreg.threshold"
#define KIB 1024LL
#define MIB (1024LL * KIB)
#define GIB (1024LL * MIB)
#define TIB (1024LL * GIB)

static const config_key config_schema[] = {
    {"state_dir", CONFIG_STRING, OFF(state_dir), "/var/lib/xreg", 0, 0, false, validate_abs_path,
     "an absolute path"},
    {"dicom.ae_title", CONFIG_STRING, OFF(dicom.ae_title), "XREG", 0, 0, false, validate_ae_title,
     "1 to 16 printable ASCII characters, no backslash"},
    {"dicom.bind", CONFIG_STRING, OFF(dicom.bind), "", 0, 0, false, validate_bind,
     "a numeric IPv4 or IPv6 address, or \"\" for all"},
    {"dicom.port", CONFIG_INT, OFF(dicom.port), "11112", 1, 65535, false, NULL, NULL},
    {"dicom.max_associations", CONFIG_INT, OFF(dicom.max_associations), "16", 1,
     XR_MAX_ASSOCIATIONS_MAX, false, NULL, NULL},
    /* DCMTK's ASC_MINIMUMPDUSIZE and ASC_MAXIMUMPDUSIZE */
    {"dicom.max_pdu_bytes", CONFIG_BYTES, OFF(dicom.max_pdu_bytes), "65536", 4096, 131072, false,
     NULL, NULL},
    {"dicom.acse_timeout_s", CONFIG_INT, OFF(dicom.acse_timeout_s), "30", 1, 3600, false, NULL,
     NULL},
    {"dicom.dimse_timeout_s", CONFIG_INT, OFF(dicom.dimse_timeout_s), "60", 1, 86400, false, NULL,
     NULL},
    {"dicom.max_object_bytes", CONFIG_BYTES, OFF(dicom.max_object_bytes), "2GiB", 1 * KIB,
     (int64_t)XR_OBJECT_MAX_BYTES, false, NULL, NULL},
    {"dicom.stop_timeout_s", CONFIG_INT, OFF(dicom.stop_timeout_s), "30", 1, 3600, true, NULL,
     NULL},
    {"spool.dir", CONFIG_STRING, OFF(spool.dir), "", 0, 0, false, validate_abs_path_or_empty,
     "an absolute path, or \"\" for state_dir/spool"},
    {"spool.max_bytes", CONFIG_BYTES, OFF(spool.max_bytes), "10GiB", 64 * KIB, 1024 * TIB, true,
     NULL, NULL},
    {"database.conninfo", CONFIG_STRING, OFF(database.conninfo), "", 0, 0, false,
     validate_conninfo, "a libpq connection string, or \"\" for the embedded cluster"},
    {"database.embedded_user", CONFIG_STRING, OFF(database.embedded_user), "postgres", 0, 0,
     false, validate_user, "an existing unprivileged user name"},
    {"database.retry_initial_ms", CONFIG_INT, OFF(database.retry_initial_ms), "500", 10, 60000,
     true, NULL, NULL},
    {"database.retry_max_ms", CONFIG_INT, OFF(database.retry_max_ms), "30000", 100, 3600000, true,
     NULL, NULL},
    {"pipeline.workers", CONFIG_INT, OFF(pipeline.workers), "2", 1, XR_WORKERS_MAX, false, NULL,
     NULL},
    {"pipeline.threads_per_worker", CONFIG_INT, OFF(pipeline.threads_per_worker), "1", 1,
     XR_THREADS_PER_WORKER_MAX, false, NULL, NULL},
    /* Models are compiled for this batch size at load: a change needs a restart. */
    {"pipeline.batch_max", CONFIG_INT, OFF(pipeline.batch_max), "8", 1, XR_BATCH_MAX, false, NULL,
     NULL},
    {"pipeline.batch_wait_ms", CONFIG_INT, OFF(pipeline.batch_wait_ms), "20", 0,
     XR_BATCH_WAIT_MS_MAX, true, NULL, NULL},
    {"log.level", CONFIG_STRING, OFF(log.level), "info", 0, 0, true, validate_log_level,
     "one of error, warning, notice, info, debug"},
    {"metrics.bind", CONFIG_STRING, OFF(metrics.bind), "127.0.0.1", 0, 0, false, validate_bind,
     "a numeric IPv4 or IPv6 address, or \"\" for 127.0.0.1"},
    {"metrics.port", CONFIG_INT, OFF(metrics.port), "9112", 0, 65535, false, NULL, NULL},
    /* Read at each decode, so a reload applies to the objects decoded after it. */
    {"pixels.max_rows", CONFIG_INT, OFF(pixels.max_rows), "16384", 1, XR_PIXELS_DIM_MAX, true,
     NULL, NULL},
    {"pixels.max_columns", CONFIG_INT, OFF(pixels.max_columns), "16384", 1, XR_PIXELS_DIM_MAX,
     true, NULL, NULL},
    {"pixels.max_frames", CONFIG_INT, OFF(pixels.max_frames), "1024", 1, XR_PIXELS_FRAMES_MAX,
     true, NULL, NULL},
    {"pixels.max_decoded_bytes", CONFIG_BYTES, OFF(pixels.max_decoded_bytes), "1GiB", 1 * MIB,
     (int64_t)XR_PIXELS_DECODED_BYTES_MAX, true, NULL, NULL},
    {"pixels.frames", CONFIG_STRING, OFF(pixels.frames), "first", 0, 0, true, validate_frames,
     "first or all"},
    /* Not reloadable: changing how identifiers are replaced while running would split one
     * patient into two. */
    {"pseudonymize.patient_id", CONFIG_STRING, OFF(pseudonymize.patient_id), "keep", 0, 0, false,
     validate_pseudonym_mode, "keep, drop or hmac"},
    {"pseudonymize.patient_name", CONFIG_STRING, OFF(pseudonymize.patient_name), "keep", 0, 0,
     false, validate_pseudonym_mode, "keep, drop or hmac"},
    {"pseudonymize.accession_number", CONFIG_STRING, OFF(pseudonymize.accession_number), "keep",
     0, 0, false, validate_pseudonym_mode, "keep, drop or hmac"},
    {"pseudonymize.key_file", CONFIG_STRING, OFF(pseudonymize.key_file), "", 0, 0, false,
     validate_abs_path_or_empty, "an absolute path, or \"\" when no field is hmac"},
    /* A reload loads the new set off the main loop and swaps it in whole (xregd.c). */
    {"models.body_part.path", CONFIG_STRING, OFF(models.body_part.path), "", 0, 0, true,
     validate_model_path, MODEL_PATH_EXPECTED},
    {"models.implant.path", CONFIG_STRING, OFF(models.implant.path), "", 0, 0, true,
     validate_model_path, MODEL_PATH_EXPECTED},
    {"models.implant.threshold", CONFIG_STRING, OFF(models.implant.threshold), "", 0, 0, true,
     validate_threshold, THRESHOLD_EXPECTED},
    {"models.fracture.path", CONFIG_STRING, OFF(models.fracture.path), "", 0, 0, true,
     validate_model_path, MODEL_PATH_EXPECTED},
    {"models.fracture.threshold", CONFIG_STRING, OFF(models.fracture.threshold), "", 0, 0, true,
     validate_threshold, THRESHOLD_EXPECTED},
    {"models.fracture.body_parts", CONFIG_STRING, OFF(models.fracture.body_parts), "PELVIS,HIP",
     0, 0, true, validate_body_part_terms,
     "comma-separated DICOM Body Part Examined terms (upper case, e.g. \"PELVIS,HIP\"), or \"*\" "
     "for every body part"},
};

#define N_KEYS (sizeof(config_schema) / sizeof(config_schema[0]))

size_t config_n_keys(void)
{
    return N_KEYS;
}

const char *config_key_path(size_t i)
{
    return i < N_KEYS ? config_schema[i].path : NULL;
}

bool config_key_equal(const xregd_config *a, const xregd_config *b, size_t i)
{
    if (i >= N_KEYS)
        return false;
    const config_key *k = &config_schema[i];
    if (k->type == CONFIG_STRING)
        return strcmp(*(char *const *)((const char *)a + k->offset),
                      *(char *const *)((const char *)b + k->offset)) == 0;
    return *(const int64_t *)((const char *)a + k->offset) ==
           *(const int64_t *)((const char *)b + k->offset);
}

bool config_key_reloadable(size_t i)
{
    return i < N_KEYS && config_schema[i].reloadable;
}

/* ---- validators ---------------------------------------------------------------------------- */

static bool validate_ae_title(const char *v, char *why, size_t n)
{
    size_t len = strlen(v);
    if (len == 0 || len > XR_AE_TITLE_MAX) {
        snprintf(why, n, "must be 1 to %d characters, got %zu", XR_AE_TITLE_MAX, len);
        return false;
    }
    bool all_space = true;
    for (const char *p = v; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c > 0x7e || c == '\\') {
            snprintf(why, n, "contains character 0x%02x, which an AE title cannot hold", c);
            return false;
        }
        if (c != ' ')
            all_space = false;
    }
    if (all_space || v[0] == ' ' || v[len - 1] == ' ') {
        snprintf(why, n, "must not be blank or start or end with a space");
        return false;
    }
    return true;
}

static bool validate_bind(const char *v, char *why, size_t n)
{
    unsigned char buf[16];
    if (v[0] == '\0' || inet_pton(AF_INET, v, buf) == 1 || inet_pton(AF_INET6, v, buf) == 1)
        return true;
    snprintf(why, n, "\"%s\" is not a numeric IPv4 or IPv6 address", v);
    return false;
}

static bool validate_frames(const char *v, char *why, size_t n)
{
    if (dicom_frame_policy_from_string(v) >= 0)
        return true;
    snprintf(why, n, "unrecognized frame policy \"%s\"", v);
    return false;
}

static bool validate_log_level(const char *v, char *why, size_t n)
{
    xr_log_level level;
    if (xr_log_level_from_string(v, &level))
        return true;
    snprintf(why, n, "unrecognized level \"%s\"", v);
    return false;
}

static bool validate_abs_path(const char *v, char *why, size_t n)
{
    if (v[0] != '/') {
        snprintf(why, n, "\"%s\" is not an absolute path", v);
        return false;
    }
    if (strlen(v) > XR_PATH_MAX) {
        snprintf(why, n, "path is %zu bytes but must be at most %d", strlen(v), XR_PATH_MAX);
        return false;
    }
    return true;
}

static bool validate_abs_path_or_empty(const char *v, char *why, size_t n)
{
    return v[0] == '\0' || validate_abs_path(v, why, n);
}

static bool validate_conninfo(const char *v, char *why, size_t n)
{
    for (const char *p = v; *p; p++)
        if (*p == '\n' || *p == '\r') {
            snprintf(why, n, "must be one line");
            return false;
        }
    return true;
}

static bool validate_user(const char *v, char *why, size_t n)
{
    if (v[0] == '\0' || strlen(v) > 32) {
        snprintf(why, n, "must be 1 to 32 characters");
        return false;
    }
    for (const char *p = v; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.') {
            snprintf(why, n, "\"%s\" is not a valid user name", v);
            return false;
        }
    return true;
}

static bool validate_pseudonym_mode(const char *v, char *why, size_t n)
{
    if (strcmp(v, "keep") == 0 || strcmp(v, "drop") == 0 || strcmp(v, "hmac") == 0)
        return true;
    snprintf(why, n, "unrecognized mode \"%s\"", v);
    return false;
}

static bool validate_model_path(const char *v, char *why, size_t n)
{
    if (strlen(v) > XR_PATH_MAX) {
        snprintf(why, n, "path is %zu bytes but must be at most %d", strlen(v), XR_PATH_MAX);
        return false;
    }
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p < 0x20) {
            snprintf(why, n, "contains control character 0x%02x", (unsigned char)*p);
            return false;
        }
    return true;
}

/* "" or a number in (0, 1); *ret gets NAN for "". */
static bool parse_threshold(const char *v, double *ret)
{
    if (v[0] == '\0') {
        *ret = NAN;
        return true;
    }
    errno = 0;
    char *end;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d > 0.0 && d < 1.0))
        return false;
    *ret = d;
    return true;
}

static bool validate_threshold(const char *v, char *why, size_t n)
{
    double d;
    if (parse_threshold(v, &d))
        return true;
    snprintf(why, n, "\"%s\" is not a number between 0 and 1", v);
    return false;
}

static bool validate_body_part_terms(const char *v, char *why, size_t n)
{
    if (strcmp(v, "*") == 0)
        return true;
    const char *p = v;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || len > 16) {
            snprintf(why, n, "a term of %zu characters in \"%s\" (each must have 1 to 16)", len,
                     v);
            return false;
        }
        for (size_t i = 0; i < len; i++) {
            char c = p[i];
            if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ' || c == '_')) {
                snprintf(why, n, "\"%.*s\" is not a DICOM defined term (upper-case letters, "
                                 "digits, space, underscore)",
                         (int)len, p);
                return false;
            }
        }
        if (!end)
            return true;
        p = end + 1;
    }
}

/* ---- value parsing ------------------------------------------------------------------------- */

/* Parse "123", "64KiB", "2GiB", "10G"; false with why on error. */
static bool parse_int(const char *s, bool allow_suffix, int64_t *ret, char *why, size_t n)
{
    const char *p = s;
    while (*p == ' ')
        p++;
    if (!isdigit((unsigned char)*p) && !(*p == '-' && isdigit((unsigned char)p[1]))) {
        snprintf(why, n, "\"%s\" is not an integer", s);
        return false;
    }
    errno = 0;
    char *end;
    long long v = strtoll(p, &end, 10);
    if (errno == ERANGE) {
        snprintf(why, n, "\"%s\" is out of range", s);
        return false;
    }
    while (*end == ' ')
        end++;
    int64_t mult = 1;
    if (*end) {
        static const struct {
            const char *suffix;
            int64_t mult;
        } suffixes[] = {
            {"KiB", KIB}, {"MiB", MIB}, {"GiB", GIB}, {"TiB", TIB},
            {"k", KIB},   {"K", KIB},   {"M", MIB},   {"G", GIB},   {"T", TIB},
        };
        bool found = false;
        if (allow_suffix)
            for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++)
                if (strcmp(end, suffixes[i].suffix) == 0) {
                    mult = suffixes[i].mult;
                    found = true;
                    break;
                }
        if (!found) {
            snprintf(why, n, "\"%s\" is not %s", s,
                     allow_suffix ? "a size (a number with an optional KiB, MiB, GiB or TiB)"
                                  : "an integer");
            return false;
        }
    }
    int64_t r;
    if (__builtin_mul_overflow((int64_t)v, mult, &r)) {
        snprintf(why, n, "\"%s\" is out of range", s);
        return false;
    }
    *ret = r;
    return true;
}

/* ---- loader -------------------------------------------------------------------------------- */

typedef struct loader {
    const char *name;
    yaml_document_t *doc;
    xregd_config *cfg;
    bool seen[N_KEYS];
    xr_error *err;
} loader;

static xr_code node_error(loader *ld, const yaml_node_t *node, const char *path, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));

static xr_code node_error(loader *ld, const yaml_node_t *node, const char *path, const char *fmt,
                          ...)
{
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return xr_error_set(ld->err, XR_E_CONFIG, "%s:%zu:%zu: %s%s%s", ld->name,
                        (size_t)node->start_mark.line + 1, (size_t)node->start_mark.column + 1,
                        path ? path : "", path ? ": " : "", what);
}

static const config_key *schema_find(const char *path, size_t *ret_index)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(config_schema[i].path, path) == 0) {
            *ret_index = i;
            return &config_schema[i];
        }
    return NULL;
}

/* True if some schema key starts with "prefix." (i.e. prefix is a section). */
static bool schema_is_section(const char *prefix)
{
    size_t len = strlen(prefix);
    for (size_t i = 0; i < N_KEYS; i++)
        if (strncmp(config_schema[i].path, prefix, len) == 0 && config_schema[i].path[len] == '.')
            return true;
    return false;
}

static char **field_str(xregd_config *cfg, const config_key *k)
{
    return (char **)((char *)cfg + k->offset);
}

static int64_t *field_int(xregd_config *cfg, const config_key *k)
{
    return (int64_t *)((char *)cfg + k->offset);
}

/* Store a scalar value into the field for key k, validating it. */
static xr_code set_value(xregd_config *cfg, const config_key *k, const char *value, char *why,
                         size_t why_bytes)
{
    switch (k->type) {
    case CONFIG_STRING: {
        if (k->validate && !k->validate(value, why, why_bytes))
            return XR_E_CONFIG;
        char *dup = strdup(value);
        if (!dup) {
            snprintf(why, why_bytes, "out of memory");
            return XR_E_NOMEM;
        }
        char **f = field_str(cfg, k);
        free(*f);
        *f = dup;
        return XR_OK;
    }
    case CONFIG_INT:
    case CONFIG_BYTES: {
        int64_t v;
        if (!parse_int(value, k->type == CONFIG_BYTES, &v, why, why_bytes))
            return XR_E_CONFIG;
        if (v < k->min || v > k->max) {
            snprintf(why, why_bytes, "%" PRId64 " is out of range (expected %" PRId64 " to %" PRId64 ")",
                     v, k->min, k->max);
            return XR_E_CONFIG;
        }
        *field_int(cfg, k) = v;
        return XR_OK;
    }
    case CONFIG_TYPE_MAX:
        break;
    }
    snprintf(why, why_bytes, "internal error: bad key type");
    return XR_E_INTERNAL;
}

static const char *type_expected(const config_key *k)
{
    switch (k->type) {
    case CONFIG_STRING:
        return k->expected ? k->expected : "a string";
    case CONFIG_INT:
        return "an integer";
    case CONFIG_BYTES:
        return "a size in bytes (optionally with KiB, MiB, GiB or TiB)";
    case CONFIG_TYPE_MAX:
        break;
    }
    return "a value";
}

static xr_code load_mapping(loader *ld, yaml_node_t *map, const char *prefix);

static xr_code load_pair(loader *ld, yaml_node_t *knode, yaml_node_t *vnode, const char *prefix)
{
    if (knode->type != YAML_SCALAR_NODE)
        return node_error(ld, knode, prefix[0] ? prefix : NULL,
                          "keys must be plain strings, not mappings or lists");
    char path[256];
    int pn = snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "",
                      (const char *)knode->data.scalar.value);
    if (pn < 0 || (size_t)pn >= sizeof(path))
        return node_error(ld, knode, NULL, "key path too long");

    size_t idx;
    const config_key *k = schema_find(path, &idx);
    if (!k) {
        if (schema_is_section(path)) {
            if (vnode->type != YAML_MAPPING_NODE)
                return node_error(ld, vnode, path, "expected a mapping of keys");
            return load_mapping(ld, vnode, path);
        }
        return node_error(ld, knode, path, "unrecognized configuration key");
    }
    if (ld->seen[idx])
        return node_error(ld, knode, path, "duplicate key");
    ld->seen[idx] = true;
    if (vnode->type != YAML_SCALAR_NODE)
        return node_error(ld, vnode, path, "expected %s, got a %s", type_expected(k),
                          vnode->type == YAML_MAPPING_NODE ? "mapping" : "list");
    /* A quoted "123" is a string to YAML; numbers must be plain. */
    if (k->type == CONFIG_INT && vnode->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return node_error(ld, vnode, path, "expected %s, got a quoted string", type_expected(k));
    /* A plain ~ or null as a string value is almost always a mistake. */
    const char *value = (const char *)vnode->data.scalar.value;
    if (k->type == CONFIG_STRING && vnode->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        (strcmp(value, "~") == 0 || strcmp(value, "null") == 0 || strcmp(value, "") == 0))
        value = "";
    char why[300];
    why[0] = '\0';
    xr_code rc = set_value(ld->cfg, k, value, why, sizeof(why));
    if (rc == XR_E_CONFIG)
        return node_error(ld, vnode, path, "%s (expected %s)", why, type_expected(k));
    if (rc)
        return node_error(ld, vnode, path, "%s", why);
    return XR_OK;
}

static xr_code load_mapping(loader *ld, yaml_node_t *map, const char *prefix)
{
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *knode = yaml_document_get_node(ld->doc, pair->key);
        yaml_node_t *vnode = yaml_document_get_node(ld->doc, pair->value);
        if (!knode || !vnode)
            return xr_error_set(ld->err, XR_E_INTERNAL, "%s: malformed YAML document", ld->name);
        xr_code rc = load_pair(ld, knode, vnode, prefix);
        if (rc)
            return rc;
    }
    return XR_OK;
}

xregd_config *config_new_default(void)
{
    xregd_config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        char why[200];
        if (set_value(cfg, &config_schema[i], config_schema[i].def, why, sizeof(why)))
            return config_free(cfg); /* only OOM can fail here: defaults are valid */
    }
    cfg->models.implant.threshold_value = NAN;
    cfg->models.fracture.threshold_value = NAN;
    return cfg;
}

xregd_config *config_free(xregd_config *cfg)
{
    if (!cfg)
        return NULL;
    for (size_t i = 0; i < N_KEYS; i++)
        if (config_schema[i].type == CONFIG_STRING)
            free(*field_str(cfg, &config_schema[i]));
    free(cfg->path);
    free(cfg);
    return NULL;
}

/* Make *path absolute against the folder of the configuration file called name. */
static xr_code resolve_model_path(const char *name, char **path, xr_error *err)
{
    char *p = *path, *abs = NULL;
    if (p[0] == '\0' || p[0] == '/')
        return XR_OK;
    const char *slash = strrchr(name, '/');
    char cwd[XR_PATH_MAX + 1];
    bool need_cwd = !slash || name[0] != '/';
    if (need_cwd && !getcwd(cwd, sizeof(cwd)))
        return xr_error_errno(err, errno, "%s: cannot resolve model path \"%s\"", name, p);
    int rc;
    if (!slash)
        rc = asprintf(&abs, "%s/%s", cwd, p);
    else if (name[0] == '/')
        rc = asprintf(&abs, "%.*s/%s", (int)(slash - name), name, p);
    else
        rc = asprintf(&abs, "%s/%.*s/%s", cwd, (int)(slash - name), name, p);
    if (rc < 0)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    free(p);
    *path = abs;
    return XR_OK;
}

/* Cross-key checks and derived values, after every key is read. */
static xr_code config_finish(xregd_config *cfg, const char *name, xr_error *err)
{
    if (cfg->database.retry_max_ms < cfg->database.retry_initial_ms)
        return xr_error_set(err, XR_E_CONFIG,
                            "%s: database.retry_max_ms (%" PRId64
                            ") must not be less than database.retry_initial_ms (%" PRId64 ")",
                            name, cfg->database.retry_max_ms, cfg->database.retry_initial_ms);
    const char *hmac_key = strcmp(cfg->pseudonymize.patient_id, "hmac") == 0 ? "patient_id"
                           : strcmp(cfg->pseudonymize.patient_name, "hmac") == 0 ? "patient_name"
                           : strcmp(cfg->pseudonymize.accession_number, "hmac") == 0
                               ? "accession_number"
                               : NULL;
    if (hmac_key && cfg->pseudonymize.key_file[0] == '\0')
        return xr_error_set(err, XR_E_CONFIG,
                            "%s: pseudonymize.%s is hmac but pseudonymize.key_file is not set "
                            "(expected the path of a secret key file)",
                            name, hmac_key);
    (void)parse_threshold(cfg->models.implant.threshold, &cfg->models.implant.threshold_value);
    (void)parse_threshold(cfg->models.fracture.threshold, &cfg->models.fracture.threshold_value);
    /* Relative model paths are relative to the file's folder, so that a configuration can sit
     * next to its models wherever it is installed. */
    char **model_paths[] = {&cfg->models.body_part.path, &cfg->models.implant.path,
                            &cfg->models.fracture.path};
    for (size_t i = 0; i < sizeof(model_paths) / sizeof(model_paths[0]); i++) {
        xr_code rc = resolve_model_path(name, model_paths[i], err);
        if (rc)
            return rc;
    }
    if (cfg->spool.dir[0] == '\0') {
        char *dir;
        if (asprintf(&dir, "%s/spool", cfg->state_dir) < 0)
            return xr_error_set(err, XR_E_NOMEM, "out of memory");
        free(cfg->spool.dir);
        cfg->spool.dir = dir;
    }
    return XR_OK;
}

xr_code config_load_buffer(const char *data, size_t n, const char *name, xregd_config **ret_cfg,
                           xr_error *err)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    bool have_doc = false;
    xr_code rc = XR_OK;
    xregd_config *cfg = config_new_default();
    if (!cfg)
        return xr_error_set(err, XR_E_NOMEM, "out of memory loading configuration");
    if (!yaml_parser_initialize(&parser)) {
        config_free(cfg);
        return xr_error_set(err, XR_E_NOMEM, "out of memory initializing the YAML parser");
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, n);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = xr_error_set(err, XR_E_CONFIG, "%s:%zu:%zu: invalid YAML: %s%s%s", name,
                          (size_t)parser.problem_mark.line + 1,
                          (size_t)parser.problem_mark.column + 1,
                          parser.problem ? parser.problem : "syntax error",
                          parser.context ? " " : "", parser.context ? parser.context : "");
        goto out;
    }
    have_doc = true;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root) { /* an empty file means all defaults */
        if (root->type != YAML_MAPPING_NODE) {
            loader ld0 = {.name = name, .doc = &doc, .cfg = cfg, .err = err};
            rc = node_error(&ld0, root, NULL, "the top level must be a mapping of keys");
            goto out;
        }
        /* A second document in the same file would be silently ignored: refuse it. */
        yaml_document_t extra;
        if (yaml_parser_load(&parser, &extra)) {
            yaml_node_t *extra_root = yaml_document_get_root_node(&extra);
            if (extra_root) {
                loader ld0 = {.name = name, .doc = &extra, .cfg = cfg, .err = err};
                rc = node_error(&ld0, extra_root, NULL,
                                "a second YAML document is not allowed in the configuration");
                yaml_document_delete(&extra);
                goto out;
            }
            yaml_document_delete(&extra);
        } else {
            rc = xr_error_set(err, XR_E_CONFIG, "%s:%zu:%zu: invalid YAML: %s", name,
                              (size_t)parser.problem_mark.line + 1,
                              (size_t)parser.problem_mark.column + 1,
                              parser.problem ? parser.problem : "syntax error");
            goto out;
        }
        loader ld = {.name = name, .doc = &doc, .cfg = cfg, .err = err};
        rc = load_mapping(&ld, root, "");
        if (rc)
            goto out;
    }
    rc = config_finish(cfg, name, err);
    if (rc)
        goto out;
    cfg->path = strdup(name);
    if (!cfg->path) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto out;
    }
    *ret_cfg = cfg;
    cfg = NULL;
out:
    if (have_doc)
        yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    config_free(cfg);
    return rc;
}

xr_code config_load(const char *path, xregd_config **ret_cfg, xr_error *err)
{
    char *data;
    size_t n;
    xr_code rc = xr_fs_read_all(path, XR_CONFIG_FILE_MAX_BYTES, &data, &n, err);
    if (rc) {
        xr_error_prefix(err, "reading configuration: ");
        return rc == XR_E_LIMIT || rc == XR_E_INPUT ? XR_E_CONFIG : rc;
    }
    rc = config_load_buffer(data, n, path, ret_cfg, err);
    free(data);
    return rc;
}

size_t config_diff_non_reloadable(const xregd_config *old_cfg, const xregd_config *new_cfg,
                                  void (*fn)(void *userdata, const char *path), void *userdata)
{
    size_t n = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key *k = &config_schema[i];
        if (k->reloadable)
            continue;
        bool same;
        if (k->type == CONFIG_STRING)
            same = strcmp(*field_str((xregd_config *)old_cfg, k),
                          *field_str((xregd_config *)new_cfg, k)) == 0;
        else
            same = *field_int((xregd_config *)old_cfg, k) == *field_int((xregd_config *)new_cfg, k);
        if (!same) {
            n++;
            if (fn)
                fn(userdata, k->path);
        }
    }
    return n;
}
