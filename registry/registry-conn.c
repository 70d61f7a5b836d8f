/*
 * Connection handling: open/close, reconnect after a lost connection, running commands and
 * turning libpq failures into xr_error.
 *
 * DESIGN: one PGconn per handle, used by one thread at a time (libpq connections are not shared
 * between threads). A lost connection is noticed by the command that fails; the handle stays
 * usable and the next entry point calls registry_ensure_connected, which PQresets it (a new
 * session: prepared statements are re-created on demand). PQreset and PQconnectdbParams block
 * for at most connect_timeout (10 s unless the connection string says otherwise).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "xr-error.h"
#include "xr-log.h"

#include "registry-internal.h"
#include "registry.h"

/* Copy the first line of src (up to a newline) into dst, dropping trailing whitespace. */
static void copy_first_line(char *dst, size_t size, const char *src)
{
    size_t n = strcspn(src, "\n");
    while (n > 0 && (src[n - 1] == ' ' || src[n - 1] == '\t' || src[n - 1] == '\r'))
        n--;
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Append src to dst (size bytes) as one line: newlines and tabs become single spaces. */
static void append_flat(char *dst, size_t size, const char *src)
{
    size_t len = strlen(dst);
    bool space = len > 0;
    for (const char *p = src; *p && len + 1 < size; p++) {
        if (*p == '\n' || *p == '\t' || *p == '\r' || *p == ' ') {
            space = len > 0;
            continue;
        }
        if (space) {
            dst[len++] = ' ';
            space = false;
            if (len + 1 >= size)
                break;
        }
        dst[len++] = *p;
    }
    dst[len] = '\0';
}

/* libpq's multi-line message: first line into err->msg, the rest flattened into the detail. */
static void set_message_lines(xr_error *err, const char *text)
{
    if (!err)
        return;
    copy_first_line(err->msg, sizeof(err->msg), text);
    const char *rest = strchr(text, '\n');
    err->detail[0] = '\0';
    if (rest)
        append_flat(err->detail, sizeof(err->detail), rest + 1);
    if (err->msg[0] == '\0')
        strcpy(err->msg, "unknown libpq error");
}

bool registry_conn_is_bad(const registry *reg)
{
    return PQstatus(reg->conn) == CONNECTION_BAD;
}

xr_code registry_error_from_result(registry *reg, const PGresult *res, xr_error *err)
{
    const char *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    xr_code code;
    if (sqlstate && *sqlstate)
        code = registry_sqlstate_code(sqlstate);
    else if (registry_conn_is_bad(reg))
        code = XR_E_TRANSIENT; /* lost without a word from the server */
    else
        code = XR_E_INTERNAL;
    if (code == XR_OK) /* a failure labelled 00000 is still a failure */
        code = XR_E_INTERNAL;
    if (!err)
        return code;

    xr_error_set(err, code, "database error");
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (primary && *primary) {
        copy_first_line(err->msg, sizeof(err->msg), primary);
        const char *fields[] = {
            PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL),
            PQresultErrorField(res, PG_DIAG_MESSAGE_HINT),
            PQresultErrorField(res, PG_DIAG_CONTEXT),
        };
        const char *labels[] = {"", "Hint: ", "Context: "};
        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
            if (!fields[i] || !*fields[i])
                continue;
            if (err->detail[0])
                append_flat(err->detail, sizeof(err->detail), " ");
            append_flat(err->detail, sizeof(err->detail), labels[i]);
            append_flat(err->detail, sizeof(err->detail), fields[i]);
        }
    } else {
        /* libpq's own failure (connection lost, out of memory): the text is all there is. */
        const char *text = res ? PQresultErrorMessage(res) : "";
        if (!*text)
            text = PQerrorMessage(reg->conn);
        set_message_lines(err, text);
    }
    if (sqlstate && strlen(sqlstate) == 5)
        memcpy(err->sqlstate, sqlstate, 6);
    return code;
}

/* Keep the result of a successful command, turn anything else into err. Always consumes res. */
static xr_code take_result(registry *reg, PGresult *res, PGresult **ret_res, xr_error *err)
{
    ExecStatusType st = PQresultStatus(res);
    if (res && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)) {
        if (ret_res)
            *ret_res = res;
        else
            PQclear(res);
        return XR_OK;
    }
    xr_code rc = registry_error_from_result(reg, res, err);
    PQclear(res);
    return rc;
}

xr_code registry_exec(registry *reg, const char *sql, PGresult **ret_res, xr_error *err)
{
    return take_result(reg, PQexec(reg->conn, sql), ret_res, err);
}

xr_code registry_exec_params(registry *reg, const char *sql, int n_params,
                             const char *const *values, PGresult **ret_res, xr_error *err)
{
    PGresult *res = PQexecParams(reg->conn, sql, n_params, NULL, values, NULL, NULL, 0);
    return take_result(reg, res, ret_res, err);
}

xr_code registry_exec_prepared(registry *reg, const char *stmt, int n_params,
                               const char *const *values, PGresult **ret_res, xr_error *err)
{
    PGresult *res = PQexecPrepared(reg->conn, stmt, n_params, values, NULL, NULL, 0);
    return take_result(reg, res, ret_res, err);
}

void registry_rollback(registry *reg)
{
    PGTransactionStatusType ts = PQtransactionStatus(reg->conn);
    if (ts != PQTRANS_INTRANS && ts != PQTRANS_INERROR)
        return;
    PGresult *res = PQexec(reg->conn, "ROLLBACK");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        xr_log_debug("registry: ROLLBACK failed, ignoring: %s", PQerrorMessage(reg->conn));
    PQclear(res);
}

bool registry_should_retry(const registry *reg, const xr_error *err, unsigned attempt)
{
    /* Three attempts: enough to ride out a race between two workers on the same new study, few
     * enough that a persistent problem reaches the caller (who backs off) quickly. */
    if (attempt >= 3)
        return false;
    if (strcmp(err->sqlstate, REGISTRY_SQLSTATE_SERIALIZATION_FAILURE) == 0 ||
        strcmp(err->sqlstate, REGISTRY_SQLSTATE_DEADLOCK_DETECTED) == 0 ||
        strcmp(err->sqlstate, REGISTRY_SQLSTATE_UNIQUE_VIOLATION) == 0)
        return true;
    /* A connection that died while idle (server restarted since the last call) fails the first
     * command; one reconnect settles it. The writes are idempotent, so retrying after a lost
     * COMMIT is harmless too. */
    return attempt == 1 && err->code == XR_E_TRANSIENT && registry_conn_is_bad(reg);
}

/* libpq prints NOTICEs to stderr by default; rooms log at debug level only. */
static void notice_to_log(void *userdata, const char *message)
{
    (void)userdata;
    if (!xr_log_enabled(XR_LOG_DEBUG))
        return;
    char line[XR_ERROR_MSG_BYTES];
    line[0] = '\0';
    append_flat(line, sizeof(line), message);
    xr_log_debug("registry: server: %s", line);
}

static xr_code connection_failed(PGconn *conn, xr_error *err, const char *what)
{
    if (!err)
        return XR_E_TRANSIENT;
    xr_error_set(err, XR_E_TRANSIENT, "connection failed"); /* replaced just below */
    set_message_lines(err, conn ? PQerrorMessage(conn) : "out of memory");
    xr_error_prefix(err, "%s: ", what);
    return XR_E_TRANSIENT;
}

xr_code registry_open(const char *conninfo, const char *application_name, registry **ret_reg,
                      xr_error *err)
{
    assert(conninfo && ret_reg);
    if (!conninfo || !ret_reg)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_open");

    /* Syntax and unknown keywords are the operator's to fix, not worth retrying. libpq does not
     * say which connection failures come from bad values (sslmode=bogus), bad passwords or a
     * missing database without parsing its text, so those stay XR_E_TRANSIENT below. */
    char *parse_err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &parse_err);
    if (!opts) {
        if (!parse_err)
            return xr_error_set(err, XR_E_NOMEM, "out of memory parsing the connection string");
        xr_error_set(err, XR_E_CONFIG, "invalid database connection string");
        if (err) {
            err->detail[0] = '\0';
            append_flat(err->detail, sizeof(err->detail), parse_err);
        }
        PQfreemem(parse_err);
        return XR_E_CONFIG;
    }
    PQconninfoFree(opts);

    /* Later keywords override earlier ones and the expanded dbname string: our defaults come
     * first so the connection string can change them; the application name and the encoding
     * (the registry passes UTF-8 text) come last. */
    const char *const keys[] = {
        "connect_timeout", "keepalives_idle",  "keepalives_interval", "keepalives_count",
        "dbname",          "application_name", "client_encoding",     NULL,
    };
    const char *const values[] = {
        "10", "60", "10", "6", conninfo, application_name, "UTF8", NULL,
    };
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (!conn)
        return xr_error_set(err, XR_E_NOMEM, "out of memory connecting to the database");
    if (PQstatus(conn) != CONNECTION_OK) {
        xr_code rc = connection_failed(conn, err, "could not connect to the database");
        PQfinish(conn);
        return rc;
    }
    PQsetNoticeProcessor(conn, notice_to_log, NULL);

    int version = PQserverVersion(conn);
    if (version < REGISTRY_MIN_SERVER_VERSION) {
        xr_error_set(err, XR_E_CONFIG, "PostgreSQL server version %d.%d is too old",
                     version / 10000, version % 10000);
        xr_error_detail(err, "xreg needs PostgreSQL %d or later",
                        REGISTRY_MIN_SERVER_VERSION / 10000);
        PQfinish(conn);
        return XR_E_CONFIG;
    }

    registry *reg = calloc(1, sizeof(*reg));
    if (!reg) {
        PQfinish(conn);
        return xr_error_set(err, XR_E_NOMEM, "out of memory allocating the registry handle");
    }
    reg->conn = conn;
    xr_log_debug("registry: connected to PostgreSQL %d as \"%s\", backend pid %d", version,
                 PQuser(conn), PQbackendPID(conn));
    *ret_reg = reg;
    return XR_OK;
}

registry *registry_close(registry *reg)
{
    if (!reg)
        return NULL;
    if (reg->conn)
        PQfinish(reg->conn);
    free(reg);
    return NULL;
}

xr_code registry_ensure_connected(registry *reg, xr_error *err)
{
    assert(reg);
    if (!reg)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_ensure_connected");
    if (PQstatus(reg->conn) == CONNECTION_OK)
        return XR_OK;
    xr_log_debug("registry: connection lost, reconnecting");
    reg->prepared = false;
    PQreset(reg->conn);
    if (PQstatus(reg->conn) != CONNECTION_OK)
        return connection_failed(reg->conn, err, "could not reconnect to the database");
    xr_log_debug("registry: reconnected, backend pid %d", PQbackendPID(reg->conn));
    return XR_OK;
}

bool registry_ping(const char *conninfo, unsigned timeout_s)
{
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%u", timeout_s ? timeout_s : 1);
    /* The connection string comes first so that our timeout wins. */
    const char *const keys[] = {"dbname", "connect_timeout", NULL};
    const char *const values[] = {conninfo ? conninfo : "", timeout, NULL};
    return PQpingParams(keys, values, 1) == PQPING_OK;
}
