/*
 * The metrics HTTP endpoint (metrics.h): /metrics, /healthz, /readyz and /status over
 * libmicrohttpd.
 *
 * DESIGN
 * We create the listening socket ourselves and hand it to MHD (MHD_OPTION_LISTEN_SOCKET): MHD
 * reports a failed bind only as a NULL daemon, and the operator needs "Address already in use"
 * with the address and port. It also gives IPv6 without MHD's dual-stack flags, and
 * SOCK_CLOEXEC so that the postgres children the daemon spawns do not inherit it.
 *
 * One MHD thread ("MHD-single") polls the listening socket and every connection and runs the
 * handler; the callbacks (metrics gauge functions, ready, status) therefore run on that thread.
 * The connection limit and timeout are small because the only clients are a Prometheus scraper,
 * xregctl and a health checker on this host. MHD_USE_ITC lets MHD_stop_daemon wake the thread at
 * once instead of waiting for its poll to time out, so stopping takes as long as the request
 * being handled, if any. We never quiesce the daemon: MHD closes the socket in MHD_stop_daemon.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "xr-log.h"

/* Concurrent connections: a scraper, xregctl and a health checker, with room for retries. */
#define HTTP_CONNECTION_LIMIT 16
/* An idle or stalled client is dropped after this; local clients answer in milliseconds. */
#define HTTP_CONNECTION_TIMEOUT_S 10
#define HTTP_LISTEN_BACKLOG 16
/* The reason /readyz gives; one line of a status page. */
#define HTTP_WHY_BYTES 256
/* "[" + an IPv6 address (INET6_ADDRSTRLEN is 46) + "]:65535". */
#define HTTP_ENDPOINT_BYTES 64

#define CONTENT_TYPE_TEXT "text/plain; charset=utf-8"
#define CONTENT_TYPE_METRICS "text/plain; version=0.0.4; charset=utf-8"
#define CONTENT_TYPE_JSON "application/json"

struct http_server {
    struct MHD_Daemon *daemon;
    /* A copy; bind_address is not kept. */
    http_server_params p;
};

/* MHD's messages, one line each, at debug like every room's (MHD_OPTION_EXTERNAL_LOGGER). */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (!xr_log_enabled(XR_LOG_DEBUG))
        return;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\r\n")] = '\0';
    xr_log_debug("metrics http: %s", line);
}

/* "127.0.0.1:9112" or "[::1]:9112" for messages. */
static void endpoint_format(char buf[HTTP_ENDPOINT_BYTES], const char *address, uint16_t port)
{
    if (strchr(address, ':'))
        snprintf(buf, HTTP_ENDPOINT_BYTES, "[%.48s]:%u", address, (unsigned)port);
    else
        snprintf(buf, HTTP_ENDPOINT_BYTES, "%.48s:%u", address, (unsigned)port);
}

/* A listening, non-blocking, close-on-exec TCP socket on address:port. */
static xr_code listen_open(const char *address, uint16_t port, int *ret_fd, xr_error *err)
{
    const char *a = address && address[0] ? address : "127.0.0.1";
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } sa = {.in = {.sin_family = AF_INET}};
    socklen_t sa_bytes = sizeof(sa.in);
    if (inet_pton(AF_INET, a, &sa.in.sin_addr) == 1) {
        sa.in.sin_port = htons(port);
    } else {
        sa.in6 = (struct sockaddr_in6){.sin6_family = AF_INET6, .sin6_port = htons(port)};
        sa_bytes = sizeof(sa.in6);
        if (inet_pton(AF_INET6, a, &sa.in6.sin6_addr) != 1) {
            xr_error_set(err, XR_E_CONFIG, "invalid metrics bind address \"%s\"", a);
            xr_error_detail(err, "expected a numeric IPv4 or IPv6 address, or \"\" for 127.0.0.1");
            return XR_E_CONFIG;
        }
    }

    char endpoint[HTTP_ENDPOINT_BYTES];
    endpoint_format(endpoint, a, port);
    int fd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not listen on %s for metrics", endpoint);
    /* Allows a restart while old connections sit in TIME_WAIT; a live listener still makes
     * bind fail with EADDRINUSE. */
    const int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        bind(fd, &sa.sa, sa_bytes) != 0 || listen(fd, HTTP_LISTEN_BACKLOG) != 0) {
        int e = errno;
        close(fd);
        return xr_error_errno(err, e, "could not listen on %s for metrics", endpoint);
    }
    *ret_fd = fd;
    return XR_OK;
}

/* ---- requests -------------------------------------------------------------------------------- */

/*
 * Queue a response. body is borrowed for MHD_RESPMEM_PERSISTENT and MHD_RESPMEM_MUST_COPY; for
 * MHD_RESPMEM_MUST_FREE it is malloc'ed and taken (freed here on failure). MHD_NO closes the
 * connection, which is all we can do when out of memory.
 */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int status,
                             const char *content_type, char *body, size_t body_bytes,
                             enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(body_bytes, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    enum MHD_Result ret = MHD_NO;
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) == MHD_YES &&
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") == MHD_YES &&
        (status != MHD_HTTP_METHOD_NOT_ALLOWED ||
         MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD") == MHD_YES))
        ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* A constant text body. */
static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned int status,
                                  const char *text)
{
    /* PERSISTENT: MHD only reads the buffer, its type notwithstanding. */
    return reply(conn, status, CONTENT_TYPE_TEXT, (char *)text, strlen(text),
                 MHD_RESPMEM_PERSISTENT);
}

static enum MHD_Result serve_metrics(http_server *srv, struct MHD_Connection *conn)
{
    if (!srv->p.m)
        return reply(conn, MHD_HTTP_OK, CONTENT_TYPE_METRICS, (char *)"", 0,
                     MHD_RESPMEM_PERSISTENT);
    char *text = metrics_render(srv->p.m);
    if (!text)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return reply(conn, MHD_HTTP_OK, CONTENT_TYPE_METRICS, text, strlen(text),
                 MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result serve_readyz(http_server *srv, struct MHD_Connection *conn)
{
    char why[HTTP_WHY_BYTES] = "";
    if (!srv->p.ready || srv->p.ready(srv->p.userdata, why, sizeof(why)))
        return reply_text(conn, MHD_HTTP_OK, "ready\n");
    /* Keep the answer one line whatever the callback wrote. */
    why[sizeof(why) - 1] = '\0';
    for (char *p = why; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    char body[HTTP_WHY_BYTES + 32];
    int n = snprintf(body, sizeof(body), "not ready: %s\n", why[0] ? why : "no reason given");
    return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, CONTENT_TYPE_TEXT, body, (size_t)n,
                 MHD_RESPMEM_MUST_COPY);
}

/* /status?format=json (the default) or ?format=text, as the callbacks that exist allow. */
static enum MHD_Result serve_status(http_server *srv, struct MHD_Connection *conn)
{
    const char *format = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "format");
    http_status_fn fn;
    const char *content_type;
    if (!format || strcmp(format, "json") == 0) {
        fn = srv->p.status;
        content_type = CONTENT_TYPE_JSON;
    } else if (strcmp(format, "text") == 0) {
        fn = srv->p.status_text;
        content_type = CONTENT_TYPE_TEXT;
    } else {
        return reply_text(conn, MHD_HTTP_BAD_REQUEST,
                          "unrecognized format (expected \"json\" or \"text\")\n");
    }
    if (!fn)
        return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
    char *body = fn(srv->p.userdata);
    if (!body)
        return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "status unavailable\n");
    return reply(conn, MHD_HTTP_OK, content_type, body, strlen(body), MHD_RESPMEM_MUST_FREE);
}

/*
 * MHD_AccessHandlerCallback. We answer on the first call for each request (headers read): none
 * of our resources takes a body, and a body sent anyway is discarded by MHD.
 */
static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **req_cls)
{
    http_server *srv = cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;

    enum { PATH_METRICS, PATH_HEALTHZ, PATH_READYZ, PATH_STATUS, PATH_MAX } path;
    if (strcmp(url, "/metrics") == 0)
        path = PATH_METRICS;
    else if (strcmp(url, "/healthz") == 0)
        path = PATH_HEALTHZ;
    else if (strcmp(url, "/readyz") == 0)
        path = PATH_READYZ;
    else if (strcmp(url, "/status") == 0 && (srv->p.status || srv->p.status_text))
        path = PATH_STATUS;
    else
        return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");

    /* MHD sends the headers without the body for HEAD. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");

    switch (path) {
    case PATH_METRICS:
        return serve_metrics(srv, conn);
    case PATH_HEALTHZ:
        return reply_text(conn, MHD_HTTP_OK, "ok\n");
    case PATH_READYZ:
        return serve_readyz(srv, conn);
    case PATH_STATUS:
        return serve_status(srv, conn);
    case PATH_MAX:
        break;
    }
    return MHD_NO;
}

/* ---- server --------------------------------------------------------------------------------- */

xr_code http_server_start(const http_server_params *p, http_server **ret_srv, xr_error *err)
{
    assert(p && ret_srv);
    if (!p || !ret_srv)
        return xr_error_set(err, XR_E_INTERNAL, "metrics server started without parameters");

    xr_code rc;
    int fd = -1;
    http_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return xr_error_set(err, XR_E_NOMEM, "out of memory starting the metrics server");
    srv->p = *p;
    srv->p.bind_address = NULL;

    rc = listen_open(p->bind_address, p->port, &fd, err);
    if (rc != XR_OK)
        goto fail;
    /* The logger goes first so that MHD's start-up messages reach it too. The port argument is
     * ignored with a listen socket. From this call on MHD owns fd: MHD_stop_daemon closes it, and
     * so do MHD's failure paths once it has taken the socket (an allocation failure before that
     * would leak it, which beats a double close of a number another thread may reuse). */
    srv->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ITC | MHD_USE_ERROR_LOG, 0, NULL,
        NULL, handle_request, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)HTTP_CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)HTTP_CONNECTION_TIMEOUT_S, MHD_OPTION_END);
    if (!srv->daemon) {
        char endpoint[HTTP_ENDPOINT_BYTES];
        endpoint_format(endpoint,
                        p->bind_address && p->bind_address[0] ? p->bind_address : "127.0.0.1",
                        p->port);
        rc = xr_error_set(err, XR_E_IO, "could not start the metrics server on %s", endpoint);
        xr_error_detail(err, "the HTTP library gave no reason; its debug log lines may");
        goto fail;
    }
    xr_log_debug("metrics: serving on port %u", (unsigned)p->port);
    *ret_srv = srv;
    return XR_OK;

fail:
    free(srv);
    return rc;
}

http_server *http_server_stop(http_server *srv)
{
    if (!srv)
        return NULL;
    if (srv->daemon)
        MHD_stop_daemon(srv->daemon);
    free(srv);
    return NULL;
}
