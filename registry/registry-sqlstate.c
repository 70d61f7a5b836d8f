/*
 * SQLSTATE -> xr_code: what a caller should do about a database error. The code decides, never
 * the message text (PostgreSQL Appendix A, src/backend/utils/errcodes.txt).
 */
#include <stdbool.h>
#include <string.h>

#include "registry.h"

static bool is_class(const char *sqlstate, const char *cls)
{
    return sqlstate[0] == cls[0] && sqlstate[1] == cls[1];
}

static bool is_sqlstate_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
}

xr_code registry_sqlstate_code(const char *sqlstate)
{
    if (!sqlstate || strlen(sqlstate) != 5)
        return XR_E_INTERNAL;
    for (size_t i = 0; i < 5; i++)
        if (!is_sqlstate_char(sqlstate[i]))
            return XR_E_INTERNAL;

    /* 00000 successful_completion: not an error at all. */
    if (strcmp(sqlstate, "00000") == 0)
        return XR_OK;

    /* Retrying later may work. */
    if (is_class(sqlstate, "08") ||       /* connection exception */
        is_class(sqlstate, "53") ||       /* insufficient resources: disk full, OOM, too
                                             many connections */
        strcmp(sqlstate, "40001") == 0 || /* serialization_failure */
        strcmp(sqlstate, "40P01") == 0 || /* deadlock_detected */
        strcmp(sqlstate, "57P01") == 0 || /* admin_shutdown */
        strcmp(sqlstate, "57P02") == 0 || /* crash_shutdown */
        strcmp(sqlstate, "57P03") == 0 || /* cannot_connect_now: starting up, recovery */
        strcmp(sqlstate, "57P05") == 0 || /* idle_session_timeout: session ended by the
                                             server's timer, the next one is fine */
        strcmp(sqlstate, "57014") == 0 || /* query_canceled: statement_timeout or
                                             pg_cancel_backend(), both passing */
        strcmp(sqlstate, "55P03") == 0)   /* lock_not_available: lock_timeout */
        return XR_E_TRANSIENT;

    /* The data was refused. */
    if (is_class(sqlstate, "22") || /* data exception: bad encoding, out of range */
        is_class(sqlstate, "23"))   /* integrity constraint violation */
        return XR_E_INPUT;

    /* The operator must act: wrong role, password, database or missing grants. Retrying does not
     * help and it is not a bug in xreg. */
    if (is_class(sqlstate, "28") ||       /* invalid authorization specification */
        strcmp(sqlstate, "3D000") == 0 || /* invalid_catalog_name: no such database */
        strcmp(sqlstate, "42501") == 0)   /* insufficient_privilege */
        return XR_E_CONFIG;

    return XR_E_INTERNAL;
}
