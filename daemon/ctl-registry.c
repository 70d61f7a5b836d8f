/*
 * xregctl subcommands for the registry's people: browse studies, record a reviewer's label,
 * export a training dataset in the thesis's folder layout, verify the audit hash chain.
 *
 * They connect like the daemon (database.conninfo from the configuration, or the embedded
 * cluster), or to --db CONNINFO, which is how an admin uses a role of their own (a reviewer
 * for label, a reader for studies and export-dataset, an owner or auditor for audit verify).
 * Changes are tagged with the actor "cli:<OS user>".
 */
#include "xr-json.h"
#include "ctl-registry.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "dicom.h"
#include "pgembed.h"
#include "registry.h"
#include "xr-fs.h"

typedef struct ctl {
    const char *config_path;
    bool quiet;
    const char *db; /* --db, or NULL for the configuration's database */
    pgembed *pg;
    char *conninfo;
    registry *reg;
    char actor[128];
} ctl;

static void print_err(const char *what, const xr_error *err)
{
    fprintf(stderr, "%s: %s\n", what, err->msg);
    if (err->detail[0])
        fprintf(stderr, "%s\n", err->detail);
}

static int ctl_connect(ctl *c, const char *app)
{
    xr_error err = XR_ERROR_INIT;
    struct passwd pw, *pwp = NULL;
    char buf[1024];
    if (getpwuid_r(geteuid(), &pw, buf, sizeof(buf), &pwp) == 0 && pwp)
        snprintf(c->actor, sizeof(c->actor), "cli:%s", pw.pw_name);
    else
        snprintf(c->actor, sizeof(c->actor), "cli:uid%u", (unsigned)geteuid());

    if (c->db) {
        c->conninfo = strdup(c->db);
    } else {
        xregd_config *cfg;
        if (config_load(c->config_path, &cfg, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        if (cfg->database.conninfo[0] == '\0') {
            char dir[4096];
            snprintf(dir, sizeof(dir), "%s/postgresql", cfg->state_dir);
            if (pgembed_start(dir, cfg->database.embedded_user, &c->pg, &c->conninfo, &err)) {
                print_err("embedded PostgreSQL", &err);
                config_free(cfg);
                return 1;
            }
        } else {
            c->conninfo = strdup(cfg->database.conninfo);
        }
        config_free(cfg);
    }
    if (!c->conninfo) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    if (registry_open(c->conninfo, app, &c->reg, &err)) {
        print_err("database", &err);
        return 1;
    }
    return 0;
}

static void ctl_done(ctl *c)
{
    c->reg = registry_close(c->reg);
    c->pg = pgembed_stop(c->pg);
    free(c->conninfo);
    c->conninfo = NULL;
}

/* ----------------------------------------------------------------------------------------------
 * Output: table, CSV (RFC 4180) or JSON (an array of objects)
 */

typedef enum out_format { OUT_TABLE, OUT_CSV, OUT_JSON, OUT_MAX } out_format;

static bool out_format_from_string(const char *s, out_format *ret)
{
    static const char *const names[OUT_MAX] = {"table", "csv", "json"};
    for (int i = 0; i < OUT_MAX; i++)
        if (strcmp(s, names[i]) == 0) {
            *ret = (out_format)i;
            return true;
        }
    return false;
}

static void csv_field(FILE *f, const char *v)
{
    if (!v)
        return;
    bool quote = strpbrk(v, ",\"\r\n") != NULL || (v[0] == ' ') ||
                 (v[0] && v[strlen(v) - 1] == ' ');
    if (!quote) {
        fputs(v, f);
        return;
    }
    fputc('"', f);
    for (const char *p = v; *p; p++) {
        if (*p == '"')
            fputc('"', f);
        fputc(*p, f);
    }
    fputc('"', f);
}

static void json_value(FILE *f, registry_kind kind, const char *v)
{
    if (!v) {
        fputs("null", f);
        return;
    }
    switch (kind) {
    case REGISTRY_KIND_NUMBER:
        /* JSON has no NaN or Infinity */
        if (strcmp(v, "NaN") == 0 || strstr(v, "Infinity"))
            fputs("null", f);
        else
            fputs(v, f);
        return;
    case REGISTRY_KIND_BOOL:
        fputs(strcmp(v, "t") == 0 ? "true" : "false", f);
        return;
    case REGISTRY_KIND_JSON:
        fputs(v, f);
        return;
    case REGISTRY_KIND_TEXT:
    case REGISTRY_KIND_MAX:
        break;
    }
    xr_json_write_str(f, v);
}

static const char *table_text(registry_kind kind, const char *v)
{
    if (!v)
        return "";
    if (kind == REGISTRY_KIND_BOOL)
        return strcmp(v, "t") == 0 ? "yes" : "no";
    return v;
}

static void print_rows(FILE *f, const registry_rows *rows, out_format fmt)
{
    size_t n_rows = registry_rows_count(rows), n_cols = registry_rows_columns(rows);
    if (fmt == OUT_CSV) {
        for (size_t c = 0; c < n_cols; c++) {
            if (c)
                fputc(',', f);
            csv_field(f, registry_rows_name(rows, c));
        }
        fputs("\r\n", f);
        for (size_t r = 0; r < n_rows; r++) {
            for (size_t c = 0; c < n_cols; c++) {
                if (c)
                    fputc(',', f);
                csv_field(f, registry_rows_value(rows, r, c));
            }
            fputs("\r\n", f);
        }
        return;
    }
    if (fmt == OUT_JSON) {
        fputs("[", f);
        for (size_t r = 0; r < n_rows; r++) {
            fputs(r ? ",\n {" : "\n {", f);
            for (size_t c = 0; c < n_cols; c++) {
                if (c)
                    fputs(", ", f);
                xr_json_write_str(f, registry_rows_name(rows, c));
                fputs(": ", f);
                json_value(f, registry_rows_kind(rows, c), registry_rows_value(rows, r, c));
            }
            fputs("}", f);
        }
        fputs(n_rows ? "\n]\n" : "]\n", f);
        return;
    }
    size_t *width = calloc(n_cols ? n_cols : 1, sizeof(*width));
    if (!width)
        return;
    for (size_t c = 0; c < n_cols; c++) {
        width[c] = strlen(registry_rows_name(rows, c));
        for (size_t r = 0; r < n_rows; r++) {
            registry_kind k = registry_rows_kind(rows, c);
            size_t w = strlen(table_text(k, registry_rows_value(rows, r, c)));
            if (w > width[c])
                width[c] = w;
        }
    }
    for (size_t c = 0; c < n_cols; c++)
        fprintf(f, "%s%-*s", c ? "  " : "", (int)width[c], registry_rows_name(rows, c));
    fputc('\n', f);
    for (size_t c = 0; c < n_cols; c++) {
        fputs(c ? "  " : "", f);
        for (size_t i = 0; i < width[c]; i++)
            fputc('-', f);
    }
    fputc('\n', f);
    for (size_t r = 0; r < n_rows; r++) {
        for (size_t c = 0; c < n_cols; c++) {
            registry_kind k = registry_rows_kind(rows, c);
            const char *v = table_text(k, registry_rows_value(rows, r, c));
            /* numbers right-aligned, the last column not padded */
            if (k == REGISTRY_KIND_NUMBER)
                fprintf(f, "%s%*s", c ? "  " : "", (int)width[c], v);
            else if (c + 1 == n_cols)
                fprintf(f, "%s%s", c ? "  " : "", v);
            else
                fprintf(f, "%s%-*s", c ? "  " : "", (int)width[c], v);
        }
        fputc('\n', f);
    }
    fprintf(f, "(%zu %s)\n", n_rows, n_rows == 1 ? "row" : "rows");
    free(width);
}

/* ----------------------------------------------------------------------------------------------
 * Option parsing shared by the subcommands
 */

enum {
    OPT_DB = 1000,
    OPT_FROM,
    OPT_TO,
    OPT_BODY_PART,
    OPT_PATIENT,
    OPT_MODALITY,
    OPT_FLAG,
    OPT_LIMIT,
    OPT_FORMAT,
    OPT_INSTANCE,
    OPT_STUDY,
    OPT_TASK,
    OPT_VALUE,
    OPT_REASON,
    OPT_OUT,
    OPT_SOURCE,
    OPT_LABELS,
    OPT_MIN_CONFIDENCE,
    OPT_RATIOS,
    OPT_SEED,
    OPT_LINK,
    OPT_ALLOW_MISSING,
    OPT_ANCHOR,
};

static bool common_opt(ctl *c, int opt, int *ret_exit)
{
    switch (opt) {
    case 'c':
        c->config_path = optarg;
        return true;
    case 'q':
        c->quiet = true;
        return true;
    case OPT_DB:
        c->db = optarg;
        return true;
    case '?':
        *ret_exit = 2;
        return true;
    default:
        return false;
    }
}

#define COMMON_LONG_OPTS                                                                          \
    {"config", required_argument, NULL, 'c'}, {"quiet", no_argument, NULL, 'q'},                \
        {"db", required_argument, NULL, OPT_DB}, {"help", no_argument, NULL, 'h'}

static bool parse_date(const char *s)
{
    int y, m, d;
    char extra;
    return sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &extra) == 3 && m >= 1 && m <= 12 && d >= 1 &&
           d <= 31;
}

/* ----------------------------------------------------------------------------------------------
 * studies
 */

static const char studies_help[] =
    "Usage: xregctl studies [OPTIONS]\n"
    "List studies (xreg.studies), newest first.\n\n"
    "  --from DATE, --to DATE   study date range (YYYY-MM-DD, inclusive)\n"
    "  --body-part X            a DICOM term (KNEE) or model label (knee), predicted, verified\n"
    "                           or in the header\n"
    "  --patient ID             one Patient ID\n"
    "  --modality M             e.g. CR, DX\n"
    "  --flag F                 instrument, fracture, mismatch (header disagrees), review (in\n"
    "                           the review queue), unpredicted; repeatable, all must hold\n"
    "  --limit N                at most N studies (default 1000, 0: all)\n"
    "  --format table|csv|json  output (default table)\n"
    "  --db CONNINFO            connect with this libpq string instead of the configuration's\n";

static int cmd_studies(ctl *c, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_LONG_OPTS,
        {"from", required_argument, NULL, OPT_FROM},
        {"to", required_argument, NULL, OPT_TO},
        {"body-part", required_argument, NULL, OPT_BODY_PART},
        {"patient", required_argument, NULL, OPT_PATIENT},
        {"modality", required_argument, NULL, OPT_MODALITY},
        {"flag", required_argument, NULL, OPT_FLAG},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"format", required_argument, NULL, OPT_FORMAT},
        {0},
    };
    const char *from = NULL, *to = NULL, *body_part = NULL, *patient = NULL, *modality = NULL;
    char limit[24] = "1000";
    out_format fmt = OUT_TABLE;
    bool flag_instrument = false, flag_fracture = false, flag_mismatch = false,
         flag_review = false, flag_unpredicted = false;
    int opt, ex = -1;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "c:qh", opts, NULL)) != -1) {
        if (common_opt(c, opt, &ex)) {
            if (ex >= 0)
                return ex;
            continue;
        }
        switch (opt) {
        case 'h':
            fputs(studies_help, stdout);
            return 0;
        case OPT_FROM:
        case OPT_TO:
            if (!parse_date(optarg)) {
                fprintf(stderr, "studies: --%s \"%s\" is not a date (expected YYYY-MM-DD)\n",
                        opt == OPT_FROM ? "from" : "to", optarg);
                return 2;
            }
            *(opt == OPT_FROM ? &from : &to) = optarg;
            break;
        case OPT_BODY_PART:
            body_part = optarg;
            break;
        case OPT_PATIENT:
            patient = optarg;
            break;
        case OPT_MODALITY:
            modality = optarg;
            break;
        case OPT_FLAG:
            if (strcmp(optarg, "instrument") == 0)
                flag_instrument = true;
            else if (strcmp(optarg, "fracture") == 0)
                flag_fracture = true;
            else if (strcmp(optarg, "mismatch") == 0)
                flag_mismatch = true;
            else if (strcmp(optarg, "review") == 0)
                flag_review = true;
            else if (strcmp(optarg, "unpredicted") == 0)
                flag_unpredicted = true;
            else {
                fprintf(stderr,
                        "studies: unrecognized --flag \"%s\" (expected instrument, fracture, "
                        "mismatch, review or unpredicted)\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_LIMIT: {
            char *end;
            errno = 0;
            long long v = strtoll(optarg, &end, 10);
            if (errno || *end || v < 0) {
                fprintf(stderr, "studies: --limit \"%s\" is not a number >= 0\n", optarg);
                return 2;
            }
            snprintf(limit, sizeof(limit), "%lld", v);
            break;
        }
        case OPT_FORMAT:
            if (!out_format_from_string(optarg, &fmt)) {
                fprintf(stderr, "studies: unrecognized --format \"%s\" (expected table, csv or "
                                "json)\n", optarg);
                return 2;
            }
            break;
        default:
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "studies: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    int rc = ctl_connect(c, "xregctl studies");
    if (rc) {
        ctl_done(c);
        return rc;
    }
    char flags[512];
    snprintf(flags, sizeof(flags), "%s%s%s%s%s",
             flag_instrument ? " AND s.any_instrument" : "",
             flag_fracture ? " AND s.any_fracture" : "",
             flag_mismatch ? " AND EXISTS (SELECT FROM xreg.body_part_mismatch m"
                             " WHERE m.study_instance_uid = s.study_instance_uid)"
                           : "",
             flag_review ? " AND EXISTS (SELECT FROM xreg.review_queue q"
                           " WHERE q.study_instance_uid = s.study_instance_uid)"
                         : "",
             flag_unpredicted ? " AND s.n_instances_predicted = 0" : "");
    char sql[4096];
    snprintf(sql, sizeof(sql),
             "SELECT s.study_instance_uid, s.patient_id, s.study_date, s.accession_number,"
             " s.modalities, s.body_parts AS header_body_parts, s.predicted_body_parts,"
             " s.any_instrument, round(s.instrument_confidence::numeric, 3) AS"
             " instrument_confidence, s.any_fracture,"
             " round(s.fracture_confidence::numeric, 3) AS fracture_confidence,"
             " s.n_instances, s.n_instances_predicted"
             " FROM xreg.studies s"
             " WHERE ($1::date IS NULL OR s.study_date >= $1::date)"
             " AND ($2::date IS NULL OR s.study_date <= $2::date)"
             " AND ($3::text IS NULL OR upper($3) = ANY (string_to_array(upper(s.body_parts), ','))"
             "  OR EXISTS (SELECT FROM jsonb_array_elements(s.body_part_findings) e"
             "   WHERE upper(e->>'body_part') = upper($3) OR lower(e->>'label') = lower($3)))"
             " AND ($4::text IS NULL OR s.patient_id = $4)"
             " AND ($5::text IS NULL OR upper($5) = ANY (string_to_array(s.modalities, ',')))"
             "%s"
             " ORDER BY s.study_date DESC NULLS LAST, s.study_instance_uid"
             " LIMIT NULLIF($6::bigint, 0)",
             flags);
    const char *params[] = {from, to, body_part, patient, modality, limit};
    registry_rows *rows = NULL;
    xr_error err = XR_ERROR_INIT;
    if (registry_select(c->reg, sql, 6, params, &rows, &err)) {
        print_err("studies", &err);
        ctl_done(c);
        return 1;
    }
    print_rows(stdout, rows, fmt);
    registry_rows_free(rows);
    ctl_done(c);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* ----------------------------------------------------------------------------------------------
 * label
 */

static const char label_help[] =
    "Usage: xregctl label (--instance UID | --study UID) --task TASK --value VALUE --reason TEXT\n"
    "Record a reviewer's verified label (needs the xreg_reviewer role; see --db).\n\n"
    "  --instance UID   the SOP Instance UID to label, or\n"
    "  --study UID      the Study Instance UID (a label for the whole study)\n"
    "  --task TASK      body_part, implant or fracture\n"
    "  --value VALUE    body part: a label (knee) or DICOM term (KNEE); implant/fracture:\n"
    "                   present or absent (yes/no)\n"
    "  --reason TEXT    why (kept with the label)\n"
    "  --db CONNINFO    connect as a reviewer, e.g. \"host=db dbname=xreg user=alice\"\n";

static int cmd_label(ctl *c, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_LONG_OPTS,
        {"instance", required_argument, NULL, OPT_INSTANCE},
        {"study", required_argument, NULL, OPT_STUDY},
        {"task", required_argument, NULL, OPT_TASK},
        {"value", required_argument, NULL, OPT_VALUE},
        {"reason", required_argument, NULL, OPT_REASON},
        {0},
    };
    registry_label l = {0};
    int opt, ex = -1;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "c:qh", opts, NULL)) != -1) {
        if (common_opt(c, opt, &ex)) {
            if (ex >= 0)
                return ex;
            continue;
        }
        switch (opt) {
        case 'h':
            fputs(label_help, stdout);
            return 0;
        case OPT_INSTANCE:
            l.sop_instance_uid = optarg;
            break;
        case OPT_STUDY:
            l.study_instance_uid = optarg;
            break;
        case OPT_TASK:
            l.task = optarg;
            break;
        case OPT_VALUE:
            l.value = optarg;
            break;
        case OPT_REASON:
            l.reason = optarg;
            break;
        default:
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "label: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if (!l.sop_instance_uid == !l.study_instance_uid) {
        fprintf(stderr, "label: give either --instance or --study\n");
        return 2;
    }
    if (!l.task || !l.value || !l.reason) {
        fprintf(stderr, "label: --task, --value and --reason are required\n");
        return 2;
    }
    int rc = ctl_connect(c, "xregctl label");
    if (rc) {
        ctl_done(c);
        return rc;
    }
    registry_label_result res;
    xr_error err = XR_ERROR_INIT;
    if (registry_label_record(c->reg, &l, c->actor, &res, &err)) {
        print_err("label", &err);
        if (strcmp(err.sqlstate, "42501") == 0)
            fprintf(stderr, "the database role needs xreg_reviewer: connect with --db as a "
                            "reviewer (see docs/registry.md)\n");
        ctl_done(c);
        return 1;
    }
    if (!c->quiet) {
        printf("label %" PRId64 " recorded: %s %s, %s = %s", res.label_id,
               l.sop_instance_uid ? "instance" : "study",
               l.sop_instance_uid ? l.sop_instance_uid : l.study_instance_uid, l.task, res.value);
        if (res.replaced_value[0])
            printf(" (was %s, from the %s)\n", res.replaced_value,
                   strcmp(res.replaced_source, "human") == 0 ? "previous label" : "prediction");
        else
            printf(" (nothing to replace)\n");
    }
    ctl_done(c);
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * audit verify
 */

static const char audit_help[] =
    "Usage: xregctl audit verify [--anchor FILE]\n"
    "Recompute the audit log's hash chain and name the first broken link.\n"
    "Needs SELECT on xreg.audit_log and xreg.audit_chain_head (the schema owner, or an auditor\n"
    "role granted it).\n\n"
    "  --anchor FILE   compare with the chain head recorded in FILE by an earlier run and, when\n"
    "                  the chain is valid, record the new head there (keep a copy off the\n"
    "                  database host: it catches a rewritten chain)\n"
    "Exit status: 0 valid, 1 broken or error, 2 usage.\n";

#define ANCHOR_MAX_BYTES 4096

static int read_anchor(const char *path, registry_audit_anchor *a, bool *ret_found)
{
    *ret_found = false;
    char *data = NULL;
    size_t n = 0;
    xr_error err = XR_ERROR_INIT;
    xr_code rc = xr_fs_read_all(path, ANCHOR_MAX_BYTES, &data, &n, &err);
    if (rc == XR_E_IO && err.sys_errno == ENOENT)
        return 0;
    if (rc) {
        print_err("audit verify: anchor", &err);
        return 1;
    }
    bool have_seq = false, have_hash = false;
    for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#')
            continue;
        long long seq;
        char hash[80];
        if (sscanf(line, "seq %lld", &seq) == 1 && seq > 0) {
            a->seq = seq;
            have_seq = true;
        } else if (sscanf(line, "hash %79s", hash) == 1 && strlen(hash) == 64) {
            memcpy(a->hash, hash, 65);
            have_hash = true;
        }
    }
    free(data);
    if (!have_seq || !have_hash) {
        fprintf(stderr,
                "audit verify: anchor \"%s\" is not an anchor file (expected lines \"seq N\" and "
                "\"hash <64 hex digits>\")\n",
                path);
        return 1;
    }
    *ret_found = true;
    return 0;
}

static int cmd_audit(ctl *c, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_LONG_OPTS,
        {"anchor", required_argument, NULL, OPT_ANCHOR},
        {0},
    };
    const char *anchor_path = NULL;
    int opt, ex = -1;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "c:qh", opts, NULL)) != -1) {
        if (common_opt(c, opt, &ex)) {
            if (ex >= 0)
                return ex;
            continue;
        }
        switch (opt) {
        case 'h':
            fputs(audit_help, stdout);
            return 0;
        case OPT_ANCHOR:
            anchor_path = optarg;
            break;
        default:
            return 2;
        }
    }
    if (optind >= argc || strcmp(argv[optind], "verify") != 0 || optind + 1 != argc) {
        fputs(audit_help, stderr);
        return 2;
    }
    registry_audit_anchor anchor = {0};
    bool have_anchor = false;
    if (anchor_path && read_anchor(anchor_path, &anchor, &have_anchor))
        return 1;
    int rc = ctl_connect(c, "xregctl audit verify");
    if (rc) {
        ctl_done(c);
        return rc;
    }
    registry_audit_report rep;
    xr_error err = XR_ERROR_INIT;
    if (registry_audit_verify(c->reg, have_anchor ? &anchor : NULL, &rep, &err)) {
        print_err("audit verify", &err);
        ctl_done(c);
        return 1;
    }
    ctl_done(c);
    if (!rep.ok) {
        if (rep.broken_id)
            printf("audit chain BROKEN at seq %" PRId64 " (id %" PRId64 "): %s\n", rep.broken_seq,
                   rep.broken_id, rep.problem);
        else
            printf("audit chain BROKEN at seq %" PRId64 ": %s\n", rep.broken_seq, rep.problem);
        printf("%" PRId64 " rows verified before it\n", rep.n_rows);
        return 1;
    }
    if (!c->quiet)
        printf("audit chain valid: %" PRId64 " rows, head seq %" PRId64 " hash %s%s\n",
               rep.n_rows, rep.head_seq, rep.head_hash[0] ? rep.head_hash : "(empty)",
               have_anchor ? ", anchor matches" : "");
    if (anchor_path && rep.head_seq > 0) {
        char text[512];
        int n = snprintf(text, sizeof(text),
                         "# xreg audit anchor: the chain head \"xregctl audit verify\" saw valid;"
                         " keep a copy off the database host\nseq %" PRId64 "\nhash %s\n",
                         rep.head_seq, rep.head_hash);
        if (xr_fs_write_atomic(anchor_path, text, (size_t)n, &err)) {
            print_err("audit verify: writing the anchor", &err);
            return 1;
        }
    }
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * export-dataset
 */

static const char export_help[] =
    "Usage: xregctl export-dataset --out DIR --source DIR [OPTIONS]\n"
    "Write a training dataset in the thesis's layout: DIR/{train,validation,test}/<label>/\n"
    "<SOP Instance UID>.dcm and DIR/manifest.csv, split by patient (no patient in two splits).\n"
    "xregd does not keep received files after registering them, so the files come from\n"
    "--source: any folder tree of DICOM files (a PACS export, an archive), indexed by the SOP\n"
    "Instance UID in each file's header.\n\n"
    "  --out DIR              new or empty output folder\n"
    "  --source DIR           where the DICOM files are (searched recursively)\n"
    "  --task TASK            body_part (default), implant or fracture\n"
    "  --labels verified|predicted\n"
    "                         verified (default): reviewers' labels only; predicted: a\n"
    "                         reviewer's label where there is one, else the current prediction\n"
    "                         if its confidence is at least --min-confidence\n"
    "  --min-confidence P     default 0.9\n"
    "  --ratios T,V,E         train, validation, test fractions of the patients (default\n"
    "                         0.7,0.15,0.15; sum 1)\n"
    "  --seed N               split seed (default 1); the same seed and data give the same split\n"
    "  --link                 hard-link the files instead of copying them\n"
    "  --allow-missing        leave out instances whose file is not under --source (default:\n"
    "                         fail)\n"
    "  --db CONNINFO          connect with this libpq string (a reader is enough)\n";

typedef struct export_item {
    char *sop;
    char *study;
    char *patient;
    char *label;  /* folder name */
    char *source; /* verified / predicted */
    char *confidence;
    char group[17]; /* pseudonymous patient group: hex of the split hash */
    char order[65]; /* split hash of the patient */
    int split;      /* 0 train, 1 validation, 2 test */
    char *path;     /* the source file, NULL until found */
} export_item;

static const char *const split_names[3] = {"train", "validation", "test"};

static int compare_sop(const void *a, const void *b)
{
    return strcmp(((const export_item *)a)->sop, ((const export_item *)b)->sop);
}

/* Manifest order: split, label, SOP Instance UID. */
static int compare_manifest(const void *a, const void *b)
{
    const export_item *x = a, *y = b;
    if (x->split != y->split)
        return x->split - y->split;
    int c = strcmp(x->label, y->label);
    return c ? c : strcmp(x->sop, y->sop);
}

/* Patients by split hash, then key (a collision must not make the order depend on input). */
static int compare_patient_order(const void *a, const void *b)
{
    const export_item *x = *(export_item *const *)a, *y = *(export_item *const *)b;
    int c = strcmp(x->order, y->order);
    return c ? c : strcmp(x->patient, y->patient);
}

static void sha256_hex(const char *text, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(text, strlen(text), md, &n, EVP_sha256(), NULL);
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 0xf];
    }
    out[64] = '\0';
}

/* A label as a folder name: lower-case letters, digits, '-', '_' and '.' kept, others '_'. */
static char *folder_name(const char *label)
{
    char *s = strdup(label);
    if (!s)
        return NULL;
    for (char *p = s; *p; p++) {
        char ch = *p;
        if (ch >= 'A' && ch <= 'Z')
            *p = (char)(ch - 'A' + 'a');
        else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                   ch == '_' || (ch == '.' && p != s)))
            *p = '_';
    }
    return s;
}

typedef struct source_index {
    export_item *items; /* sorted by SOP */
    size_t n_items;
    size_t n_found, n_files, n_not_dicom;
} source_index;

static int compare_names(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Walk dir in name order; give every DICOM file whose SOP we want to its item (first wins). */
static int index_dir(source_index *ix, const char *dir, unsigned depth)
{
    if (depth > 64) {
        fprintf(stderr, "export-dataset: \"%s\": folders nested too deep, skipping\n", dir);
        return 0;
    }
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, compare_names);
    if (n < 0) {
        fprintf(stderr, "export-dataset: cannot read folder \"%s\": %s\n", dir, strerror(errno));
        return 1;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        if (rc || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
            continue;
        struct stat st;
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            rc = index_dir(ix, path, depth + 1);
            continue;
        }
        if (S_ISLNK(st.st_mode) && (stat(path, &st) != 0 || !S_ISREG(st.st_mode)))
            continue;
        if (!S_ISREG(st.st_mode))
            continue;
        ix->n_files++;
        dicom_header h;
        xr_error err = XR_ERROR_INIT;
        if (dicom_header_read(path, &h, &err)) {
            ix->n_not_dicom++;
            continue;
        }
        export_item key = {.sop = h.sop_instance_uid};
        export_item *it = bsearch(&key, ix->items, ix->n_items, sizeof(*ix->items), compare_sop);
        if (it && !it->path) {
            it->path = strdup(path);
            if (!it->path) {
                fprintf(stderr, "out of memory\n");
                rc = 1;
            }
            ix->n_found++;
        }
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* Copy src to dst (which must not exist), or hard-link it when link_files and possible. */
static int place_file(const char *src, const char *dst, bool link_files)
{
    if (link_files && link(src, dst) == 0)
        return 0;
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        fprintf(stderr, "export-dataset: cannot open \"%s\": %s\n", src, strerror(errno));
        return 1;
    }
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        fprintf(stderr, "export-dataset: cannot create \"%s\": %s\n", dst, strerror(errno));
        close(in);
        return 1;
    }
    char buf[65536];
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "export-dataset: reading \"%s\": %s\n", src, strerror(errno));
            rc = 1;
            break;
        }
        if (n == 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                fprintf(stderr, "export-dataset: writing \"%s\": %s\n", dst, strerror(errno));
                rc = 1;
                break;
            }
            off += w;
        }
        if (rc)
            break;
    }
    close(in);
    if (close(out) != 0 && !rc) {
        fprintf(stderr, "export-dataset: writing \"%s\": %s\n", dst, strerror(errno));
        rc = 1;
    }
    return rc;
}

static bool dir_is_new_or_empty(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT;
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            empty = false;
    closedir(d);
    return empty;
}

static void export_items_free(export_item *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(items[i].sop);
        free(items[i].study);
        free(items[i].patient);
        free(items[i].label);
        free(items[i].source);
        free(items[i].confidence);
        free(items[i].path);
    }
    free(items);
}

static int cmd_export(ctl *c, int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_LONG_OPTS,
        {"out", required_argument, NULL, OPT_OUT},
        {"source", required_argument, NULL, OPT_SOURCE},
        {"task", required_argument, NULL, OPT_TASK},
        {"labels", required_argument, NULL, OPT_LABELS},
        {"min-confidence", required_argument, NULL, OPT_MIN_CONFIDENCE},
        {"ratios", required_argument, NULL, OPT_RATIOS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"link", no_argument, NULL, OPT_LINK},
        {"allow-missing", no_argument, NULL, OPT_ALLOW_MISSING},
        {0},
    };
    const char *out = NULL, *source = NULL, *task = "body_part", *seed = "1";
    char seed_buf[24];
    const char *min_conf = "0.9";
    bool predicted = false, link_files = false, allow_missing = false;
    double ratios[3] = {0.7, 0.15, 0.15};
    int opt, ex = -1;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "c:qh", opts, NULL)) != -1) {
        if (common_opt(c, opt, &ex)) {
            if (ex >= 0)
                return ex;
            continue;
        }
        switch (opt) {
        case 'h':
            fputs(export_help, stdout);
            return 0;
        case OPT_OUT:
            out = optarg;
            break;
        case OPT_SOURCE:
            source = optarg;
            break;
        case OPT_TASK:
            if (strcmp(optarg, "body_part") && strcmp(optarg, "implant") &&
                strcmp(optarg, "fracture")) {
                fprintf(stderr, "export-dataset: unrecognized --task \"%s\" (expected body_part, "
                                "implant or fracture)\n", optarg);
                return 2;
            }
            task = optarg;
            break;
        case OPT_LABELS:
            if (strcmp(optarg, "verified") == 0)
                predicted = false;
            else if (strcmp(optarg, "predicted") == 0)
                predicted = true;
            else {
                fprintf(stderr, "export-dataset: unrecognized --labels \"%s\" (expected verified "
                                "or predicted)\n", optarg);
                return 2;
            }
            break;
        case OPT_MIN_CONFIDENCE: {
            char *end;
            double v = strtod(optarg, &end);
            if (*end || !(v >= 0 && v <= 1)) {
                fprintf(stderr, "export-dataset: --min-confidence \"%s\" is not a number in "
                                "[0, 1]\n", optarg);
                return 2;
            }
            min_conf = optarg;
            break;
        }
        case OPT_RATIOS: {
            char extra;
            if (sscanf(optarg, "%lf,%lf,%lf%c", &ratios[0], &ratios[1], &ratios[2], &extra) != 3 ||
                !(ratios[0] >= 0 && ratios[1] >= 0 && ratios[2] >= 0) ||
                fabs(ratios[0] + ratios[1] + ratios[2] - 1.0) > 1e-6) {
                fprintf(stderr, "export-dataset: --ratios \"%s\" must be three fractions >= 0 "
                                "that sum to 1, e.g. 0.7,0.15,0.15\n", optarg);
                return 2;
            }
            break;
        }
        case OPT_SEED: {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg || optarg[0] == '-') {
                fprintf(stderr, "export-dataset: --seed \"%s\" is not a non-negative integer\n",
                        optarg);
                return 2;
            }
            /* canonical digits: "007" and "7" are the same seed */
            snprintf(seed_buf, sizeof(seed_buf), "%llu", v);
            seed = seed_buf;
            break;
        }
        case OPT_LINK:
            link_files = true;
            break;
        case OPT_ALLOW_MISSING:
            allow_missing = true;
            break;
        default:
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "export-dataset: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if (!out || !source) {
        fprintf(stderr, "export-dataset: --out and --source are required\n");
        return 2;
    }
    if (!dir_is_new_or_empty(out)) {
        fprintf(stderr, "export-dataset: \"%s\" exists and is not empty; give a new or empty "
                        "folder\n", out);
        return 1;
    }
    struct stat st;
    if (stat(source, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "export-dataset: --source \"%s\" is not a folder\n", source);
        return 1;
    }

    int rc = ctl_connect(c, "xregctl export-dataset");
    if (rc) {
        ctl_done(c);
        return rc;
    }
    /* One row per instance: its verified label, else (with --labels predicted) its current
     * prediction when confident enough. Binary tasks are named present/absent. */
    static const char sql[] =
        "WITH l AS (SELECT sop_instance_uid, value FROM xreg.labels"
        "  WHERE is_current AND level = 'instance' AND task = $1),"
        " p AS (SELECT sop_instance_uid, study_instance_uid,"
        "  patient_id || '^^^' || issuer_of_patient_id AS patient_key,"
        "  CASE $1 WHEN 'body_part' THEN predicted_body_part_label"
        "   WHEN 'implant' THEN CASE predicted_instrument WHEN true THEN 'present'"
        "    WHEN false THEN 'absent' END"
        "   ELSE CASE predicted_fracture WHEN true THEN 'present' WHEN false THEN 'absent' END"
        "  END AS label,"
        "  CASE $1 WHEN 'body_part' THEN body_part_confidence"
        "   WHEN 'implant' THEN instrument_confidence ELSE fracture_confidence END AS confidence"
        "  FROM xreg.instances)"
        " SELECT p.sop_instance_uid, p.study_instance_uid, p.patient_key,"
        "  COALESCE(l.value, p.label),"
        "  CASE WHEN l.value IS NOT NULL THEN 'verified' ELSE 'predicted' END,"
        "  CASE WHEN l.value IS NOT NULL THEN '1' ELSE round(p.confidence::numeric, 4)::text END"
        " FROM p LEFT JOIN l USING (sop_instance_uid)"
        " WHERE l.value IS NOT NULL OR ($2::bool AND p.label IS NOT NULL"
        "  AND p.confidence >= $3::real)"
        " ORDER BY p.sop_instance_uid";
    const char *params[] = {task, predicted ? "true" : "false", min_conf};
    registry_rows *rows = NULL;
    xr_error err = XR_ERROR_INIT;
    if (registry_select(c->reg, sql, 3, params, &rows, &err)) {
        print_err("export-dataset", &err);
        ctl_done(c);
        return 1;
    }
    ctl_done(c);

    size_t n = registry_rows_count(rows);
    export_item *items = calloc(n ? n : 1, sizeof(*items));
    export_item **by_patient = calloc(n ? n : 1, sizeof(*by_patient));
    rc = 1;
    FILE *mf = NULL;
    if (!items || !by_patient)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        export_item *it = &items[i];
        it->sop = strdup(registry_rows_value(rows, i, 0));
        it->study = strdup(registry_rows_value(rows, i, 1));
        it->patient = strdup(registry_rows_value(rows, i, 2));
        it->label = folder_name(registry_rows_value(rows, i, 3));
        it->source = strdup(registry_rows_value(rows, i, 4));
        it->confidence = strdup(registry_rows_value(rows, i, 5));
        if (!it->sop || !it->study || !it->patient || !it->label || !it->source ||
            !it->confidence)
            goto oom;
        char *keyed;
        if (asprintf(&keyed, "xreg-split-v1\n%s\n%s", seed, it->patient) < 0)
            goto oom;
        sha256_hex(keyed, it->order);
        free(keyed);
        memcpy(it->group, it->order, 16);
        by_patient[i] = it;
    }
    rows = registry_rows_free(rows);
    if (n == 0) {
        fprintf(stderr, "export-dataset: no %s instances have a %s label%s\n", task,
                predicted ? "verified or confident predicted" : "verified",
                predicted ? "" : " (use --labels predicted to include predictions)");
        goto done;
    }

    /* Split by patient: patients in the order of their seeded hash, the first fraction to
     * train, the next to validation, the rest to test. */
    qsort(by_patient, n, sizeof(*by_patient), compare_patient_order);
    size_t n_patients = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(by_patient[i]->patient, by_patient[i - 1]->patient) != 0)
            n_patients++;
    size_t n_train = (size_t)llround(ratios[0] * (double)n_patients);
    size_t n_val = (size_t)llround((ratios[0] + ratios[1]) * (double)n_patients) - n_train;
    size_t patient_no = 0, patients_in[3] = {0}, files_in[3] = {0};
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && strcmp(by_patient[i]->patient, by_patient[i - 1]->patient) != 0)
            patient_no++;
        int split = patient_no < n_train ? 0 : patient_no < n_train + n_val ? 1 : 2;
        if (i == 0 || strcmp(by_patient[i]->patient, by_patient[i - 1]->patient) != 0)
            patients_in[split]++;
        by_patient[i]->split = split;
    }

    /* Find the files. */
    qsort(items, n, sizeof(*items), compare_sop);
    source_index ix = {.items = items, .n_items = n};
    if (index_dir(&ix, source, 0))
        goto done;
    size_t n_missing = n - ix.n_found;
    if (n_missing) {
        size_t shown = 0;
        for (size_t i = 0; i < n && shown < 5; i++)
            if (!items[i].path) {
                fprintf(stderr, "export-dataset: no file under \"%s\" has SOP Instance UID %s\n",
                        source, items[i].sop);
                shown++;
            }
        if (!allow_missing) {
            fprintf(stderr,
                    "export-dataset: %zu of %zu instances have no file under \"%s\" (%zu files "
                    "looked at, %zu not DICOM); nothing written (--allow-missing leaves them "
                    "out)\n",
                    n_missing, n, source, ix.n_files, ix.n_not_dicom);
            goto done;
        }
    }

    qsort(items, n, sizeof(*items), compare_manifest);
    if (xr_fs_mkdir_p(out, 0755, &err)) {
        print_err("export-dataset", &err);
        goto done;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/manifest.csv", out);
    mf = fopen(path, "wx");
    if (!mf) {
        fprintf(stderr, "export-dataset: cannot create \"%s\": %s\n", path, strerror(errno));
        goto done;
    }
    fputs("split,label,file,sop_instance_uid,study_instance_uid,patient_group,label_source,"
          "confidence\r\n",
          mf);
    for (size_t i = 0; i < n; i++) {
        export_item *it = &items[i];
        if (!it->path)
            continue;
        char dir[PATH_MAX], rel[PATH_MAX / 2], dst[PATH_MAX];
        if (snprintf(dir, sizeof(dir), "%s/%s/%s", out, split_names[it->split], it->label) >=
                (int)sizeof(dir) ||
            snprintf(rel, sizeof(rel), "%s/%s/%s.dcm", split_names[it->split], it->label,
                     it->sop) >= (int)sizeof(rel) ||
            snprintf(dst, sizeof(dst), "%s/%s", out, rel) >= (int)sizeof(dst)) {
            fprintf(stderr, "export-dataset: path for %s under \"%s\" is too long\n", it->sop,
                    out);
            goto done;
        }
        if (xr_fs_mkdir_p(dir, 0755, &err)) {
            print_err("export-dataset", &err);
            goto done;
        }
        if (place_file(it->path, dst, link_files))
            goto done;
        files_in[it->split]++;
        const char *fields[] = {split_names[it->split], it->label, rel, it->sop, it->study,
                                it->group, it->source, it->confidence};
        for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
            if (f)
                fputc(',', mf);
            csv_field(mf, fields[f]);
        }
        fputs("\r\n", mf);
    }
    if (fclose(mf) != 0) {
        mf = NULL;
        fprintf(stderr, "export-dataset: writing the manifest failed: %s\n", strerror(errno));
        goto done;
    }
    mf = NULL;
    if (!c->quiet) {
        printf("exported %zu %s instances of %zu patients to \"%s\" (seed %s)\n", n - n_missing,
               task, n_patients, out, seed);
        for (int s = 0; s < 3; s++)
            printf("  %-10s %6zu patients %6zu files\n", split_names[s], patients_in[s],
                   files_in[s]);
        if (n_missing)
            printf("  %zu instances left out: no file under \"%s\"\n", n_missing, source);
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "out of memory\n");
done:
    if (mf)
        fclose(mf);
    registry_rows_free(rows);
    export_items_free(items, n);
    free(by_patient);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    int (*fn)(ctl *c, int argc, char **argv);
} commands[] = {
    {"studies", cmd_studies},
    {"label", cmd_label},
    {"export-dataset", cmd_export},
    {"audit", cmd_audit},
};

bool ctl_registry_handles(const char *cmd)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(cmd, commands[i].name) == 0)
            return true;
    return false;
}

int ctl_registry_main(const char *config_path, bool quiet, int argc, char **argv)
{
    ctl c = {.config_path = config_path, .quiet = quiet};
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[0], commands[i].name) == 0)
            return commands[i].fn(&c, argc, argv);
    return 2;
}

void ctl_registry_usage(FILE *f)
{
    fputs("  studies [--from D] [--to D] [--body-part X] [--flag F] [--format table|csv|json]\n"
          "                 list studies with their predicted findings\n"
          "  label (--instance UID | --study UID) --task T --value V --reason TEXT\n"
          "                 record a reviewer's verified label\n"
          "  export-dataset --out DIR --source DIR [--labels verified|predicted] [--seed N]\n"
          "                 write train/validation/test/<label>/ split by patient, and a manifest\n"
          "  audit verify [--anchor FILE]\n"
          "                 recompute the audit hash chain and name the first broken link\n"
          "  (each takes --db CONNINFO and --help)\n",
          f);
}
