/*
 * registry/ private declarations shared by registry-*.c: the handle, libpq result helpers and
 * error conversion. Nothing here is part of the public API.
 *
 * Thread rule: as registry.h, a handle and everything reached from it belong to one thread at a
 * time.
 */
#pragma once

#include <libpq-fe.h>
#include <stdbool.h>

#include "xr-error.h"

#include "registry.h"

/* SQLSTATE values the room tests for by name (errcodes.h of the server). */
#define REGISTRY_SQLSTATE_UNIQUE_VIOLATION "23505"
#define REGISTRY_SQLSTATE_SERIALIZATION_FAILURE "40001"
#define REGISTRY_SQLSTATE_DEADLOCK_DETECTED "40P01"

/* How long a write transaction waits for a lock (the audit chain's, a row's) before giving up
 * with 55P03, which is XR_E_TRANSIENT. */
#define REGISTRY_LOCK_TIMEOUT "10s"

/* Oldest server the schema runs on: generated columns (12), EXECUTE FUNCTION (11). */
#define REGISTRY_MIN_SERVER_VERSION 120000

struct registry {
    PGconn *conn; /* never NULL while the handle lives; may be CONNECTION_BAD */
    /* The prepared statements of registry-upsert.c exist in the current session. A reconnect
     * (PQreset) starts a new session, which clears this. */
    bool prepared;
};

/*
 * Fill err from a failed command. res may be NULL (libpq could not even build a result). The
 * code comes from the SQLSTATE when the server sent one (err->sqlstate is then set); without one,
 * a broken connection is XR_E_TRANSIENT and anything else XR_E_INTERNAL. The message is the
 * server's primary message (or the first line of PQerrorMessage), the detail its DETAIL and HINT.
 * Callers add context with xr_error_prefix. Does not PQclear res.
 */
xr_code registry_error_from_result(registry *reg, const PGresult *res, xr_error *err);

/*
 * Run sql (no parameters; several statements allowed) and expect a command or row result.
 * On success *ret_res (if not NULL) receives the result, which the caller PQclears; otherwise the
 * result is cleared here. On failure err is filled as by registry_error_from_result.
 */
__attribute__((warn_unused_result)) xr_code registry_exec(registry *reg, const char *sql,
                                                          PGresult **ret_res, xr_error *err);

/* Like registry_exec for a statement prepared with registry_statements_prepare (text params). */
__attribute__((warn_unused_result)) xr_code
registry_exec_prepared(registry *reg, const char *stmt, int n_params, const char *const *values,
                       PGresult **ret_res, xr_error *err);

/* Like registry_exec with text parameters, for one-off statements (NULL value = SQL NULL). */
__attribute__((warn_unused_result)) xr_code registry_exec_params(registry *reg, const char *sql,
                                                                 int n_params,
                                                                 const char *const *values,
                                                                 PGresult **ret_res, xr_error *err);

/*
 * End any open transaction with ROLLBACK, best effort: used on error paths, where the error
 * already being reported matters more than this one. Does nothing on a broken connection (the
 * server rolls back when the session ends) or outside a transaction.
 */
void registry_rollback(registry *reg);

/* The connection is known to be broken (PQstatus CONNECTION_BAD). */
bool registry_conn_is_bad(const registry *reg);

/*
 * Whether a failed write transaction should be tried again at once: a serialization failure,
 * deadlock or unique-key race, or (on the first attempt only) a connection lost before the
 * outcome was known. attempt counts from 1.
 */
bool registry_should_retry(const registry *reg, const xr_error *err, unsigned attempt);

/* Prepare the statements the upsert and rejection functions use, once per session. */
__attribute__((warn_unused_result)) xr_code registry_statements_prepare(registry *reg,
                                                                        xr_error *err);
