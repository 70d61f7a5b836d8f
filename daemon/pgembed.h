/*
 * The embedded PostgreSQL cluster used when database.conninfo is empty: a private cluster in
 * <state_dir>/postgresql, created on first use, listening only on a Unix socket in
 * <state_dir>/postgresql/run, with database "xreg" owned by superuser "xreg".
 *
 * initdb refuses to run as root, so when the caller is root the cluster's programs run as an
 * unprivileged user (database.embedded_user) that owns the cluster directory.
 *
 * Thread rule: call from the main thread before other threads start, and at exit.
 */
#pragma once

#include <stdbool.h>

#include "xr-error.h"

typedef struct pgembed pgembed;

/*
 * Create the cluster if needed, start it unless it already runs, make sure database "xreg"
 * exists. *ret_conninfo (malloc'ed, caller frees) is the libpq string to reach it. Errors name
 * the step and include the tail of the PostgreSQL log in the detail.
 */
__attribute__((warn_unused_result)) xr_code pgembed_start(const char *dir, const char *run_as,
                                                          pgembed **ret_pg, char **ret_conninfo,
                                                          xr_error *err);
/* Stop the cluster if pgembed_start started it; free. Accepts NULL; returns NULL. */
pgembed *pgembed_stop(pgembed *pg);
