/*
 * The daemon's log sink: one line per call to stderr, prefixed with the sd-daemon priority
 * ("<6>") so that journald keeps levels. Rooms reach it through xr_log.
 */
#pragma once

#include "xr-log.h"

#include <stddef.h>

#define LOG_RECENT_MAX 8
#define LOG_RECENT_LINE_BYTES 240

/* Install the stderr sink at level. Call before threads start. */
void log_setup(xr_log_level level);
/*
 * Copy up to max of the most recent warning and error lines, newest first, each prefixed with
 * its UTC time and level; returns how many. Any thread.
 */
size_t log_recent(char out[][LOG_RECENT_LINE_BYTES], size_t max);

#define log_error(...) xr_log(XR_LOG_ERR, __VA_ARGS__)
#define log_warning(...) xr_log(XR_LOG_WARNING, __VA_ARGS__)
#define log_notice(...) xr_log(XR_LOG_NOTICE, __VA_ARGS__)
#define log_info(...) xr_log(XR_LOG_INFO, __VA_ARGS__)
#define log_debug(...) xr_log(XR_LOG_DEBUG, __VA_ARGS__)
