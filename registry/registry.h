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
 * Thread rule: a registry handle is used by one thread at a time (one PGconn per worker).
 * Errors: XR_E_TRANSIENT when retrying may work (connection lost or refused, SQLSTATE class 08,
 * 40001, 40P01, class 53, 57P01-57P03); other database errors are permanent (XR_E_INPUT for data
 * errors such as class 22/23, XR_E_INTERNAL otherwise), with err->sqlstate set.
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
 * Connect with a libpq connection string (may be "" for libpq's defaults/environment).
 * application_name is shown in pg_stat_activity. A connection that fails returns XR_E_TRANSIENT
 * (the server may come back) and no handle; a malformed conninfo returns XR_E_CONFIG.
 */
__attribute__((warn_unused_result)) xr_code registry_open(const char *conninfo,
                                                          const char *application_name,
                                                          registry **ret_reg, xr_error *err);
/* Close and free; accepts NULL; returns NULL. */
registry *registry_close(registry *reg);
/*
 * Make sure the connection is usable, reconnecting (once) if it was lost. XR_E_TRANSIENT when
 * the server cannot be reached.
 */
__attribute__((warn_unused_result)) xr_code registry_ensure_connected(registry *reg,
                                                                      xr_error *err);

/*
 * Apply, in order and each in its own transaction, the migrations not yet recorded in
 * public.schema_migrations (name, sha256, applied_at), holding a session advisory lock so that
 * concurrent callers serialize. A recorded migration whose sha256 differs from the given text is
 * an XR_E_CONFIG error naming it ("migration \"0001_init.sql\" was changed after it was
 * applied"); so is a recorded migration missing from the list. Migration names must be strictly
 * increasing. *ret_applied (optional) receives how many were applied now.
 */
__attribute__((warn_unused_result)) xr_code registry_migrate(registry *reg,
                                                             const registry_migration *migrations,
                                                             size_t n_migrations,
                                                             unsigned *ret_applied, xr_error *err);

/* One received DICOM instance; strings may be "" (stored as NULL) but never NULL. */
typedef struct registry_instance {
    const char *sop_instance_uid;    /* required */
    const char *sop_class_uid;       /* required */
    const char *series_instance_uid; /* required */
    const char *study_instance_uid;  /* required */
    const char *transfer_syntax_uid;
    const char *patient_id;
    const char *issuer_of_patient_id;
    const char *patient_name;
    const char *patient_birth_date; /* DICOM DA "YYYYMMDD" or ""; invalid dates stored as NULL */
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
    int64_t received_at_us;  /* Unix time in microseconds when the C-STORE was acknowledged */
    const char *calling_ae;
    const char *called_ae;
    const char *peer_host;
    const char *spool_id;    /* the spool's name for the object */
} registry_instance;

/*
 * Upsert patient, study, series and instance in one transaction, together with the audit rows
 * the triggers write, tagging the transaction with actor (application context such as
 * "dicom:CR01@10.0.0.5" or "cli:alice"). Idempotent on SOP Instance UID: the same object again
 * changes nothing and writes no audit row; *ret_inserted (optional) tells whether the instance
 * row is new. Header fields that changed since the first reception are updated (audited); the
 * first reception's received_at, calling AE and peer are kept.
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

/* Record a rejection (audited, in one transaction); idempotent on spool_id. */
__attribute__((warn_unused_result)) xr_code registry_rejection_record(registry *reg,
                                                                      const registry_rejection *rej,
                                                                      const char *actor,
                                                                      xr_error *err);

/* Classify a SQLSTATE (5 characters) as the xr_code a caller should act on. Pure function. */
xr_code registry_sqlstate_code(const char *sqlstate);

#ifdef __cplusplus
}
#endif
