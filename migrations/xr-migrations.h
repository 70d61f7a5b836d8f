/*
 * The schema migrations compiled into the binary from migrations/NNNN_*.sql (the generated
 * xr-migrations.c, made by migrations-embed.c at build time), in name order, for
 * registry_migrate():
 *
 *     if (registry_migrate(reg, xr_migrations, xr_n_migrations, &n_applied, &err)) ...;
 *
 * Read-only data with static storage: any thread may read it at any time.
 */
#pragma once

#include <stddef.h>

#include "registry.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const registry_migration xr_migrations[];
extern const size_t xr_n_migrations;

#ifdef __cplusplus
}
#endif
