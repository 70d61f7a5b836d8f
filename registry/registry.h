/*
 * registry/: the PostgreSQL registry through libpq. Knows nothing of DCMTK or oneDNN.
 *
 *     registry *reg;
 *     if (registry_open(conninfo, "xregd worker 1", &reg, &err)) ...;
 *     registry_migrate(reg, migrations, n_migrations, &n_applied, &err);
 *     switch (registry_instance_upsert(reg, &inst, "dicom:CR01@10.0.0.5", &inserted, &err)) {
 *     case XR_OK: ...; case XR_E_TRANSIENT: retry later; default: reject the object;
 *     }
 *     reg = registry_close(reg);
 *
 * Thread rule: a registry handle is used by one thread at a time (one PGconn per worker);
 * different handles may be used from different threads at once. Calls block on the network:
 * connecting waits at most connect_timeout (10 s unless the connection string sets it).
 * Errors: XR_E_TRANSIENT when retrying may work (connection lost or refused, SQLSTATE class 08,
 * 40001, 40P01, class 53, 57P01-57P03, 57P05, 57014 statement timeout/cancel, 55P03 lock
 * timeout); XR_E_CONFIG for what an operator must fix (class 28 authentication, 3D000 unknown
 * database, 42501 missing privilege); other database errors are permanent (XR_E_INPUT for data
 * errors, class 22/23, XR_E_INTERNAL otherwise), with err->sqlstate set. err->msg is one line
 * (the server's primary message with context in front); err->detail has the server's DETAIL,
 * HINT and CONTEXT, or the rest of libpq's message.
 * Every write transaction first takes the audit chain's lock (xreg.audit_serialize, migration
 * 0002), so writers across all xregd instances run one at a time; a wait longer than 10 s
 * (lock_timeout) is 55P03, XR_E_TRANSIENT.
 * After a lost connection the handle stays valid: the next call reconnects (PQreset), and the
 * write functions retry once by themselves when the connection turns out to have died while
 * idle (server restarted since the last call).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct registry registry;

/* One numbered migration: name like "0001_init.sql", sql its whole text. */
typedef struct registry_migration {
    const char *name;
    const char *sql;
} registry_migration;

/*
 * Connect with a libpq connection string (key=value or postgresql:// URI; may be "" for libpq's
 * defaults/environment). application_name (may be NULL) is shown in pg_stat_activity and wins
 * over one in conninfo; the client encoding is always UTF8. A connection that fails returns
 * XR_E_TRANSIENT (the server may come back) and no handle; a malformed conninfo (syntax, unknown
 * keyword) returns XR_E_CONFIG. libpq checks option values (port=abc, sslmode=bogus) and
 * reports a wrong password or database only while connecting and without an error code, so
 * those come back as XR_E_TRANSIENT with libpq's text in err. A server older than PostgreSQL 12
 * is XR_E_CONFIG. On success *ret_reg receives a handle to free with registry_close.
 */
__attribute__((warn_unused_result)) xr_code registry_open(const char *conninfo,
                                                          const char *application_name,
                                                          registry **ret_reg, xr_error *err);
/* Close and free; accepts NULL; returns NULL. */
registry *registry_close(registry *reg);
/*
 * Make sure the connection is usable, reconnecting (once, with PQreset) if it is known to be
 * lost. XR_E_TRANSIENT when the server cannot be reached. A connection that died while idle is
 * only noticed by the next command, so XR_OK here does not promise the next call succeeds.
 */
__attribute__((warn_unused_result)) xr_code registry_ensure_connected(registry *reg,
                                                                      xr_error *err);

/*
 * Apply, in order and each in its own transaction, the migrations not yet recorded in
 * public.schema_migrations (name, sha256, applied_at), holding a session advisory lock so that
 * concurrent callers serialize. A recorded migration whose sha256 differs from the given text is
 * an XR_E_CONFIG error naming it ("migration \"0001_init.sql\" was changed after it was
 * applied"); so is a recorded migration missing from the list. Migration names must be strictly
 * increasing (bytewise), else XR_E_INTERNAL before any database work. A migration must not
 * contain BEGIN/COMMIT or commands that cannot run inside a transaction block; one that fails is
 * rolled back whole and stops the run (the earlier ones stay applied). The lock is released on
 * every path. *ret_applied (optional) receives how many were applied now, on success only.
 */
__attribute__((warn_unused_result)) xr_code registry_migrate(registry *reg,
                                                             const registry_migration *migrations,
                                                             size_t n_migrations,
                                                             unsigned *ret_applied, xr_error *err);

/*
 * One received DICOM instance. Strings are UTF-8; "" (or NULL) means absent and is stored as SQL
 * NULL, except patient_id and issuer_of_patient_id, where "" is a valid key (the anonymous
 * patient). Unsigned counts (rows ... samples_per_pixel) use 0 for absent; rows, columns and
 * number_of_frames must fit in int32 (XR_E_INPUT otherwise).
 */
typedef struct registry_instance {
    const char *sop_instance_uid;    /* required, at most XR_UID_MAX (64) characters */
    const char *sop_class_uid;       /* required, ditto */
    const char *series_instance_uid; /* required, ditto */
    const char *study_instance_uid;  /* required, ditto */
    const char *transfer_syntax_uid;
    const char *patient_id;
    const char *issuer_of_patient_id;
    const char *patient_name;
    const char *patient_birth_date; /* DICOM DA "YYYYMMDD" (or legacy "YYYY.MM.DD") or "";
                                       invalid dates are stored as NULL, not refused */
    const char *patient_sex;
    const char *study_date; /* DA */
    const char *study_time; /* TM "HHMMSS.FFFFFF" or a prefix of it */
    const char *accession_number;
    const char *study_description;
    const char *series_description;
    const char *modality;
    const char *body_part_examined;
    const char *view_position;
    const char *laterality;
    const char *manufacturer;
    const char *institution_name;
    const char *photometric_interpretation;
    int32_t series_number;   /* -1: absent */
    int32_t instance_number; /* -1: absent */
    uint32_t rows;
    uint32_t columns;
    uint32_t number_of_frames;
    uint16_t bits_allocated;
    uint16_t bits_stored;
    uint16_t samples_per_pixel;
    uint64_t n_bytes;        /* size of the received file */
    int64_t received_at_us;  /* Unix time in microseconds when the C-STORE was acknowledged;
                                0: the database's now(); negative: XR_E_INPUT */
    const char *calling_ae;
    const char *called_ae;
    const char *peer_host;
    const char *spool_id;    /* the spool's name for the object */
} registry_instance;

/*
 * Upsert patient, study, series and instance in one transaction, together with the audit rows
 * the triggers write, tagging the transaction with actor (application context such as
 * "dicom:CR01@10.0.0.5" or "cli:alice"). Idempotent on SOP Instance UID: the same object again
 * changes nothing and writes no audit row; *ret_inserted (optional, written on success) tells
 * whether the instance row is new. Header fields that changed since the first reception are
 * updated (audited); the first reception's received_at, calling/called AE, peer and spool id are
 * kept. Patient, study and series rows take changed values too, but an absent value ("") never
 * erases one another instance provided. actor may be NULL (recorded as NULL).
 * Missing or too long required UIDs and out-of-range numbers are XR_E_INPUT before the database
 * is touched. On a database error the transaction is rolled back; serialization failures,
 * deadlocks and unique-key races are retried a few times inside, a connection that died while
 * idle once. If a COMMIT's acknowledgement is lost and the retry finds the row, *ret_inserted is
 * false although this call inserted it.
 */
__attribute__((warn_unused_result)) xr_code registry_instance_upsert(registry *reg,
                                                                     const registry_instance *inst,
                                                                     const char *actor,
                                                                     bool *ret_inserted,
                                                                     xr_error *err);

/* An object refused by the SCP or the pipeline; kept in the spool's rejected area. */
typedef struct registry_rejection {
    const char *spool_id;         /* required, unique: recording twice is a no-op */
    int64_t received_at_us;
    const char *calling_ae;
    const char *called_ae;
    const char *peer_host;
    const char *sop_class_uid;    /* "" when unknown */
    const char *sop_instance_uid; /* "" when unknown */
    uint16_t dimse_status;        /* status sent to the peer, 0 if rejected after Success */
    const char *reason;           /* one line */
    const char *path;             /* where the object is kept */
} registry_rejection;

/*
 * Record a rejection (audited, in one transaction); idempotent on spool_id (the first record
 * stays). XR_E_INPUT if spool_id is missing; received_at_us as in registry_instance; errors and
 * retries as registry_instance_upsert.
 */
__attribute__((warn_unused_result)) xr_code registry_rejection_record(registry *reg,
                                                                      const registry_rejection *rej,
                                                                      const char *actor,
                                                                      xr_error *err);

/* ----------------------------------------------------------------------------------------------
 * Models and predictions (migration 0002). Every write below runs in one transaction that first
 * takes the audit chain's lock (xreg.audit_serialize), so writers never deadlock one another and
 * a study summary always sees the predictions committed before it.
 */

/* The registry's tasks, as in the model metadata key xreg.task. */
#define REGISTRY_TASK_BODY_PART "body_part"
#define REGISTRY_TASK_IMPLANT "implant"
#define REGISTRY_TASK_FRACTURE "fracture"

/* A model version: an ONNX file and what its metadata says. */
typedef struct registry_model {
    const char *name;   /* required, e.g. "bodypart-efficientnet" */
    const char *sha256; /* required: 64 lower-case hex digits, the ONNX file's SHA-256 */
    const char *task;   /* required: REGISTRY_TASK_* */
    const char *const *labels; /* class labels in output order (xreg.labels), n_labels >= 2 */
    size_t n_labels;
    /* implant/fracture: the label that means "present". NULL: the one label among present,
     * yes, positive, true, 1, implant, fracture, abnormal (case-insensitive), else XR_E_INPUT.
     * Must be NULL for body_part. */
    const char *positive_label;
    const char *version;       /* xreg.version, may be NULL */
    const char *metadata_json; /* all metadata_props as a JSON object, may be NULL ("{}") */
} registry_model;

/*
 * Register a model version, idempotent on (name, sha256): a known one is returned unchanged
 * unless its labels or metadata differ (then updated, audited). *ret_model_id (optional)
 * receives its id for registry_prediction.model_id. XR_E_INPUT for a missing name, a sha256
 * that is not 64 hex digits, an unknown task, fewer than 2 labels, more than
 * REGISTRY_MODEL_LABELS_MAX, an empty or duplicate label, an unresolvable positive label, or
 * metadata that is not a JSON object. Errors and retries as registry_instance_upsert.
 */
#define REGISTRY_MODEL_LABELS_MAX 1000
__attribute__((warn_unused_result)) xr_code registry_model_upsert(registry *reg,
                                                                  const registry_model *m,
                                                                  const char *actor,
                                                                  int64_t *ret_model_id,
                                                                  xr_error *err);

/* One model's output for one instance. */
typedef struct registry_prediction {
    int64_t model_id;            /* from registry_model_upsert */
    const float *probabilities;  /* one per model label, in label order, each in [0, 1] */
    size_t n_probabilities;
    const char *preprocessing;   /* fingerprint of the preprocessing, may be NULL */
    /* implant/fracture: decide "positive" when its probability >= threshold, in (0, 1)
     * (migration 0005); 0: the most probable class. Ignored for body_part. */
    double threshold;
} registry_prediction;

/*
 * Upsert the instance (as registry_instance_upsert) and its predictions (one row per instance
 * and model: label = the most probable class, confidence = its probability, idempotent: the
 * same result again writes nothing), then recompute the study summary, all in one transaction.
 * n_preds may be 0. XR_E_INPUT for a probability that is NaN or outside [0, 1], a count that
 * differs from the model's labels (SQLSTATE 22023) or an unknown model (23503).
 */
__attribute__((warn_unused_result)) xr_code
registry_instance_upsert_predictions(registry *reg, const registry_instance *inst,
                                     const registry_prediction *preds, size_t n_preds,
                                     const char *actor, bool *ret_inserted, xr_error *err);

/* Why an instance could not be (fully) classified (xreg.classification_issue, migration 0005). */
typedef struct registry_classify_issue {
    const char *task;        /* REGISTRY_TASK_* of the model that failed; NULL: none could run */
    const char *reason_code; /* required, [a-z_]{1,32}: unsupported, limit, no_pixels,
                              * decode_error, model_error */
    const char *reason;      /* required, one line */
} registry_classify_issue;

/*
 * registry_instance_upsert_predictions plus, when issue is not NULL, the instance's
 * classification issue (upserted: the newest reason wins; audited), all in one transaction.
 * XR_E_INPUT for an issue without reason code or reason, or a reason code the table refuses
 * (SQLSTATE 23514).
 */
__attribute__((warn_unused_result)) xr_code
registry_instance_upsert_classified(registry *reg, const registry_instance *inst,
                                    const registry_prediction *preds, size_t n_preds,
                                    const registry_classify_issue *issue, const char *actor,
                                    bool *ret_inserted, xr_error *err);

/*
 * Upsert predictions for an instance registered earlier and recompute its study summary, in
 * one transaction. XR_E_INPUT (SQLSTATE 23503) if the instance is not registered.
 */
__attribute__((warn_unused_result)) xr_code
registry_predictions_record(registry *reg, const char *sop_instance_uid,
                            const registry_prediction *preds, size_t n_preds, const char *actor,
                            xr_error *err);

/* ----------------------------------------------------------------------------------------------
 * Audit chain verification (registry-audit.c)
 */

/* A chain position remembered outside the database: seq and the hex SHA-256 it had. */
typedef struct registry_audit_anchor {
    int64_t seq;
    char hash[65];
} registry_audit_anchor;

typedef struct registry_audit_report {
    bool ok;              /* the whole chain verified */
    int64_t n_rows;       /* rows checked */
    int64_t head_seq;     /* seq of the last row (0: empty chain) */
    char head_hash[65];   /* its hash in hex ("" for an empty chain) */
    /* The first broken link when !ok: the row's seq and id (0 when the problem is not one row,
     * e.g. the chain head), and what is wrong. */
    int64_t broken_seq;
    int64_t broken_id;
    char problem[XR_ERROR_MSG_BYTES];
} registry_audit_report;

/*
 * Recompute the whole audit hash chain in C (OpenSSL SHA-256 over the canonical form described
 * in docs/registry.md) in one read-only snapshot, and compare: every seq present once and in
 * order, each prev_hash equal to the previous row's hash, each hash equal to the recomputed one,
 * the chain head (xreg.audit_chain_head) at the last row, and when anchor is not NULL the row at
 * anchor->seq still carrying anchor->hash. Returns XR_OK when the check ran (the verdict is in
 * *ret); database errors as elsewhere. Needs SELECT on xreg.audit_log and xreg.audit_chain_head.
 */
__attribute__((warn_unused_result)) xr_code registry_audit_verify(registry *reg,
                                                                  const registry_audit_anchor *anchor,
                                                                  registry_audit_report *ret,
                                                                  xr_error *err);

/* ----------------------------------------------------------------------------------------------
 * Reading and reviewing (registry-query.c), for xregctl: results come back as a plain table so
 * that no libpq type leaves the room.
 */

typedef struct registry_rows registry_rows;

/* How a column's text should be shown as JSON. */
typedef enum registry_kind {
    REGISTRY_KIND_TEXT,
    REGISTRY_KIND_NUMBER, /* integer, float, numeric */
    REGISTRY_KIND_BOOL,   /* "t" / "f" */
    REGISTRY_KIND_JSON,   /* json, jsonb: the text is JSON already */
    REGISTRY_KIND_MAX,
} registry_kind;

/*
 * Run one read-only statement with text parameters (NULL = SQL NULL) in its own READ ONLY
 * transaction and return all rows. *ret_rows is freed with registry_rows_free. Errors as
 * elsewhere, with the SQLSTATE.
 */
__attribute__((warn_unused_result)) xr_code registry_select(registry *reg, const char *sql,
                                                            int n_params,
                                                            const char *const *params,
                                                            registry_rows **ret_rows,
                                                            xr_error *err);
size_t registry_rows_count(const registry_rows *rows);
size_t registry_rows_columns(const registry_rows *rows);
const char *registry_rows_name(const registry_rows *rows, size_t col);
registry_kind registry_rows_kind(const registry_rows *rows, size_t col);
/* The value's text, NULL for SQL NULL; valid until registry_rows_free. */
const char *registry_rows_value(const registry_rows *rows, size_t row, size_t col);
/* Accepts NULL; returns NULL. */
registry_rows *registry_rows_free(registry_rows *rows);

/* A reviewer's verified label (xreg.record_label): exactly one of the two UIDs. */
typedef struct registry_label {
    const char *sop_instance_uid;   /* label one instance, or */
    const char *study_instance_uid; /* the whole study */
    const char *task;               /* REGISTRY_TASK_* */
    const char *value;              /* body part label or DICOM term; present/absent (yes/no) */
    const char *reason;             /* required: why */
} registry_label;

typedef struct registry_label_result {
    int64_t label_id;
    char value[64];          /* the value stored (normalized: "chest", "present") */
    char replaced_value[256]; /* what it replaced, "" if nothing */
    char replaced_source[16]; /* "human", "prediction" or "" */
} registry_label_result;

/*
 * Record a label as the connected role (needs xreg_reviewer), tagged with actor, in one
 * transaction that also recomputes the study summary. XR_E_INPUT (SQLSTATE 22023) for an
 * unknown task, body part or value, a missing reason, or both/neither UIDs; XR_E_INPUT
 * (P0002) for an unknown instance or study; XR_E_CONFIG (42501) without the reviewer role.
 */
__attribute__((warn_unused_result)) xr_code registry_label_record(registry *reg,
                                                                  const registry_label *label,
                                                                  const char *actor,
                                                                  registry_label_result *ret,
                                                                  xr_error *err);

/*
 * Whether the server named by conninfo accepts connections (libpq's PQping: no login is made),
 * waiting at most timeout_s. For health checks. Any thread.
 */
bool registry_ping(const char *conninfo, unsigned timeout_s);

/*
 * Classify a SQLSTATE (5 characters) as the xr_code a caller should act on (see the table at the
 * top). "00000" is XR_OK; anything that is not five digits or upper-case letters is
 * XR_E_INTERNAL. Pure function, any thread.
 */
xr_code registry_sqlstate_code(const char *sqlstate);

#ifdef __cplusplus
}
#endif
