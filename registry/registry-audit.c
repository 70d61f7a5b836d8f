/*
 * Audit chain verification: recompute xreg.audit_log's SHA-256 hash chain in C and report the
 * first broken link.
 *
 * The canonical form (format "xreg-audit-v1", built in SQL by xreg.audit_canonical in migration
 * 0002 and here byte for byte): the ASCII text "xreg-audit-v1", then for each field, in this
 * order, a newline followed by "-" when the field is NULL, else its length in bytes in decimal,
 * ":" and its UTF-8 text:
 *     seq, id, at (UTC, "YYYY-MM-DDTHH:MM:SS.ffffffZ"), txid, db_role, login_role, actor,
 *     application_name, client_addr, action, table_name, row_key, old_row, new_row
 * (integers in decimal, old_row/new_row as PostgreSQL prints jsonb). hash = SHA-256(prev_hash ||
 * canonical), prev_hash being the previous row's hash and 32 zero bytes for seq 1.
 *
 * DESIGN: one REPEATABLE READ READ ONLY transaction, so the rows and the chain head come from
 * one snapshot while writers go on; rows are read through a cursor in batches, so memory stays
 * bounded whatever the size of the log. jsonb text comes from the server (its output is
 * canonical: keys sorted, one space after ':' and ','); the timestamp comes as integer
 * microseconds and is formatted here.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xr-error.h"
#include "xr-log.h"

#include "registry-internal.h"
#include "registry.h"

#define HASH_BYTES 32
/* Rows per FETCH (the literal in the FETCH below): a few MB of jsonb at most. */
#define FETCH_ROWS 2000

enum {
    COL_SEQ,
    COL_ID,
    COL_AT_US,
    COL_TXID,
    COL_DB_ROLE,
    COL_LOGIN_ROLE,
    COL_ACTOR,
    COL_APPLICATION_NAME,
    COL_CLIENT_ADDR,
    COL_ACTION,
    COL_TABLE_NAME,
    COL_ROW_KEY,
    COL_OLD_ROW,
    COL_NEW_ROW,
    COL_PREV_HASH,
    COL_HASH,
    COL_MAX,
};

static const char cursor_sql[] =
    "DECLARE xr_audit NO SCROLL CURSOR FOR"
    /* Whole seconds and microseconds apart: before PostgreSQL 14 extract() returns a double,
     * which cannot hold epoch microseconds exactly. */
    " SELECT seq, id, extract(epoch FROM date_trunc('second', at))::bigint * 1000000"
    " + extract(microseconds FROM at)::bigint % 1000000, txid, db_role, login_role,"
    " actor, application_name, client_addr, action, table_name, row_key, old_row::text,"
    " new_row::text, encode(prev_hash, 'hex'), encode(hash, 'hex')"
    " FROM xreg.audit_log ORDER BY seq";

static void to_hex(const unsigned char *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 0xf];
    }
    out[2 * n] = '\0';
}

static bool from_hex(const char *hex, unsigned char *out, size_t n)
{
    if (strlen(hex) != 2 * n)
        return false;
    for (size_t i = 0; i < n; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = hex[2 * i + k];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= c - '0';
            else if (c >= 'a' && c <= 'f')
                v |= c - 'a' + 10;
            else
                return false;
        }
        out[i] = (unsigned char)v;
    }
    return true;
}

/* Microseconds since the epoch as "YYYY-MM-DDTHH:MM:SS.ffffffZ". */
static bool format_at(int64_t us, char out[64])
{
    int64_t sec = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        return false;
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)frac);
    return true;
}

static bool digest_field(EVP_MD_CTX *md, const char *v)
{
    char head[32];
    int n = v ? snprintf(head, sizeof(head), "\n%zu:", strlen(v)) : snprintf(head, sizeof(head),
                                                                             "\n-");
    return EVP_DigestUpdate(md, head, (size_t)n) && (!v || EVP_DigestUpdate(md, v, strlen(v)));
}

/* sha256(prev || canonical(row)) with the row's id replaced by id_text when not NULL. */
static xr_code row_hash(EVP_MD_CTX *md, const PGresult *res, int row, const unsigned char *prev,
                        const char *id_text, unsigned char out[HASH_BYTES], xr_error *err)
{
    const char *f[COL_MAX];
    for (int c = 0; c < COL_MAX; c++)
        f[c] = PQgetisnull(res, row, c) ? NULL : PQgetvalue(res, row, c);
    char at[64];
    if (f[COL_AT_US] && !format_at(strtoll(f[COL_AT_US], NULL, 10), at))
        return xr_error_set(err, XR_E_INPUT, "audit row seq %s has an out-of-range time",
                            f[COL_SEQ]);
    const char *fields[] = {
        f[COL_SEQ],        id_text ? id_text : f[COL_ID], f[COL_AT_US] ? at : NULL,
        f[COL_TXID],       f[COL_DB_ROLE],                f[COL_LOGIN_ROLE],
        f[COL_ACTOR],      f[COL_APPLICATION_NAME],       f[COL_CLIENT_ADDR],
        f[COL_ACTION],     f[COL_TABLE_NAME],             f[COL_ROW_KEY],
        f[COL_OLD_ROW],    f[COL_NEW_ROW],
    };
    static const char version[] = "xreg-audit-v1";
    bool ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
              EVP_DigestUpdate(md, prev, HASH_BYTES) &&
              EVP_DigestUpdate(md, version, sizeof(version) - 1);
    for (size_t i = 0; ok && i < sizeof(fields) / sizeof(fields[0]); i++)
        ok = digest_field(md, fields[i]);
    unsigned int n = 0;
    if (!ok || !EVP_DigestFinal_ex(md, out, &n) || n != HASH_BYTES)
        return xr_error_set(err, XR_E_INTERNAL, "could not compute SHA-256 with OpenSSL");
    return XR_OK;
}

typedef struct walker {
    EVP_MD_CTX *md;
    registry_audit_report *rep;
    const registry_audit_anchor *anchor;
    bool anchor_seen;
    int64_t last_seq;
    unsigned char last_hash[HASH_BYTES]; /* zeros before the first row */
    char last_id[24];
} walker;

static void broken(walker *w, int64_t seq, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void broken(walker *w, int64_t seq, const char *id, const char *fmt, ...)
{
    w->rep->ok = false;
    w->rep->broken_seq = seq;
    w->rep->broken_id = id ? strtoll(id, NULL, 10) : 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->rep->problem, sizeof(w->rep->problem), fmt, ap);
    va_end(ap);
}

/* Check the rows of one batch; stops at the first broken link (rep->ok false). */
static xr_code check_batch(walker *w, const PGresult *res, xr_error *err)
{
    int n = PQntuples(res);
    for (int row = 0; row < n && w->rep->ok; row++) {
        const char *seq_text = PQgetvalue(res, row, COL_SEQ);
        const char *id = PQgetvalue(res, row, COL_ID);
        int64_t seq = strtoll(seq_text, NULL, 10);
        unsigned char prev[HASH_BYTES], stored[HASH_BYTES], computed[HASH_BYTES];
        if (seq != w->last_seq + 1) {
            if (seq > w->last_seq + 1)
                broken(w, seq, id,
                       "rows with seq %" PRId64 " to %" PRId64 " are missing (deleted) before "
                       "id %s",
                       w->last_seq + 1, seq - 1, id);
            else
                broken(w, seq, id, "seq %" PRId64 " follows seq %" PRId64 " (rows reordered)",
                       seq, w->last_seq);
            return XR_OK;
        }
        if (!from_hex(PQgetvalue(res, row, COL_PREV_HASH), prev, HASH_BYTES) ||
            !from_hex(PQgetvalue(res, row, COL_HASH), stored, HASH_BYTES)) {
            broken(w, seq, id, "prev_hash or hash is not 32 bytes");
            return XR_OK;
        }
        if (memcmp(prev, w->last_hash, HASH_BYTES) != 0) {
            char want[2 * HASH_BYTES + 1];
            to_hex(w->last_hash, HASH_BYTES, want);
            if (seq == 1)
                broken(w, seq, id, "the first row's prev_hash is not 32 zero bytes");
            else
                broken(w, seq, id,
                       "prev_hash does not match the hash %.16s... of the row before (seq "
                       "%" PRId64 ", id %s): a row was removed, replaced or re-inserted here",
                       want, w->last_seq, w->last_id);
            return XR_OK;
        }
        xr_code rc = row_hash(w->md, res, row, prev, NULL, computed, err);
        if (rc)
            return rc;
        if (memcmp(computed, stored, HASH_BYTES) != 0) {
            /* Ids swapped between rows: the content matches with a neighbour's id. */
            const char *neighbour = NULL;
            for (int d = -1; d <= 1 && !neighbour; d += 2) {
                int r2 = row + d;
                const char *other = r2 < 0 ? (w->last_id[0] ? w->last_id : NULL)
                                    : r2 < n ? PQgetvalue(res, r2, COL_ID)
                                             : NULL;
                unsigned char alt[HASH_BYTES];
                if (other && row_hash(w->md, res, row, prev, other, alt, err) == XR_OK &&
                    memcmp(alt, stored, HASH_BYTES) == 0)
                    neighbour = other;
            }
            if (neighbour)
                broken(w, seq, id,
                       "the row now has id %s but was chained with id %s: ids were swapped or "
                       "rows reordered",
                       id, neighbour);
            else
                broken(w, seq, id,
                       "the row's content does not match its hash: it was changed after it was "
                       "written (table %s, key %s)",
                       PQgetvalue(res, row, COL_TABLE_NAME), PQgetvalue(res, row, COL_ROW_KEY));
            return XR_OK;
        }
        if (w->anchor && seq == w->anchor->seq) {
            w->anchor_seen = true;
            char hex[2 * HASH_BYTES + 1];
            to_hex(stored, HASH_BYTES, hex);
            if (strcmp(hex, w->anchor->hash) != 0) {
                broken(w, seq, id,
                       "the row at the anchored seq %" PRId64 " has hash %.16s... but the anchor "
                       "recorded %.16s...: the chain was rewritten",
                       seq, hex, w->anchor->hash);
                return XR_OK;
            }
        }
        w->last_seq = seq;
        memcpy(w->last_hash, stored, HASH_BYTES);
        snprintf(w->last_id, sizeof(w->last_id), "%s", id);
        w->rep->n_rows++;
    }
    return XR_OK;
}

static xr_code verify_in_txn(registry *reg, walker *w, xr_error *err)
{
    PGresult *res = NULL;
    xr_code rc = registry_exec(reg, "SELECT seq, encode(hash, 'hex') FROM xreg.audit_chain_head",
                               &res, err);
    if (rc)
        return rc;
    if (PQntuples(res) != 1) {
        broken(w, 0, NULL, "xreg.audit_chain_head has %d rows but must have 1", PQntuples(res));
        PQclear(res);
        return XR_OK;
    }
    int64_t head_seq = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    char head_hash[2 * HASH_BYTES + 1];
    snprintf(head_hash, sizeof(head_hash), "%s", PQgetvalue(res, 0, 1));
    PQclear(res);

    rc = registry_exec(reg, cursor_sql, NULL, err);
    if (rc)
        return rc;
    for (;;) {
        rc = registry_exec(reg, "FETCH 2000 FROM xr_audit", &res, err);
        if (rc)
            return rc;
        int n = PQntuples(res);
        if (PQnfields(res) != COL_MAX) {
            PQclear(res);
            return xr_error_set(err, XR_E_INTERNAL, "audit cursor returned %d columns",
                                PQnfields(res));
        }
        rc = check_batch(w, res, err);
        PQclear(res);
        if (rc || !w->rep->ok || n < FETCH_ROWS)
            break;
    }
    if (rc || !w->rep->ok)
        return rc;

    char last_hex[2 * HASH_BYTES + 1] = "";
    if (w->last_seq > 0)
        to_hex(w->last_hash, HASH_BYTES, last_hex);
    w->rep->head_seq = w->last_seq;
    snprintf(w->rep->head_hash, sizeof(w->rep->head_hash), "%s", last_hex);
    if (head_seq != w->last_seq)
        broken(w, head_seq, NULL,
               "the chain head records seq %" PRId64 " but the last row is seq %" PRId64
               ": rows at the end were %s",
               head_seq, w->last_seq,
               head_seq > w->last_seq ? "deleted" : "added around the chain");
    else if (w->last_seq > 0 && strcmp(head_hash, last_hex) != 0)
        broken(w, head_seq, w->last_id,
               "the chain head's hash %.16s... differs from the last row's %.16s...: the tail "
               "was replaced",
               head_hash, last_hex);
    else if (w->anchor && !w->anchor_seen && w->anchor->seq > 0)
        broken(w, w->anchor->seq, NULL,
               "the chain ends at seq %" PRId64 " before the anchored seq %" PRId64
               ": rows were deleted",
               w->last_seq, w->anchor->seq);
    return XR_OK;
}

xr_code registry_audit_verify(registry *reg, const registry_audit_anchor *anchor,
                              registry_audit_report *ret, xr_error *err)
{
    assert(reg && ret);
    if (!reg || !ret)
        return xr_error_set(err, XR_E_INTERNAL, "invalid argument to registry_audit_verify");
    *ret = (registry_audit_report){.ok = true};
    walker w = {.rep = ret, .anchor = anchor};
    xr_code rc = registry_ensure_connected(reg, err);
    if (rc)
        return rc;
    registry_rollback(reg);
    w.md = EVP_MD_CTX_new();
    if (!w.md)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    rc = registry_exec(reg, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", NULL, err);
    if (rc == XR_OK)
        rc = verify_in_txn(reg, &w, err);
    registry_rollback(reg);
    EVP_MD_CTX_free(w.md);
    if (rc) {
        xr_error_prefix(err, "could not verify the audit chain: ");
        return rc;
    }
    xr_log_debug("registry: audit chain %s after %" PRId64 " rows", ret->ok ? "valid" : "broken",
                 ret->n_rows);
    return XR_OK;
}
