/*
 * Logging hook shared by all rooms. Rooms log at debug only (through xr_log_debug); the daemon
 * installs a callback that writes sd-daemon prefixed lines to stderr and decides the level.
 *
 * Thread rule: xr_log_set must run before threads start; xr_log_* may be called from any thread.
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Values match syslog/sd-daemon priorities. */
typedef enum xr_log_level {
    XR_LOG_ERR = 3,
    XR_LOG_WARNING = 4,
    XR_LOG_NOTICE = 5,
    XR_LOG_INFO = 6,
    XR_LOG_DEBUG = 7,
} xr_log_level;

typedef void (*xr_log_fn)(void *userdata, xr_log_level level, const char *line);

/* Install the sink and the maximum level that is formatted at all. */
void xr_log_set(xr_log_fn fn, void *userdata, xr_log_level max_level);
/* Change the level only (e.g. on reload). */
void xr_log_set_level(xr_log_level max_level);
bool xr_log_enabled(xr_log_level level);
/* "debug", "info", ...; NULL for an unknown level. */
const char *xr_log_level_name(xr_log_level level);
/* Parse "err"/"error", "warning", "notice", "info", "debug"; false if unrecognized. */
bool xr_log_level_from_string(const char *s, xr_log_level *ret_level);

__attribute__((format(printf, 2, 3))) void xr_log_write(xr_log_level level, const char *fmt, ...);
__attribute__((format(printf, 2, 0))) void xr_log_writev(xr_log_level level, const char *fmt,
                                                          va_list ap);

/* Check the level before formatting: arguments are not evaluated when the level is off. */
#define xr_log(level, ...)                                                                        \
    do {                                                                                          \
        if (xr_log_enabled(level))                                                                \
            xr_log_write(level, __VA_ARGS__);                                                     \
    } while (0)
#define xr_log_debug(...) xr_log(XR_LOG_DEBUG, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
