/*
 * Reading the registry for people (xregctl studies, export-dataset) and recording reviewers'
 * labels. Results are copied out of libpq into a registry_rows table so that callers never see
 * a PGresult.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xr-error.h"

#include "registry-internal.h"
#include "registry.h"

/* Type OIDs from the server's pg_type.dat; stable since they are part of the wire protocol. */
#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26
#define OID_JSON 114
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_NUMERIC 1700
#define OID_JSONB 3802

struct registry_rows {
    PGresult *res;
    registry_kind *kinds;
};

static registry_kind kind_of(Oid t)
{
    switch (t) {
    case OID_BOOL:
        return REGISTRY_KIND_BOOL;
    case OID_INT8:
    case OID_INT2:
    case OID_INT4:
    case OID_OID:
    case OID_FLOAT4:
    case OID_FLOAT8:
    case OID_NUMERIC:
        return REGISTRY_KIND_NUMBER;
    case OID_JSON:
    case OID_JSONB:
        return REGISTRY_KIND_JSON;
    default:
        return REGISTRY_KIND_TEXT;
    }
}

xr_code registry_select(registry *reg, const char *sql, int n_params, const char *const *params,
                        registry_rows **ret_rows, xr_error *err)
{
    assert(reg && sql && ret_rows);
    if (!reg || !sql || !ret_rows)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_select");
    xr_code rc = registry_ensure_connected(reg, err);
    if (rc)
        return rc;
    registry_rollback(reg);
    PGresult *res = NULL;
    rc = registry_exec(reg, "BEGIN READ ONLY", NULL, err);
    if (rc == XR_OK)
        rc = registry_exec_params(reg, sql, n_params, params, &res, err);
    registry_rollback(reg);
    if (rc)
        return rc;
    registry_rows *rows = calloc(1, sizeof(*rows));
    int n_cols = PQnfields(res);
    registry_kind *kinds = calloc(n_cols > 0 ? (size_t)n_cols : 1, sizeof(*kinds));
    if (!rows || !kinds) {
        free(rows);
        free(kinds);
        PQclear(res);
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    }
    for (int c = 0; c < n_cols; c++)
        kinds[c] = kind_of(PQftype(res, c));
    rows->res = res;
    rows->kinds = kinds;
    *ret_rows = rows;
    return XR_OK;
}

size_t registry_rows_count(const registry_rows *rows)
{
    return rows ? (size_t)PQntuples(rows->res) : 0;
}

size_t registry_rows_columns(const registry_rows *rows)
{
    return rows ? (size_t)PQnfields(rows->res) : 0;
}

const char *registry_rows_name(const registry_rows *rows, size_t col)
{
    return col < registry_rows_columns(rows) ? PQfname(rows->res, (int)col) : NULL;
}

registry_kind registry_rows_kind(const registry_rows *rows, size_t col)
{
    return col < registry_rows_columns(rows) ? rows->kinds[col] : REGISTRY_KIND_TEXT;
}

const char *registry_rows_value(const registry_rows *rows, size_t row, size_t col)
{
    if (row >= registry_rows_count(rows) || col >= registry_rows_columns(rows) ||
        PQgetisnull(rows->res, (int)row, (int)col))
        return NULL;
    return PQgetvalue(rows->res, (int)row, (int)col);
}

registry_rows *registry_rows_free(registry_rows *rows)
{
    if (rows) {
        PQclear(rows->res);
        free(rows->kinds);
        free(rows);
    }
    return NULL;
}

static const char *null_if_empty(const char *s)
{
    return s && *s ? s : NULL;
}

xr_code registry_label_record(registry *reg, const registry_label *label, const char *actor,
                              registry_label_result *ret, xr_error *err)
{
    assert(reg && label);
    if (!reg || !label)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_label_record");
    xr_code rc = registry_ensure_connected(reg, err);
    if (rc)
        return rc;
    registry_rollback(reg);
    const char *actor_param[] = {actor ? actor : ""};
    const char *params[] = {null_if_empty(label->sop_instance_uid),
                            null_if_empty(label->study_instance_uid), label->task, label->value,
                            label->reason};
    PGresult *res = NULL;
    rc = registry_exec(reg, "BEGIN", NULL, err);
    if (rc == XR_OK)
        rc = registry_exec_params(reg, "SELECT set_config('xreg.actor', $1, true)", 1,
                                  actor_param, NULL, err);
    if (rc == XR_OK)
        rc = registry_exec_params(reg,
                                  "SELECT label_id, replaced_value, replaced_source"
                                  " FROM xreg.record_label($1, $2, $3, $4, $5)",
                                  5, params, &res, err);
    /* The stored (normalized) value: a later statement, which sees the function's insert. */
    PGresult *vres = NULL;
    if (rc == XR_OK && PQntuples(res) == 1) {
        const char *id[] = {PQgetvalue(res, 0, 0)};
        rc = registry_exec_params(reg, "SELECT value FROM xreg.labels WHERE label_ref = $1", 1,
                                  id, &vres, err);
    }
    if (rc == XR_OK)
        rc = registry_exec(reg, "COMMIT", NULL, err);
    if (rc == XR_OK && (PQntuples(res) != 1 || !vres || PQntuples(vres) != 1))
        rc = xr_error_set(err, XR_E_INTERNAL, "xreg.record_label returned no row");
    if (rc) {
        PQclear(res);
        PQclear(vres);
        registry_rollback(reg);
        xr_error_prefix(err, "could not record the label: ");
        return rc;
    }
    if (ret) {
        *ret = (registry_label_result){.label_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10)};
        snprintf(ret->value, sizeof(ret->value), "%s", PQgetvalue(vres, 0, 0));
        snprintf(ret->replaced_value, sizeof(ret->replaced_value), "%s", PQgetvalue(res, 0, 1));
        snprintf(ret->replaced_source, sizeof(ret->replaced_source), "%s",
                 PQgetvalue(res, 0, 2));
    }
    PQclear(res);
    PQclear(vres);
    return XR_OK;
}
