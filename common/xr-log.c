/* Logging hook: formats one line and hands it to the installed sink (stderr by default). */
#include "xr-log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static xr_log_fn log_fn;
static void *log_userdata;
static atomic_int log_max = XR_LOG_INFO;

void xr_log_set(xr_log_fn fn, void *userdata, xr_log_level max_level)
{
    log_fn = fn;
    log_userdata = userdata;
    atomic_store(&log_max, (int)max_level);
}

void xr_log_set_level(xr_log_level max_level)
{
    atomic_store(&log_max, (int)max_level);
}

bool xr_log_enabled(xr_log_level level)
{
    return (int)level <= atomic_load_explicit(&log_max, memory_order_relaxed);
}

static const struct {
    const char *name;
    xr_log_level level;
} level_names[] = {
    {"error", XR_LOG_ERR},   {"err", XR_LOG_ERR},   {"warning", XR_LOG_WARNING},
    {"notice", XR_LOG_NOTICE}, {"info", XR_LOG_INFO}, {"debug", XR_LOG_DEBUG},
};

const char *xr_log_level_name(xr_log_level level)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (level_names[i].level == level)
            return level_names[i].name;
    return NULL;
}

bool xr_log_level_from_string(const char *s, xr_log_level *ret_level)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (strcasecmp(s, level_names[i].name) == 0) {
            *ret_level = level_names[i].level;
            return true;
        }
    return false;
}

void xr_log_writev(xr_log_level level, const char *fmt, va_list ap)
{
    char line[2048];
    vsnprintf(line, sizeof(line), fmt, ap);
    if (log_fn) {
        log_fn(log_userdata, level, line);
        return;
    }
    /* Default sink: sd-daemon prefix so journald keeps the level. */
    fprintf(stderr, "<%d>%s\n", (int)level, line);
}

void xr_log_write(xr_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    xr_log_writev(level, fmt, ap);
    va_end(ap);
}
