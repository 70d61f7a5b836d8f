/* xr_error helpers: formatting into fixed buffers, never allocating. */
#include "xr-error.h"

#include <stdio.h>
#include <string.h>

const char *xr_code_name(xr_code code)
{
    static const char *const names[XR_E_MAX] = {
        [XR_OK] = "ok",
        [XR_E_INPUT] = "input",
        [XR_E_UNSUPPORTED] = "unsupported",
        [XR_E_LIMIT] = "limit",
        [XR_E_NOMEM] = "nomem",
        [XR_E_IO] = "io",
        [XR_E_TRANSIENT] = "transient",
        [XR_E_CONFIG] = "config",
        [XR_E_INTERNAL] = "internal",
    };
    if ((unsigned)code >= XR_E_MAX)
        return "invalid";
    return names[code];
}

xr_code xr_error_setv(xr_error *err, xr_code code, const char *fmt, va_list ap)
{
    if (!err)
        return code;
    err->code = code;
    err->sys_errno = 0;
    err->sqlstate[0] = '\0';
    err->dimse = 0;
    err->detail[0] = '\0';
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    return code;
}

xr_code xr_error_set(xr_error *err, xr_code code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    xr_error_setv(err, code, fmt, ap);
    va_end(ap);
    return code;
}

xr_code xr_error_errno(xr_error *err, int errnum, const char *fmt, ...)
{
    if (!err)
        return XR_E_IO;
    va_list ap;
    va_start(ap, fmt);
    xr_error_setv(err, XR_E_IO, fmt, ap);
    va_end(ap);
    err->sys_errno = errnum;
    size_t len = strlen(err->msg);
    char buf[128];
    /* GNU strerror_r may return a static string instead of filling buf. */
    const char *s = strerror_r(errnum, buf, sizeof(buf));
    snprintf(err->msg + len, sizeof(err->msg) - len, ": %s", s);
    return XR_E_IO;
}

void xr_error_detail(xr_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
    va_end(ap);
}

void xr_error_prefix(xr_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    char old[XR_ERROR_MSG_BYTES];
    memcpy(old, err->msg, sizeof(old));
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(err->msg))
        return;
    snprintf(err->msg + n, sizeof(err->msg) - (size_t)n, "%s", old);
}

void xr_error_clear(xr_error *err)
{
    if (!err)
        return;
    *err = (xr_error)XR_ERROR_INIT;
}
