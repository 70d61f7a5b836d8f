/*
 * xr_error: the error record every room fills and the daemon maps to a DIMSE status, a metrics
 * label and one log line.
 *
 *     xr_error err = XR_ERROR_INIT;
 *     if (registry_instance_upsert(reg, &inst, &err) == XR_E_TRANSIENT)
 *         retry later;
 *     log_error("%s", err.msg);
 *
 * The record is caller-owned with fixed buffers so that the out-of-memory path allocates nothing.
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What the caller should do next; 0 is success. */
typedef enum xr_code {
    XR_OK = 0,
    XR_E_INPUT,       /* bad outside data (a file, a peer's bytes, a model) */
    XR_E_UNSUPPORTED, /* valid but not handled (transfer syntax, ONNX op) */
    XR_E_LIMIT,       /* a configured or hard limit was exceeded */
    XR_E_NOMEM,
    XR_E_IO,          /* a system call failed; sys_errno says why */
    XR_E_TRANSIENT,   /* retrying later may succeed (database down, serialization failure) */
    XR_E_CONFIG,      /* bad configuration */
    XR_E_INTERNAL,    /* a bug */
    XR_E_MAX,
} xr_code;

#define XR_ERROR_MSG_BYTES 512
#define XR_ERROR_DETAIL_BYTES 1024

typedef struct xr_error {
    xr_code code;
    int sys_errno;        /* errno for XR_E_IO, else 0 */
    char sqlstate[6];     /* PostgreSQL SQLSTATE when the error came from the database, else "" */
    uint16_t dimse;       /* DIMSE status when one is known, else 0 */
    char msg[XR_ERROR_MSG_BYTES];       /* one line, lower-case start, no final period */
    char detail[XR_ERROR_DETAIL_BYTES]; /* optional specifics, may be "" */
} xr_error;

#define XR_ERROR_INIT {.code = XR_OK}

/* "ok", "input", ...; never NULL. */
const char *xr_code_name(xr_code code);

/*
 * Fill err (if not NULL) and return code. The message is formatted with printf rules; a too long
 * message is cut. err may be NULL, in which case only the code is returned.
 */
__attribute__((format(printf, 3, 4))) xr_code xr_error_set(xr_error *err, xr_code code,
                                                            const char *fmt, ...);
__attribute__((format(printf, 3, 0))) xr_code xr_error_setv(xr_error *err, xr_code code,
                                                             const char *fmt, va_list ap);
/* Like xr_error_set with XR_E_IO, saving errnum and appending ": <strerror>". */
__attribute__((format(printf, 3, 4))) xr_code xr_error_errno(xr_error *err, int errnum,
                                                              const char *fmt, ...);
/* Set the detail line (replaces any previous detail). */
__attribute__((format(printf, 2, 3))) void xr_error_detail(xr_error *err, const char *fmt, ...);
/* Prefix the message with context while unwinding: "reading \"x.dcm\": " + old message. */
__attribute__((format(printf, 2, 3))) void xr_error_prefix(xr_error *err, const char *fmt, ...);
/* Reset to success. */
void xr_error_clear(xr_error *err);

#ifdef __cplusplus
}
#endif
