/*
 * Pseudonymization of patient identifiers before they reach the registry (configuration keys
 * pseudonymize.*): each of Patient ID, Patient's Name and Accession Number is kept, dropped
 * (stored as absent) or replaced by HMAC-SHA256 under a secret key read from a file.
 *
 *     pseudonymizer *ps;
 *     if (pseudonymizer_new(cfg, &ps, &err)) ... fail start-up with err.msg;
 *     pseudonymizer_apply(ps, &header);   (in each worker, before the upsert)
 *     ps = pseudonymizer_free(ps);
 *
 * A pseudonym is the lower-case hex of HMAC-SHA256(key, "xreg-pseudonym-v1" NUL field NUL
 * issuer NUL value), cut to the field's DICOM length: 32 digits for Patient ID (LO), 16 for
 * Accession Number (SH) and Patient's Name. The issuer (Issuer of Patient ID, kept) enters only
 * the Patient ID's, so one ID from two issuers stays two patients. The same input and key always
 * give the same pseudonym; an empty value stays empty (the anonymous patient stays anonymous).
 *
 * Thread rule: immutable after pseudonymizer_new; apply may run in many threads at once.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "dicom.h"
#include "xr-error.h"

typedef struct pseudonymizer pseudonymizer;

/*
 * Build from the configuration, reading and checking the key file when a field is hmac: it
 * must be a regular file (not a symlink) owned by root or by this process's user, with no
 * group or other permissions, holding XR_PSEUDONYM_KEY_MIN_BYTES to XR_PSEUDONYM_KEY_MAX_BYTES
 * (trailing newlines are not part of the key). XR_E_CONFIG with the path and the fix otherwise.
 */
__attribute__((warn_unused_result)) xr_code pseudonymizer_new(const xregd_config *cfg,
                                                              pseudonymizer **ret,
                                                              xr_error *err);
/* Accepts NULL; returns NULL. The key is wiped. */
pseudonymizer *pseudonymizer_free(pseudonymizer *ps);
/* Whether any field is changed (false: apply is a no-op). */
bool pseudonymizer_is_active(const pseudonymizer *ps);
/* Replace the configured fields of h in place. ps may be NULL (no-op). */
void pseudonymizer_apply(const pseudonymizer *ps, dicom_header *h);
/* One line for logs and check-config, e.g. "patient_id hmac, patient_name drop, ...". */
void pseudonymizer_describe(const pseudonymizer *ps, char *buf, size_t n);
