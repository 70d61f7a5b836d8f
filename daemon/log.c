/* stderr log sink (see log.h). */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void log_sink(void *userdata, xr_log_level level, const char *line)
{
    (void)userdata;
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
