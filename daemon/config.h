/*
 * xregd configuration: one YAML file, parsed with libyaml into a fresh xregd_config, validated
 * whole, then handed over. The schema is a table (config.c), one row per key.
 *
 *     xregd_config *cfg;
 *     if (config_load("/etc/xreg/xregd.yaml", &cfg, &err)) { print err.msg; exit(1); }
 *     ... cfg->dicom.port ...
 *     cfg = config_free(cfg);
 *
 * Thread rule: a loaded config is immutable; share it read-only.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

typedef struct xregd_config {
    char *state_dir;
    struct {
        char *ae_title;
        char *bind;
        int64_t port;
        int64_t max_associations;
        int64_t max_pdu_bytes;
        int64_t acse_timeout_s;
        int64_t dimse_timeout_s;
        int64_t max_object_bytes;
        int64_t stop_timeout_s;
    } dicom;
    struct {
        char *dir; /* resolved: never empty after load */
        int64_t max_bytes;
    } spool;
    struct {
        char *conninfo; /* "" = embedded cluster */
        char *embedded_user;
        int64_t retry_initial_ms;
        int64_t retry_max_ms;
    } database;
    struct {
        int64_t workers;
        int64_t threads_per_worker; /* OpenMP threads of each worker's inference sessions */
        int64_t batch_max;          /* objects classified together */
        int64_t batch_wait_ms;      /* how long a worker waits to fill a batch */
    } pipeline;
    struct {
        char *level;
    } log;
    struct {
        char *bind;
        int64_t port; /* 0 = off */
    } metrics;
    struct {
        int64_t max_rows;
        int64_t max_columns;
        int64_t max_frames;
        int64_t max_decoded_bytes;
        char *frames; /* "first" or "all" (dicom_frame_policy_from_string) */
    } pixels;
    struct {
        char *patient_id;       /* keep | drop | hmac */
        char *patient_name;     /* keep | drop | hmac */
        char *accession_number; /* keep | drop | hmac */
        char *key_file;         /* "" unless a field is hmac */
    } pseudonymize;
    /*
     * Classification models. A path is "" (task disabled) or, after load, absolute: a relative
     * path in the file is taken relative to the configuration file's folder.
     */
    struct {
        struct {
            char *path;
        } body_part;
        struct {
            char *path;
            char *threshold;        /* "" = the model's xreg.threshold */
            double threshold_value; /* parsed; NAN when threshold is "" */
        } implant;
        struct {
            char *path;
            char *threshold;
            double threshold_value;
            char *body_parts; /* comma-separated DICOM Body Part Examined terms */
        } fracture;
    } models;
    char *path; /* the file it was loaded from */
} xregd_config;

/*
 * Load and validate path. On error returns XR_E_CONFIG (or XR_E_IO / XR_E_NOMEM) with a message
 * "FILE:LINE:COLUMN: KEY: what is wrong (expected ...)". The result is freed with config_free.
 */
__attribute__((warn_unused_result)) xr_code config_load(const char *path, xregd_config **ret_cfg,
                                                        xr_error *err);
/* Same from a buffer; name is used in messages in place of the file name. */
__attribute__((warn_unused_result)) xr_code config_load_buffer(const char *data, size_t n,
                                                               const char *name,
                                                               xregd_config **ret_cfg,
                                                               xr_error *err);
/* A config with every default; NULL on OOM. */
xregd_config *config_new_default(void);
/* Accepts NULL; returns NULL. */
xregd_config *config_free(xregd_config *cfg);

/* Number of schema keys and the dotted path of key i (for the docs lint and check-config). */
size_t config_n_keys(void);
const char *config_key_path(size_t i);
/* Whether key i has the same value in a and b. */
bool config_key_equal(const xregd_config *a, const xregd_config *b, size_t i);
/* Whether key i can change on reload. */
bool config_key_reloadable(size_t i);
/*
 * Compare the non-reloadable keys of old and new; for each that differs, call fn with its path.
 * Returns the number of differing keys.
 */
size_t config_diff_non_reloadable(const xregd_config *old_cfg, const xregd_config *new_cfg,
                                  void (*fn)(void *userdata, const char *path), void *userdata);
