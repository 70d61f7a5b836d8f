/*
 * Schema migrations: apply the numbered SQL files embedded in the binary, in order, each exactly
 * once, and refuse to run against a database whose recorded migrations differ from ours.
 *
 * DESIGN: several xregd instances (or xregctl migrate beside a running xregd) may start at once.
 * Each takes the same session advisory lock before even creating public.schema_migrations (two
 * concurrent CREATE TABLE IF NOT EXISTS can fail on the catalog's unique index), then reads what
 * is recorded and applies the rest, each migration and its schema_migrations row in one
 * transaction. The second process waits on the lock and then finds nothing left to do. The lock
 * is released on every path; if the connection dies, the server releases it with the session.
 */
#include <assert.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xr-error.h"
#include "xr-log.h"

#include "registry-internal.h"
#include "registry.h"

/* pg_advisory_lock key shared by every xreg process: "xreg_mig" in ASCII. */
#define MIGRATE_LOCK_KEY "8679110926553409895"

#define SHA256_HEX_BYTES 65

static const char create_table_sql[] = "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
                                       " name text PRIMARY KEY,"
                                       " sha256 text NOT NULL,"
                                       " applied_at timestamptz NOT NULL DEFAULT now())";

static xr_code sha256_hex(const char *text, char hex[SHA256_HEX_BYTES], xr_error *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(text, strlen(text), md, &n, EVP_sha256(), NULL) || n != 32)
        return xr_error_set(err, XR_E_INTERNAL, "could not compute SHA-256 with OpenSSL");
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < n; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 0xf];
    }
    hex[2 * n] = '\0';
    return XR_OK;
}

static xr_code check_list(const registry_migration *migrations, size_t n, xr_error *err)
{
    if (n > 0 && !migrations)
        return xr_error_set(err, XR_E_INTERNAL, "migration list is NULL but has %zu entries", n);
    for (size_t i = 0; i < n; i++) {
        if (!migrations[i].name || !*migrations[i].name || !migrations[i].sql)
            return xr_error_set(err, XR_E_INTERNAL, "migration %zu has no name or no text", i);
        if (i > 0 && strcmp(migrations[i - 1].name, migrations[i].name) >= 0) {
            xr_error_set(err, XR_E_INTERNAL, "migration names are not strictly increasing");
            xr_error_detail(err, "\"%s\" comes after \"%s\"", migrations[i].name,
                            migrations[i - 1].name);
            return XR_E_INTERNAL;
        }
    }
    return XR_OK;
}

/*
 * Compare what the database recorded (rows of name, sha256 sorted bytewise) with the list.
 * Sets recorded[i] for each migration already applied. Every recorded row must be in the list
 * with the same checksum.
 */
static xr_code check_recorded(const PGresult *res, const registry_migration *migrations, size_t n,
                              bool *recorded, xr_error *err)
{
    int n_rows = PQntuples(res);
    size_t i = 0;
    for (int row = 0; row < n_rows; row++) {
        const char *name = PQgetvalue(res, row, 0);
        const char *sha = PQgetvalue(res, row, 1);
        while (i < n && strcmp(migrations[i].name, name) < 0)
            i++;
        if (i == n || strcmp(migrations[i].name, name) != 0) {
            xr_error_set(err, XR_E_CONFIG,
                         "migration \"%s\" is recorded in the database but unknown to this "
                         "version of xreg",
                         name);
            xr_error_detail(err, "the database was migrated by a newer or different xreg; "
                                 "public.schema_migrations lists it");
            return XR_E_CONFIG;
        }
        char hex[SHA256_HEX_BYTES];
        xr_code rc = sha256_hex(migrations[i].sql, hex, err);
        if (rc)
            return rc;
        if (strcmp(hex, sha) != 0) {
            xr_error_set(err, XR_E_CONFIG, "migration \"%s\" was changed after it was applied",
                         name);
            xr_error_detail(err,
                            "recorded sha256 %s, this version's %s; released migrations "
                            "must never be edited, add a new one instead",
                            sha, hex);
            return XR_E_CONFIG;
        }
        recorded[i] = true;
        i++;
    }
    return XR_OK;
}

static xr_code apply_one(registry *reg, const registry_migration *m, xr_error *err)
{
    char hex[SHA256_HEX_BYTES];
    xr_code rc = sha256_hex(m->sql, hex, err);
    if (rc)
        return rc;
    rc = registry_exec(reg, "BEGIN", NULL, err);
    if (rc == XR_OK)
        rc = registry_exec(reg, m->sql, NULL, err);
    /* A COMMIT or ROLLBACK inside the file would split it from its schema_migrations row. */
    if (rc == XR_OK && PQtransactionStatus(reg->conn) != PQTRANS_INTRANS)
        rc = xr_error_set(err, XR_E_INTERNAL, "the migration ended the transaction itself");
    if (rc == XR_OK) {
        const char *params[] = {m->name, hex};
        rc = registry_exec_params(reg,
                                  "INSERT INTO public.schema_migrations (name, sha256) "
                                  "VALUES ($1, $2)",
                                  2, params, NULL, err);
    }
    if (rc == XR_OK)
        rc = registry_exec(reg, "COMMIT", NULL, err);
    if (rc) {
        registry_rollback(reg);
        xr_error_prefix(err, "could not apply migration \"%s\": ", m->name);
        if (err && strcmp(err->sqlstate, "42501") == 0)
            xr_error_detail(err, "this database role may not change the schema (xreg_writer "
                                 "cannot); run \"xregctl migrate\" as the schema owner, see "
                                 "docs/registry.md \"Roles\"");
        return rc;
    }
    xr_log_debug("registry: applied migration \"%s\" (sha256 %s)", m->name, hex);
    return XR_OK;
}

xr_code registry_migrate(registry *reg, const registry_migration *migrations, size_t n_migrations,
                         unsigned *ret_applied, xr_error *err)
{
    assert(reg);
    if (!reg)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_migrate");
    xr_code rc = check_list(migrations, n_migrations, err);
    if (rc)
        return rc;
    rc = registry_ensure_connected(reg, err);
    if (rc)
        return rc;
    registry_rollback(reg);

    bool locked = false;
    unsigned n_applied = 0;
    PGresult *res = NULL;
    bool *recorded = calloc(n_migrations > 0 ? n_migrations : 1, sizeof(*recorded));
    if (!recorded)
        return xr_error_set(err, XR_E_NOMEM, "out of memory checking %zu migrations", n_migrations);

    rc = registry_exec(reg, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", NULL, err);
    if (rc) {
        xr_error_prefix(err, "could not take the migration lock: ");
        goto done;
    }
    locked = true;
    /* Only when missing: CREATE ... IF NOT EXISTS still needs CREATE on schema public, which
     * the daemon's least-privilege role (xreg_writer) does not have. */
    rc = registry_exec(reg,
                       "SELECT to_regclass('public.schema_migrations') IS NULL", &res, err);
    if (rc == XR_OK && strcmp(PQgetvalue(res, 0, 0), "t") == 0)
        rc = registry_exec(reg, create_table_sql, NULL, err);
    PQclear(res);
    res = NULL;
    if (rc) {
        xr_error_prefix(err, "could not create public.schema_migrations: ");
        goto done;
    }
    rc = registry_exec(reg,
                       "SELECT name, sha256 FROM public.schema_migrations "
                       "ORDER BY name COLLATE \"C\"",
                       &res, err);
    if (rc) {
        xr_error_prefix(err, "could not read public.schema_migrations: ");
        goto done;
    }
    rc = check_recorded(res, migrations, n_migrations, recorded, err);
    if (rc)
        goto done;
    for (size_t i = 0; i < n_migrations; i++) {
        if (recorded[i])
            continue;
        rc = apply_one(reg, &migrations[i], err);
        if (rc)
            goto done;
        n_applied++;
    }

done:
    PQclear(res);
    free(recorded);
    if (locked && !registry_conn_is_bad(reg)) {
        registry_rollback(reg);
        xr_error unlock_err = XR_ERROR_INIT;
        PGresult *ures = NULL;
        xr_code urc = registry_exec(reg, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")", &ures,
                                    &unlock_err);
        bool released =
            urc == XR_OK && PQntuples(ures) == 1 && strcmp(PQgetvalue(ures, 0, 0), "t") == 0;
        PQclear(ures);
        /* A lock still held would stall every other migrator until this session ends. */
        if (!released && rc == XR_OK) {
            if (urc == XR_OK)
                xr_error_set(&unlock_err, XR_E_INTERNAL, "the lock was not held");
            xr_error_prefix(&unlock_err, "could not release the migration lock: ");
            rc = unlock_err.code;
            if (err)
                *err = unlock_err;
        }
    }
    if (rc == XR_OK && ret_applied)
        *ret_applied = n_applied;
    if (rc == XR_OK)
        xr_log_debug("registry: %u of %zu migrations applied now", n_applied, n_migrations);
    return rc;
}
