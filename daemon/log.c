/* stderr log sink (see log.h), keeping the last warnings and errors for xregctl status. */
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RECENT_LINE_BYTES 240

static pthread_mutex_t recent_lock = PTHREAD_MUTEX_INITIALIZER;
static char recent[LOG_RECENT_MAX][RECENT_LINE_BYTES];
static size_t recent_next;
static size_t recent_n;

static void remember(xr_log_level level, const char *line)
{
    char stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    pthread_mutex_lock(&recent_lock);
    snprintf(recent[recent_next], RECENT_LINE_BYTES, "%s %s %s", stamp,
             level <= XR_LOG_ERR ? "error" : "warning", line);
    recent_next = (recent_next + 1) % LOG_RECENT_MAX;
    if (recent_n < LOG_RECENT_MAX)
        recent_n++;
    pthread_mutex_unlock(&recent_lock);
}

size_t log_recent(char out[][LOG_RECENT_LINE_BYTES], size_t max)
{
    pthread_mutex_lock(&recent_lock);
    size_t n = recent_n < max ? recent_n : max;
    for (size_t i = 0; i < n; i++) {
        /* newest first */
        size_t idx = (recent_next + LOG_RECENT_MAX - 1 - i) % LOG_RECENT_MAX;
        snprintf(out[i], LOG_RECENT_LINE_BYTES, "%s", recent[idx]);
    }
    pthread_mutex_unlock(&recent_lock);
    return n;
}

static void log_sink(void *userdata, xr_log_level level, const char *line)
{
    (void)userdata;
    if (level <= XR_LOG_WARNING)
        remember(level, line);
    char buf[2100];
    int n = snprintf(buf, sizeof(buf), "<%d>%s\n", (int)level, line);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(buf)) {
        n = sizeof(buf) - 1;
        buf[n - 1] = '\n';
    }
    /* One write per line keeps lines from different threads whole. */
    ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
    (void)w;
}

void log_setup(xr_log_level level)
{
    xr_log_set(log_sink, NULL, level);
}
