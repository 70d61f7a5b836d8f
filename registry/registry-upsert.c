/*
 * Idempotent writes: a received instance (patient, study, series, instance rows) and a rejected
 * object, each in one transaction tagged with the actor that the audit triggers record.
 *
 * DESIGN: every statement is INSERT ... ON CONFLICT on the natural key (UIDs, the patient key,
 * the spool id), so two workers inserting instances of the same new study at once cannot both
 * insert it: the second waits for the first and then takes the conflict path. Each DO UPDATE has
 * a WHERE (columns) IS DISTINCT FROM (new values), so an identical re-send (at-least-once spool
 * processing) updates nothing and therefore writes no audit row. When that WHERE is false the
 * statement returns no row, and a follow-up SELECT (a new snapshot under READ COMMITTED, so it
 * sees a row another transaction just committed) fetches the id; the conflicting row stays
 * locked by us until COMMIT. Rows are always touched in the order patient, study, series,
 * instance, so concurrent upserts cannot deadlock one another; serialization failures,
 * deadlocks and unique races from elsewhere are retried here a few times.
 *
 * Update policy: patient, study and series rows collect header values from many instances; a
 * value missing from one instance ("" -> NULL) does not erase one another instance provided.
 * The instance row mirrors its own header exactly, except the reception facts (received_at,
 * calling/called AE, peer, spool id), which stay those of the first reception.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "xr-error.h"
#include "xr-limits.h"
#include "xr-log.h"

#include "registry-internal.h"
#include "registry.h"

enum {
    STMT_PATIENT_UPSERT,
    STMT_PATIENT_ID,
    STMT_STUDY_UPSERT,
    STMT_STUDY_ID,
    STMT_SERIES_UPSERT,
    STMT_SERIES_ID,
    STMT_INSTANCE_UPSERT,
    STMT_INSTANCE_ID,
    STMT_REJECTION_INSERT,
    /* Migration 0002 and later: kept after the 0001 statements, so that preparing against a
     * database without the schema fails on the first of those (42P01), as it always did. */
    STMT_SET_ACTOR,
    STMT_MODEL_UPSERT,
    STMT_MODEL_ID,
    STMT_PREDICTION,
    STMT_SUMMARY,
    STMT_ISSUE,
    STMT_MAX,
};

static const struct {
    const char *name;
    int n_params;
    const char *sql;
} statements[STMT_MAX] = {
    /* The first statement of every write transaction: the actor for the audit rows, then the
     * audit chain's lock (one lock order for all writers). lock_timeout comes before the lock:
     * a transaction someone left open in psql after changing registry rows holds the chain, and
     * waiting for it forever would stall the workers (and trip the watchdog), while 55P03 is
     * transient and retried with backoff. The target list is evaluated left to right. */
    [STMT_SET_ACTOR] = {"xr_set_actor", 1,
                        "SELECT set_config('xreg.actor', $1, true),"
                        " set_config('lock_timeout', '" REGISTRY_LOCK_TIMEOUT "', true),"
                        " xreg.audit_serialize()"},
    [STMT_PATIENT_UPSERT] = {"xr_patient_upsert", 5,
                             "INSERT INTO xreg.patient AS t"
                             " (patient_id, issuer_of_patient_id, patient_name, birth_date, sex)"
                             " VALUES ($1, $2, $3, $4::date, $5)"
                             " ON CONFLICT (patient_id, issuer_of_patient_id) DO UPDATE SET"
                             "  patient_name = COALESCE(EXCLUDED.patient_name, t.patient_name),"
                             "  birth_date = COALESCE(EXCLUDED.birth_date, t.birth_date),"
                             "  sex = COALESCE(EXCLUDED.sex, t.sex),"
                             "  updated_at = now()"
                             " WHERE (t.patient_name, t.birth_date, t.sex) IS DISTINCT FROM"
                             "  (COALESCE(EXCLUDED.patient_name, t.patient_name),"
                             "   COALESCE(EXCLUDED.birth_date, t.birth_date),"
                             "   COALESCE(EXCLUDED.sex, t.sex))"
                             " RETURNING id"},
    [STMT_PATIENT_ID] = {"xr_patient_id", 2,
                         "SELECT id FROM xreg.patient"
                         " WHERE patient_id = $1 AND issuer_of_patient_id = $2"},
    [STMT_STUDY_UPSERT] =
        {"xr_study_upsert", 6,
         "INSERT INTO xreg.study AS t"
         " (study_instance_uid, patient_ref, study_date, study_time, accession_number,"
         "  study_description)"
         " VALUES ($1, $2, $3::date, $4, $5, $6)"
         " ON CONFLICT (study_instance_uid) DO UPDATE SET"
         "  patient_ref = EXCLUDED.patient_ref,"
         "  study_date = COALESCE(EXCLUDED.study_date, t.study_date),"
         "  study_time = COALESCE(EXCLUDED.study_time, t.study_time),"
         "  accession_number = COALESCE(EXCLUDED.accession_number, t.accession_number),"
         "  study_description = COALESCE(EXCLUDED.study_description, t.study_description),"
         "  updated_at = now()"
         " WHERE (t.patient_ref, t.study_date, t.study_time, t.accession_number,"
         "   t.study_description) IS DISTINCT FROM"
         "  (EXCLUDED.patient_ref,"
         "   COALESCE(EXCLUDED.study_date, t.study_date),"
         "   COALESCE(EXCLUDED.study_time, t.study_time),"
         "   COALESCE(EXCLUDED.accession_number, t.accession_number),"
         "   COALESCE(EXCLUDED.study_description, t.study_description))"
         " RETURNING id"},
    [STMT_STUDY_ID] = {"xr_study_id", 1, "SELECT id FROM xreg.study WHERE study_instance_uid = $1"},
    [STMT_SERIES_UPSERT] =
        {"xr_series_upsert", 10,
         "INSERT INTO xreg.series AS t"
         " (series_instance_uid, study_ref, modality, series_number, series_description,"
         "  body_part_examined, view_position, laterality, manufacturer, institution_name)"
         " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
         " ON CONFLICT (series_instance_uid) DO UPDATE SET"
         "  study_ref = EXCLUDED.study_ref,"
         "  modality = COALESCE(EXCLUDED.modality, t.modality),"
         "  series_number = COALESCE(EXCLUDED.series_number, t.series_number),"
         "  series_description = COALESCE(EXCLUDED.series_description, t.series_description),"
         "  body_part_examined = COALESCE(EXCLUDED.body_part_examined, t.body_part_examined),"
         "  view_position = COALESCE(EXCLUDED.view_position, t.view_position),"
         "  laterality = COALESCE(EXCLUDED.laterality, t.laterality),"
         "  manufacturer = COALESCE(EXCLUDED.manufacturer, t.manufacturer),"
         "  institution_name = COALESCE(EXCLUDED.institution_name, t.institution_name),"
         "  updated_at = now()"
         " WHERE (t.study_ref, t.modality, t.series_number, t.series_description,"
         "   t.body_part_examined, t.view_position, t.laterality, t.manufacturer,"
         "   t.institution_name) IS DISTINCT FROM"
         "  (EXCLUDED.study_ref,"
         "   COALESCE(EXCLUDED.modality, t.modality),"
         "   COALESCE(EXCLUDED.series_number, t.series_number),"
         "   COALESCE(EXCLUDED.series_description, t.series_description),"
         "   COALESCE(EXCLUDED.body_part_examined, t.body_part_examined),"
         "   COALESCE(EXCLUDED.view_position, t.view_position),"
         "   COALESCE(EXCLUDED.laterality, t.laterality),"
         "   COALESCE(EXCLUDED.manufacturer, t.manufacturer),"
         "   COALESCE(EXCLUDED.institution_name, t.institution_name))"
         " RETURNING id"},
    [STMT_SERIES_ID] = {"xr_series_id", 1,
                        "SELECT id FROM xreg.series WHERE series_instance_uid = $1"},
    [STMT_INSTANCE_UPSERT] =
        {"xr_instance_upsert", 19,
         "INSERT INTO xreg.instance AS t"
         " (sop_instance_uid, series_ref, sop_class_uid, transfer_syntax_uid, instance_number,"
         "  rows, columns, number_of_frames, bits_allocated, bits_stored, samples_per_pixel,"
         "  photometric_interpretation, body_part_examined, n_bytes, received_at, calling_ae,"
         "  called_ae, peer_host, spool_id)"
         " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,"
         "  COALESCE($15::timestamptz, now()), $16, $17, $18, $19)"
         " ON CONFLICT (sop_instance_uid) DO UPDATE SET"
         "  series_ref = EXCLUDED.series_ref,"
         "  sop_class_uid = EXCLUDED.sop_class_uid,"
         "  transfer_syntax_uid = EXCLUDED.transfer_syntax_uid,"
         "  instance_number = EXCLUDED.instance_number,"
         "  rows = EXCLUDED.rows,"
         "  columns = EXCLUDED.columns,"
         "  number_of_frames = EXCLUDED.number_of_frames,"
         "  bits_allocated = EXCLUDED.bits_allocated,"
         "  bits_stored = EXCLUDED.bits_stored,"
         "  samples_per_pixel = EXCLUDED.samples_per_pixel,"
         "  photometric_interpretation = EXCLUDED.photometric_interpretation,"
         "  body_part_examined = EXCLUDED.body_part_examined,"
         "  n_bytes = EXCLUDED.n_bytes,"
         "  updated_at = now()"
         " WHERE (t.series_ref, t.sop_class_uid, t.transfer_syntax_uid, t.instance_number,"
         "   t.rows, t.columns, t.number_of_frames, t.bits_allocated, t.bits_stored,"
         "   t.samples_per_pixel, t.photometric_interpretation, t.body_part_examined,"
         "   t.n_bytes) IS DISTINCT FROM"
         "  (EXCLUDED.series_ref, EXCLUDED.sop_class_uid, EXCLUDED.transfer_syntax_uid,"
         "   EXCLUDED.instance_number, EXCLUDED.rows, EXCLUDED.columns,"
         "   EXCLUDED.number_of_frames, EXCLUDED.bits_allocated, EXCLUDED.bits_stored,"
         "   EXCLUDED.samples_per_pixel, EXCLUDED.photometric_interpretation,"
         "   EXCLUDED.body_part_examined, EXCLUDED.n_bytes)"
         /* updated_at is NULL only on a row this statement inserted (the update path above and
          * the BEFORE UPDATE trigger both set it). */
         " RETURNING id, updated_at IS NULL"},
    [STMT_INSTANCE_ID] = {"xr_instance_id", 1,
                          "SELECT id FROM xreg.instance WHERE sop_instance_uid = $1"},
    [STMT_REJECTION_INSERT] =
        {"xr_rejection_insert", 10,
         "INSERT INTO xreg.rejection"
         " (spool_id, received_at, calling_ae, called_ae, peer_host, sop_class_uid,"
         "  sop_instance_uid, dimse_status, reason, path)"
         " VALUES ($1, COALESCE($2::timestamptz, now()), $3, $4, $5, $6, $7, $8, $9, $10)"
         " ON CONFLICT (spool_id) DO NOTHING"},
    [STMT_MODEL_UPSERT] = {"xr_model_upsert", 7,
                           "INSERT INTO xreg.model AS t"
                           " (name, sha256, task, labels, positive_label, version, metadata)"
                           " VALUES ($1, $2, $3, $4::text[], $5, $6, COALESCE($7::jsonb, '{}'))"
                           " ON CONFLICT (name, sha256) DO UPDATE SET"
                           "  task = EXCLUDED.task, labels = EXCLUDED.labels,"
                           "  positive_label = EXCLUDED.positive_label,"
                           "  version = EXCLUDED.version, metadata = EXCLUDED.metadata"
                           " WHERE (t.task, t.labels, t.positive_label, t.version, t.metadata)"
                           "  IS DISTINCT FROM (EXCLUDED.task, EXCLUDED.labels,"
                           "  EXCLUDED.positive_label, EXCLUDED.version, EXCLUDED.metadata)"
                           " RETURNING id"},
    [STMT_MODEL_ID] = {"xr_model_id", 2,
                       "SELECT id FROM xreg.model WHERE name = $1 AND sha256 = $2"},
    [STMT_PREDICTION] = {"xr_prediction", 5,
                         "SELECT xreg.record_prediction($1, $2::bigint, $3::real[], $4,"
                         " $5::real)"},
    [STMT_SUMMARY] = {"xr_summary", 1, "SELECT xreg.study_summary_refresh($1::bigint)"},
    [STMT_ISSUE] = {"xr_issue", 4,
                    "INSERT INTO xreg.classification_issue AS t"
                    " (instance_ref, task, reason_code, reason) VALUES ($1::bigint, $2, $3, $4)"
                    " ON CONFLICT (instance_ref) DO UPDATE SET"
                    "  task = EXCLUDED.task, reason_code = EXCLUDED.reason_code,"
                    "  reason = EXCLUDED.reason"
                    " WHERE (t.task, t.reason_code, t.reason) IS DISTINCT FROM"
                    "  (EXCLUDED.task, EXCLUDED.reason_code, EXCLUDED.reason)"},
};

xr_code registry_statements_prepare(registry *reg, xr_error *err)
{
    /* A failed earlier attempt in this session may have left some of them behind. */
    xr_code rc = registry_exec(reg, "DEALLOCATE ALL", NULL, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < STMT_MAX; i++) {
        PGresult *res = PQprepare(reg->conn, statements[i].name, statements[i].sql,
                                  statements[i].n_params, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            rc = registry_error_from_result(reg, res, err);
            PQclear(res);
            xr_error_prefix(err, "could not prepare statement \"%s\": ", statements[i].name);
            return rc;
        }
        PQclear(res);
    }
    reg->prepared = true;
    return XR_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Turning header values into statement parameters (text format; NULL is SQL NULL)
 */

/* A bigint id as text: at most 19 digits and a sign. */
#define ID_BYTES 24
/* An int32/int64 as text. */
#define INT_BYTES 24
/* "YYYY-MM-DD" */
#define DATE_BYTES 11
/* "YYYYYY-MM-DD HH:MM:SS.ffffff+00", sized for any int in each field so that it cannot be cut */
#define TIMESTAMP_BYTES 96

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

/* Optional DICOM text: "" (or NULL) is stored as SQL NULL. */
static const char *text_or_null(const char *s)
{
    return s && *s ? s : NULL;
}

static bool is_leap_year(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/*
 * DICOM DA "YYYYMMDD" (or the ACR-NEMA "YYYY.MM.DD" that PS3.5 6.2 asks readers to accept) to
 * ISO "YYYY-MM-DD". Returns NULL for "" and for anything that is not a calendar date: header
 * dates are often junk, and a missing date is better than a refused object.
 */
static const char *date_or_null(const char *da, char out[DATE_BYTES])
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!da)
        return NULL;
    char d[8];
    size_t n = strlen(da);
    if (n == 8) {
        memcpy(d, da, 8);
    } else if (n == 10 && da[4] == '.' && da[7] == '.') {
        memcpy(d, da, 4);
        memcpy(d + 4, da + 5, 2);
        memcpy(d + 6, da + 8, 2);
    } else {
        return NULL;
    }
    for (size_t i = 0; i < 8; i++)
        if (d[i] < '0' || d[i] > '9')
            return NULL;
    int y = (d[0] - '0') * 1000 + (d[1] - '0') * 100 + (d[2] - '0') * 10 + (d[3] - '0');
    int m = (d[4] - '0') * 10 + (d[5] - '0');
    int day = (d[6] - '0') * 10 + (d[7] - '0');
    if (y < 1 || m < 1 || m > 12 || day < 1)
        return NULL;
    int max_day = days[m - 1] + (m == 2 && is_leap_year(y));
    if (day > max_day)
        return NULL;
    memcpy(out, d, 4);
    out[4] = '-';
    memcpy(out + 5, d + 4, 2);
    out[7] = '-';
    memcpy(out + 8, d + 6, 2);
    out[10] = '\0';
    return out;
}

/* An int32 header value where -1 means absent. */
static const char *int_or_null(int32_t v, char out[INT_BYTES])
{
    if (v == -1)
        return NULL;
    snprintf(out, INT_BYTES, "%" PRId32, v);
    return out;
}

/* A count or size where 0 means absent (no image has 0 rows, 0 bits or 0 frames). */
static const char *count_or_null(uint64_t v, char out[INT_BYTES])
{
    if (v == 0)
        return NULL;
    snprintf(out, INT_BYTES, "%" PRIu64, v);
    return out;
}

/* Microseconds since the Unix epoch as a UTC timestamptz literal; 0 means "now" (NULL). */
static xr_code timestamp_or_null(int64_t us, char out[TIMESTAMP_BYTES], const char **ret,
                                 xr_error *err)
{
    if (us == 0) {
        *ret = NULL;
        return XR_OK;
    }
    if (us < 0)
        return xr_error_set(err, XR_E_INPUT,
                            "reception time is %" PRId64 " us but must be >= 0 (0: now)", us);
    time_t sec = (time_t)(us / 1000000);
    struct tm tm;
    if (!gmtime_r(&sec, &tm))
        return xr_error_set(err, XR_E_INPUT, "reception time %" PRId64 " us is out of range", us);
    snprintf(out, TIMESTAMP_BYTES, "%04d-%02d-%02d %02d:%02d:%02d.%06d+00", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(us % 1000000));
    *ret = out;
    return XR_OK;
}

static xr_code check_uid(const char *uid, const char *what, xr_error *err)
{
    size_t n = uid ? strlen(uid) : 0;
    if (n == 0)
        return xr_error_set(err, XR_E_INPUT, "%s is missing", what);
    if (n > XR_UID_MAX) {
        xr_error_set(err, XR_E_INPUT, "%s is %zu characters long but must be at most %d", what, n,
                     XR_UID_MAX);
        xr_error_detail(err, "%.*s...", 80, uid);
        return XR_E_INPUT;
    }
    return XR_OK;
}

static xr_code check_int32(uint64_t v, const char *what, xr_error *err)
{
    if (v > INT32_MAX)
        return xr_error_set(err, XR_E_INPUT, "%s is %" PRIu64 " but must be in [0, %" PRId32 "]",
                            what, v, INT32_MAX);
    return XR_OK;
}

/* ----------------------------------------------------------------------------------------------
 * The transactions
 */

/* What one write transaction does between BEGIN + set actor and COMMIT. */
typedef xr_code (*txn_body_fn)(registry *reg, void *ctx, xr_error *err);

/*
 * BEGIN, tag with actor, run body, COMMIT; ROLLBACK on failure. Reconnects and retries as
 * registry_should_retry says. err is always filled through a local record, since the retry
 * decision needs the SQLSTATE even when the caller passed NULL.
 */
static xr_code run_write_txn(registry *reg, const char *actor, txn_body_fn body, void *ctx,
                             xr_error *err)
{
    xr_error e = XR_ERROR_INIT;
    xr_code rc;
    const char *actor_param[] = {str_or_empty(actor)};
    for (unsigned attempt = 1;; attempt++) {
        rc = registry_ensure_connected(reg, &e);
        if (rc)
            break;
        registry_rollback(reg); /* a transaction left open by an earlier failure */
        if (!reg->prepared)
            rc = registry_statements_prepare(reg, &e);
        if (rc == XR_OK)
            rc = registry_exec(reg, "BEGIN", NULL, &e);
        if (rc == XR_OK)
            rc = registry_exec_prepared(reg, statements[STMT_SET_ACTOR].name, 1, actor_param, NULL,
                                        &e);
        if (rc == XR_OK)
            rc = body(reg, ctx, &e);
        if (rc == XR_OK)
            rc = registry_exec(reg, "COMMIT", NULL, &e);
        if (rc == XR_OK)
            break;
        registry_rollback(reg);
        if (!registry_should_retry(reg, &e, attempt))
            break;
        xr_log_debug("registry: %s (SQLSTATE %s), retrying", e.msg,
                     e.sqlstate[0] ? e.sqlstate : "none");
        xr_error_clear(&e);
    }
    if (rc && err)
        *err = e;
    return rc;
}

/*
 * Run an upsert returning (id[, inserted]); when it returns no row (nothing changed), run the
 * SELECT that finds the existing row. Copies the id into ret_id.
 */
static xr_code upsert_row(registry *reg, int upsert, const char *const *values, int select,
                          const char *const *select_values, char ret_id[ID_BYTES],
                          bool *ret_inserted, xr_error *err)
{
    PGresult *res = NULL;
    xr_code rc = registry_exec_prepared(reg, statements[upsert].name, statements[upsert].n_params,
                                        values, &res, err);
    if (rc)
        return rc;
    if (PQntuples(res) == 0) {
        PQclear(res);
        res = NULL;
        rc = registry_exec_prepared(reg, statements[select].name, statements[select].n_params,
                                    select_values, &res, err);
        if (rc)
            return rc;
    }
    const char *id = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "";
    size_t n = strlen(id);
    if (n == 0 || n >= ID_BYTES) {
        rc = xr_error_set(err, XR_E_INTERNAL, "statement \"%s\" returned %d rows, id \"%s\"",
                          statements[upsert].name, PQntuples(res), id);
        PQclear(res);
        return rc;
    }
    memcpy(ret_id, id, n + 1);
    if (ret_inserted)
        *ret_inserted = PQnfields(res) > 1 && strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    PQclear(res);
    return XR_OK;
}

typedef struct instance_txn {
    const registry_instance *inst;
    const char *patient[5];
    const char *study[6];
    const char *series[10];
    const char *instance[19];
    char patient_id[ID_BYTES];
    char study_id[ID_BYTES];
    char series_id[ID_BYTES];
    char instance_id[ID_BYTES];
    bool inserted;
    /* Predictions to record after the instance (may be none), as statement parameters. */
    struct prediction_params *preds;
    size_t n_preds;
    const registry_classify_issue *issue; /* may be NULL */
} instance_txn;

/* One prediction as text parameters of STMT_PREDICTION. */
typedef struct prediction_params {
    char model_id[ID_BYTES];
    char *probabilities; /* "{0.1,0.9}", malloc'ed */
    const char *preprocessing;
    char threshold_text[32];
    const char *threshold; /* NULL or threshold_text */
} prediction_params;

static xr_code predictions_body(registry *reg, const char *sop_instance_uid,
                                const prediction_params *preds, size_t n_preds, xr_error *err)
{
    char study_id[ID_BYTES] = "";
    for (size_t i = 0; i < n_preds; i++) {
        const char *values[] = {sop_instance_uid, preds[i].model_id, preds[i].probabilities,
                                preds[i].preprocessing, preds[i].threshold};
        PGresult *res = NULL;
        xr_code rc = registry_exec_prepared(reg, statements[STMT_PREDICTION].name, 5, values,
                                            &res, err);
        if (rc) {
            xr_error_prefix(err, "prediction of model %s: ", preds[i].model_id);
            return rc;
        }
        const char *id = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "";
        if (strlen(id) >= ID_BYTES || !*id) {
            PQclear(res);
            return xr_error_set(err, XR_E_INTERNAL, "xreg.record_prediction returned no study");
        }
        snprintf(study_id, sizeof(study_id), "%s", id);
        PQclear(res);
    }
    if (!study_id[0])
        return XR_OK;
    const char *values[] = {study_id};
    return registry_exec_prepared(reg, statements[STMT_SUMMARY].name, 1, values, NULL, err);
}

static xr_code instance_txn_body(registry *reg, void *ctx, xr_error *err)
{
    instance_txn *t = ctx;
    const registry_instance *inst = t->inst;
    const char *patient_key[] = {t->patient[0], t->patient[1]};
    xr_code rc = upsert_row(reg, STMT_PATIENT_UPSERT, t->patient, STMT_PATIENT_ID, patient_key,
                            t->patient_id, NULL, err);
    if (rc)
        return rc;
    t->study[1] = t->patient_id;
    const char *study_key[] = {inst->study_instance_uid};
    rc = upsert_row(reg, STMT_STUDY_UPSERT, t->study, STMT_STUDY_ID, study_key, t->study_id, NULL,
                    err);
    if (rc)
        return rc;
    t->series[1] = t->study_id;
    const char *series_key[] = {inst->series_instance_uid};
    rc = upsert_row(reg, STMT_SERIES_UPSERT, t->series, STMT_SERIES_ID, series_key, t->series_id,
                    NULL, err);
    if (rc)
        return rc;
    t->instance[1] = t->series_id;
    const char *instance_key[] = {inst->sop_instance_uid};
    t->inserted = false;
    rc = upsert_row(reg, STMT_INSTANCE_UPSERT, t->instance, STMT_INSTANCE_ID, instance_key,
                    t->instance_id, &t->inserted, err);
    if (rc)
        return rc;
    rc = predictions_body(reg, inst->sop_instance_uid, t->preds, t->n_preds, err);
    if (rc || !t->issue)
        return rc;
    const char *issue[] = {t->instance_id, text_or_null(t->issue->task), t->issue->reason_code,
                           t->issue->reason};
    rc = registry_exec_prepared(reg, statements[STMT_ISSUE].name, 4, issue, NULL, err);
    if (rc)
        xr_error_prefix(err, "classification issue: ");
    return rc;
}

static void prediction_params_free(prediction_params *p, size_t n)
{
    if (!p)
        return;
    for (size_t i = 0; i < n; i++)
        free(p[i].probabilities);
    free(p);
}

/* Check predictions and turn them into statement parameters; *ret is freed by the caller with
 * prediction_params_free (also on error). */
static xr_code prediction_params_new(const registry_prediction *preds, size_t n,
                                     prediction_params **ret, xr_error *err)
{
    *ret = NULL;
    if (n == 0)
        return XR_OK;
    if (!preds)
        return xr_error_set(err, XR_E_INTERNAL, "%zu predictions but no array", n);
    prediction_params *p = calloc(n, sizeof(*p));
    if (!p)
        return xr_error_set(err, XR_E_NOMEM, "out of memory for %zu predictions", n);
    *ret = p;
    for (size_t i = 0; i < n; i++) {
        const registry_prediction *r = &preds[i];
        if (r->model_id <= 0)
            return xr_error_set(err, XR_E_INPUT, "prediction %zu: model id %" PRId64
                                " is not one registry_model_upsert returned", i, r->model_id);
        if (r->n_probabilities < 2 || r->n_probabilities > REGISTRY_MODEL_LABELS_MAX ||
            !r->probabilities)
            return xr_error_set(err, XR_E_INPUT,
                                "prediction %zu: %zu probabilities but must be in [2, %d]", i,
                                r->n_probabilities, REGISTRY_MODEL_LABELS_MAX);
        /* "%.9g" round-trips a float; 16 bytes each with the comma, plus braces. */
        size_t cap = r->n_probabilities * 18 + 3;
        char *text = malloc(cap);
        if (!text)
            return xr_error_set(err, XR_E_NOMEM, "out of memory");
        p[i].probabilities = text;
        size_t len = 0;
        text[len++] = '{';
        for (size_t k = 0; k < r->n_probabilities; k++) {
            float v = r->probabilities[k];
            if (!(v >= 0.0f && v <= 1.0f)) /* also NaN */
                return xr_error_set(err, XR_E_INPUT,
                                    "prediction %zu: probability %zu is %g but must be in [0, 1]",
                                    i, k, (double)v);
            len += (size_t)snprintf(text + len, cap - len, "%s%.9g", k ? "," : "", (double)v);
        }
        snprintf(text + len, cap - len, "}");
        snprintf(p[i].model_id, sizeof(p[i].model_id), "%" PRId64, r->model_id);
        p[i].preprocessing = text_or_null(r->preprocessing);
        if (r->threshold != 0.0) {
            if (!(r->threshold > 0.0 && r->threshold < 1.0)) /* also NaN */
                return xr_error_set(err, XR_E_INPUT,
                                    "prediction %zu: threshold %g must be in (0, 1)", i,
                                    r->threshold);
            snprintf(p[i].threshold_text, sizeof(p[i].threshold_text), "%.9g", r->threshold);
            p[i].threshold = p[i].threshold_text;
        }
    }
    return XR_OK;
}

static xr_code check_instance(const registry_instance *inst, xr_error *err)
{
    xr_code rc;
    if ((rc = check_uid(inst->sop_instance_uid, "SOP Instance UID", err)) ||
        (rc = check_uid(inst->sop_class_uid, "SOP Class UID", err)) ||
        (rc = check_uid(inst->series_instance_uid, "Series Instance UID", err)) ||
        (rc = check_uid(inst->study_instance_uid, "Study Instance UID", err)) ||
        (rc = check_int32(inst->rows, "Rows", err)) ||
        (rc = check_int32(inst->columns, "Columns", err)) ||
        (rc = check_int32(inst->number_of_frames, "Number of Frames", err)))
        return rc;
    if (inst->n_bytes > INT64_MAX)
        return xr_error_set(err, XR_E_INPUT, "object size is %" PRIu64 " bytes but must be < 2^63",
                            inst->n_bytes);
    return XR_OK;
}

xr_code registry_instance_upsert(registry *reg, const registry_instance *inst, const char *actor,
                                 bool *ret_inserted, xr_error *err)
{
    return registry_instance_upsert_predictions(reg, inst, NULL, 0, actor, ret_inserted, err);
}

xr_code registry_instance_upsert_predictions(registry *reg, const registry_instance *inst,
                                             const registry_prediction *preds, size_t n_preds,
                                             const char *actor, bool *ret_inserted, xr_error *err)
{
    return registry_instance_upsert_classified(reg, inst, preds, n_preds, NULL, actor,
                                               ret_inserted, err);
}

xr_code registry_instance_upsert_classified(registry *reg, const registry_instance *inst,
                                            const registry_prediction *preds, size_t n_preds,
                                            const registry_classify_issue *issue,
                                            const char *actor, bool *ret_inserted, xr_error *err)
{
    assert(reg && inst);
    if (!reg || !inst)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_instance_upsert");
    xr_code rc = check_instance(inst, err);
    if (rc) {
        xr_error_prefix(err, "cannot register instance: ");
        return rc;
    }
    prediction_params *pp = NULL;
    rc = prediction_params_new(preds, n_preds, &pp, err);
    if (rc) {
        prediction_params_free(pp, n_preds);
        xr_error_prefix(err, "cannot register instance \"%s\": ", inst->sop_instance_uid);
        return rc;
    }

    char birth_date[DATE_BYTES], study_date[DATE_BYTES], series_number[INT_BYTES],
        instance_number[INT_BYTES], rows[INT_BYTES], columns[INT_BYTES], frames[INT_BYTES],
        bits_allocated[INT_BYTES], bits_stored[INT_BYTES], samples[INT_BYTES], n_bytes[INT_BYTES],
        received_at[TIMESTAMP_BYTES];
    const char *received_at_param;
    rc = timestamp_or_null(inst->received_at_us, received_at, &received_at_param, err);
    if (rc) {
        prediction_params_free(pp, n_preds);
        xr_error_prefix(err, "cannot register instance \"%s\": ", inst->sop_instance_uid);
        return rc;
    }
    if (issue && (!issue->reason_code || !*issue->reason_code || !issue->reason ||
                  !*issue->reason)) {
        prediction_params_free(pp, n_preds);
        return xr_error_set(err, XR_E_INPUT, "cannot register instance \"%s\": a classification "
                            "issue needs a reason code and a reason", inst->sop_instance_uid);
    }
    instance_txn t = {
        .inst = inst,
        .preds = pp,
        .n_preds = n_preds,
        .issue = issue,
        .patient = {str_or_empty(inst->patient_id), str_or_empty(inst->issuer_of_patient_id),
                    text_or_null(inst->patient_name),
                    date_or_null(inst->patient_birth_date, birth_date),
                    text_or_null(inst->patient_sex)},
        .study = {inst->study_instance_uid, NULL, date_or_null(inst->study_date, study_date),
                  text_or_null(inst->study_time), text_or_null(inst->accession_number),
                  text_or_null(inst->study_description)},
        .series = {inst->series_instance_uid, NULL, text_or_null(inst->modality),
                   int_or_null(inst->series_number, series_number),
                   text_or_null(inst->series_description), text_or_null(inst->body_part_examined),
                   text_or_null(inst->view_position), text_or_null(inst->laterality),
                   text_or_null(inst->manufacturer), text_or_null(inst->institution_name)},
        .instance = {inst->sop_instance_uid, NULL, inst->sop_class_uid,
                     text_or_null(inst->transfer_syntax_uid),
                     int_or_null(inst->instance_number, instance_number),
                     count_or_null(inst->rows, rows), count_or_null(inst->columns, columns),
                     count_or_null(inst->number_of_frames, frames),
                     count_or_null(inst->bits_allocated, bits_allocated),
                     count_or_null(inst->bits_stored, bits_stored),
                     count_or_null(inst->samples_per_pixel, samples),
                     text_or_null(inst->photometric_interpretation),
                     text_or_null(inst->body_part_examined),
                     /* 0 bytes is a real (if odd) size, unlike 0 rows */
                     (snprintf(n_bytes, sizeof(n_bytes), "%" PRIu64, inst->n_bytes), n_bytes),
                     received_at_param, text_or_null(inst->calling_ae),
                     text_or_null(inst->called_ae), text_or_null(inst->peer_host),
                     text_or_null(inst->spool_id)},
    };

    rc = run_write_txn(reg, actor, instance_txn_body, &t, err);
    prediction_params_free(pp, n_preds);
    if (rc) {
        xr_error_prefix(err, "could not register instance \"%s\": ", inst->sop_instance_uid);
        return rc;
    }
    xr_log_debug("registry: instance \"%s\" %s (id %s)", inst->sop_instance_uid,
                 t.inserted ? "inserted" : "already registered", t.instance_id);
    if (ret_inserted)
        *ret_inserted = t.inserted;
    return XR_OK;
}

typedef struct rejection_txn {
    const char *values[10];
} rejection_txn;

static xr_code rejection_txn_body(registry *reg, void *ctx, xr_error *err)
{
    rejection_txn *t = ctx;
    return registry_exec_prepared(reg, statements[STMT_REJECTION_INSERT].name,
                                  statements[STMT_REJECTION_INSERT].n_params, t->values, NULL, err);
}

xr_code registry_rejection_record(registry *reg, const registry_rejection *rej, const char *actor,
                                  xr_error *err)
{
    assert(reg && rej);
    if (!reg || !rej)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_rejection_record");
    if (!rej->spool_id || !*rej->spool_id)
        return xr_error_set(err, XR_E_INPUT, "cannot record rejection: spool id is missing");
    char received_at[TIMESTAMP_BYTES], status[INT_BYTES];
    const char *received_at_param;
    xr_code rc = timestamp_or_null(rej->received_at_us, received_at, &received_at_param, err);
    if (rc) {
        xr_error_prefix(err, "cannot record rejection \"%s\": ", rej->spool_id);
        return rc;
    }
    snprintf(status, sizeof(status), "%u", (unsigned)rej->dimse_status);
    rejection_txn t = {
        .values = {rej->spool_id, received_at_param, text_or_null(rej->calling_ae),
                   text_or_null(rej->called_ae), text_or_null(rej->peer_host),
                   text_or_null(rej->sop_class_uid), text_or_null(rej->sop_instance_uid), status,
                   /* NOT NULL: the daemon always says why; an empty reason stays empty */
                   str_or_empty(rej->reason), text_or_null(rej->path)},
    };
    rc = run_write_txn(reg, actor, rejection_txn_body, &t, err);
    if (rc) {
        xr_error_prefix(err, "could not record rejection \"%s\": ", rej->spool_id);
        return rc;
    }
    xr_log_debug("registry: rejection \"%s\" recorded", rej->spool_id);
    return XR_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Models and predictions
 */

typedef struct predictions_txn {
    const char *sop_instance_uid;
    prediction_params *preds;
    size_t n_preds;
} predictions_txn;

static xr_code predictions_txn_body(registry *reg, void *ctx, xr_error *err)
{
    predictions_txn *t = ctx;
    return predictions_body(reg, t->sop_instance_uid, t->preds, t->n_preds, err);
}

xr_code registry_predictions_record(registry *reg, const char *sop_instance_uid,
                                    const registry_prediction *preds, size_t n_preds,
                                    const char *actor, xr_error *err)
{
    assert(reg);
    if (!reg)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_predictions_record");
    xr_code rc = check_uid(sop_instance_uid, "SOP Instance UID", err);
    prediction_params *pp = NULL;
    if (rc == XR_OK)
        rc = prediction_params_new(preds, n_preds, &pp, err);
    if (rc) {
        prediction_params_free(pp, n_preds);
        xr_error_prefix(err, "cannot record predictions: ");
        return rc;
    }
    predictions_txn t = {.sop_instance_uid = sop_instance_uid, .preds = pp, .n_preds = n_preds};
    rc = run_write_txn(reg, actor, predictions_txn_body, &t, err);
    prediction_params_free(pp, n_preds);
    if (rc) {
        xr_error_prefix(err, "could not record predictions for \"%s\": ", sop_instance_uid);
        return rc;
    }
    return XR_OK;
}

static bool is_hex64(const char *s)
{
    if (!s || strlen(s) != 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

/* The label that means "present" for a binary task, when the model does not say. */
static const char *guess_positive_label(const registry_model *m)
{
    static const char *const words[] = {"present",  "yes",      "positive", "true",
                                        "1",        "implant",  "fracture", "abnormal"};
    const char *found = NULL;
    for (size_t i = 0; i < m->n_labels; i++)
        for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++)
            if (strcasecmp(m->labels[i], words[w]) == 0) {
                if (found)
                    return NULL; /* ambiguous */
                found = m->labels[i];
            }
    return found;
}

/* Append s as one element of a PostgreSQL array literal: quoted, with " and \ escaped. */
static void append_array_element(char *buf, size_t *len, const char *s, bool first)
{
    if (!first)
        buf[(*len)++] = ',';
    buf[(*len)++] = '"';
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            buf[(*len)++] = '\\';
        buf[(*len)++] = *p;
    }
    buf[(*len)++] = '"';
}

typedef struct model_txn {
    const char *values[7];
    char id[ID_BYTES];
} model_txn;

static xr_code model_txn_body(registry *reg, void *ctx, xr_error *err)
{
    model_txn *t = ctx;
    const char *key[] = {t->values[0], t->values[1]};
    return upsert_row(reg, STMT_MODEL_UPSERT, t->values, STMT_MODEL_ID, key, t->id, NULL, err);
}

static xr_code check_model(const registry_model *m, const char **ret_positive, xr_error *err)
{
    if (!m->name || !*m->name)
        return xr_error_set(err, XR_E_INPUT, "model name is missing");
    if (!is_hex64(m->sha256))
        return xr_error_set(err, XR_E_INPUT, "sha256 \"%s\" is not 64 lower-case hex digits",
                            m->sha256 ? m->sha256 : "");
    bool binary;
    if (m->task && strcmp(m->task, REGISTRY_TASK_BODY_PART) == 0)
        binary = false;
    else if (m->task && (strcmp(m->task, REGISTRY_TASK_IMPLANT) == 0 ||
                         strcmp(m->task, REGISTRY_TASK_FRACTURE) == 0))
        binary = true;
    else
        return xr_error_set(err, XR_E_INPUT,
                            "unrecognized task \"%s\" (expected body_part, implant or fracture)",
                            m->task ? m->task : "");
    if (m->n_labels < 2 || m->n_labels > REGISTRY_MODEL_LABELS_MAX || !m->labels)
        return xr_error_set(err, XR_E_INPUT, "model has %zu labels but must have 2 to %d",
                            m->n_labels, REGISTRY_MODEL_LABELS_MAX);
    for (size_t i = 0; i < m->n_labels; i++) {
        if (!m->labels[i] || !*m->labels[i])
            return xr_error_set(err, XR_E_INPUT, "label %zu is empty", i);
        if (strlen(m->labels[i]) > 256)
            return xr_error_set(err, XR_E_INPUT, "label %zu is %zu bytes long but must be at "
                                "most 256", i, strlen(m->labels[i]));
        for (size_t k = 0; k < i; k++)
            if (strcmp(m->labels[i], m->labels[k]) == 0)
                return xr_error_set(err, XR_E_INPUT, "label \"%s\" appears twice",
                                    m->labels[i]);
    }
    *ret_positive = NULL;
    if (!binary) {
        if (m->positive_label)
            return xr_error_set(err, XR_E_INPUT, "a body_part model has no positive label");
        return XR_OK;
    }
    const char *pos = m->positive_label ? m->positive_label : guess_positive_label(m);
    if (!pos)
        return xr_error_set(err, XR_E_INPUT,
                            "cannot tell which label of %s model \"%s\" means present",
                            m->task, m->name);
    bool listed = false;
    for (size_t i = 0; i < m->n_labels && !listed; i++)
        listed = strcmp(m->labels[i], pos) == 0;
    if (!listed)
        return xr_error_set(err, XR_E_INPUT, "positive label \"%s\" is not one of the labels",
                            pos);
    *ret_positive = pos;
    return XR_OK;
}

xr_code registry_model_upsert(registry *reg, const registry_model *m, const char *actor,
                              int64_t *ret_model_id, xr_error *err)
{
    assert(reg && m);
    if (!reg || !m)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_model_upsert");
    const char *positive = NULL;
    xr_code rc = check_model(m, &positive, err);
    if (rc) {
        xr_error_prefix(err, "cannot register model \"%s\": ", m->name ? m->name : "");
        return rc;
    }
    /* Worst case every byte escaped, plus quotes and commas. */
    size_t cap = 3;
    for (size_t i = 0; i < m->n_labels; i++)
        cap += 2 * strlen(m->labels[i]) + 3;
    char *labels = malloc(cap);
    if (!labels)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    size_t len = 0;
    labels[len++] = '{';
    for (size_t i = 0; i < m->n_labels; i++)
        append_array_element(labels, &len, m->labels[i], i == 0);
    labels[len++] = '}';
    labels[len] = '\0';
    model_txn t = {.values = {m->name, m->sha256, m->task, labels, positive,
                              text_or_null(m->version), text_or_null(m->metadata_json)}};
    rc = run_write_txn(reg, actor, model_txn_body, &t, err);
    free(labels);
    if (rc) {
        xr_error_prefix(err, "could not register model \"%s\": ", m->name);
        return rc;
    }
    if (ret_model_id)
        *ret_model_id = strtoll(t.id, NULL, 10);
    return XR_OK;
}
