/*
 * Embedded PostgreSQL cluster (see pgembed.h). The PostgreSQL programs are run with fork/exec so
 * that, as root, the child can drop to the cluster owner before exec.
 */
#include "pgembed.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "xr-config.h"
#include "xr-fs.h"
#include "xr-log.h"

struct pgembed {
    char *dir;
    char *data;
    bool started;
    bool drop;
    uid_t uid;
    gid_t gid;
};

/* Run argv (absolute path first) as the cluster owner, output appended to log_path. Returns the
 * exit status (0 = success), or -1 with err set if it could not run. */
static int run_as_owner(const pgembed *pg, char *const argv[], const char *log_path,
                        xr_error *err)
{
    pid_t pid = fork();
    if (pid < 0) {
        xr_error_errno(err, errno, "could not fork to run \"%s\"", argv[0]);
        return -1;
    }
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || nul < 0)
            _exit(126);
        dup2(nul, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (pg->drop) {
            if (setgroups(0, NULL) < 0 || setgid(pg->gid) < 0 || setuid(pg->uid) < 0)
                _exit(126);
        }
        /* Children must not inherit our blocked signal mask (pg_ctl waits on signals). */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setenv("LC_ALL", "C.UTF-8", 1);
        unsetenv("PGDATA");
        /* postgres built with systemd support would tell our NOTIFY_SOCKET it is READY. */
        unsetenv("NOTIFY_SOCKET");
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            xr_error_errno(err, errno, "could not wait for \"%s\"", argv[0]);
            return -1;
        }
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* Put the last lines of a log file into err's detail. */
static void detail_from_log(xr_error *err, const char *log_path)
{
    char *text;
    size_t n;
    xr_error e2 = XR_ERROR_INIT;
    if (xr_fs_read_all(log_path, 16 * 1024 * 1024, &text, &n, &e2))
        return;
    const char *start = n > 600 ? text + n - 600 : text;
    xr_error_detail(err, "see \"%s\": ...%s", log_path, start);
    free(text);
}

static xr_code own(const pgembed *pg, const char *path, xr_error *err)
{
    if (pg->drop && chown(path, pg->uid, pg->gid) < 0)
        return xr_error_errno(err, errno, "could not give \"%s\" to the cluster owner", path);
    return XR_OK;
}

xr_code pgembed_start(const char *dir, const char *run_as, pgembed **ret_pg, char **ret_conninfo,
                      xr_error *err)
{
    xr_code rc = XR_OK;
    char run[PATH_MAX], log_path[PATH_MAX], tool_log[PATH_MAX], path[PATH_MAX];
    char bin_initdb[PATH_MAX], bin_pgctl[PATH_MAX], bin_createdb[PATH_MAX], bin_psql[PATH_MAX];
    pgembed *pg = calloc(1, sizeof(*pg));
    if (!pg)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    if (!(pg->dir = strdup(dir)) || asprintf(&pg->data, "%s/data", dir) < 0) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto fail;
    }
    snprintf(run, sizeof(run), "%s/run", dir);
    snprintf(log_path, sizeof(log_path), "%s/postgresql.log", dir);
    snprintf(tool_log, sizeof(tool_log), "%s/tools.log", dir);
    snprintf(bin_initdb, sizeof(bin_initdb), "%s/initdb", XREG_PG_BINDIR);
    snprintf(bin_pgctl, sizeof(bin_pgctl), "%s/pg_ctl", XREG_PG_BINDIR);
    snprintf(bin_createdb, sizeof(bin_createdb), "%s/createdb", XREG_PG_BINDIR);
    snprintf(bin_psql, sizeof(bin_psql), "%s/psql", XREG_PG_BINDIR);
    /* The socket path must fit sockaddr_un (108 bytes) with "/.s.PGSQL.5432". */
    if (strlen(run) + 15 >= 108) {
        rc = xr_error_set(err, XR_E_CONFIG,
                          "state directory path is too long for the embedded cluster's socket "
                          "(\"%s\" must be under 92 bytes)", run);
        goto fail;
    }
    if (access(bin_initdb, X_OK) < 0) {
        rc = xr_error_set(err, XR_E_CONFIG,
                          "cannot run the embedded PostgreSQL: \"%s\" not found (install "
                          "postgresql-15, or set database.conninfo)", bin_initdb);
        goto fail;
    }
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam(run_as);
        if (!pw) {
            rc = xr_error_set(err, XR_E_CONFIG,
                              "database.embedded_user \"%s\" does not exist (initdb refuses to "
                              "run as root; create the user or set database.conninfo)", run_as);
            goto fail;
        }
        if (pw->pw_uid == 0) {
            rc = xr_error_set(err, XR_E_CONFIG,
                              "database.embedded_user \"%s\" is root; it must be unprivileged",
                              run_as);
            goto fail;
        }
        pg->drop = true;
        pg->uid = pw->pw_uid;
        pg->gid = pw->pw_gid;
    }
    rc = xr_fs_mkdir_p(dir, 0700, err);
    if (rc == XR_OK)
        rc = own(pg, dir, err);
    if (rc == XR_OK && pg->drop) {
        /* The owner must be able to pass through the state directory we (root) created. */
        char parent[PATH_MAX];
        snprintf(parent, sizeof(parent), "%s", dir);
        char *slash = strrchr(parent, '/');
        struct stat st;
        if (slash && slash != parent) {
            *slash = '\0';
            if (stat(parent, &st) == 0 && !(st.st_mode & S_IXOTH) &&
                chmod(parent, (st.st_mode & 07777) | S_IXOTH) < 0)
                rc = xr_error_errno(err, errno, "could not let \"%s\" traverse \"%s\"", run_as,
                                    parent);
        }
    }
    if (rc == XR_OK && mkdir(run, 0700) < 0 && errno != EEXIST)
        rc = xr_error_errno(err, errno, "could not create \"%s\"", run);
    if (rc == XR_OK)
        rc = own(pg, run, err);
    if (rc)
        goto fail;
    /* Tool logs are opened by the child after it dropped privileges. */
    int lfd = open(tool_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (lfd >= 0) {
        close(lfd);
        (void)own(pg, tool_log, NULL);
    }

    snprintf(path, sizeof(path), "%s/PG_VERSION", pg->data);
    if (access(path, F_OK) < 0) {
        xr_log_write(XR_LOG_NOTICE, "creating the embedded PostgreSQL cluster in \"%s\"",
                     pg->data);
        char *argv[] = {bin_initdb, "-D", pg->data, "-U", "xreg", "-A", "trust", "-E", "UTF8",
                        "--locale=C.UTF-8", NULL};
        int st = run_as_owner(pg, argv, tool_log, err);
        if (st != 0) {
            if (st > 0) {
                rc = xr_error_set(err, XR_E_IO, "initdb failed with exit status %d", st);
                detail_from_log(err, tool_log);
            } else
                rc = XR_E_IO;
            goto fail;
        }
        char *conf;
        if (asprintf(&conf,
                     "\n# added by xregd: private cluster, Unix socket only\n"
                     "listen_addresses = ''\n"
                     "unix_socket_directories = '%s'\n"
                     "unix_socket_permissions = 0700\n"
                     "max_connections = 100\n",
                     run) < 0) {
            rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
            goto fail;
        }
        snprintf(path, sizeof(path), "%s/postgresql.conf", pg->data);
        FILE *f = fopen(path, "a");
        if (!f || fputs(conf, f) < 0 || fclose(f) != 0) {
            rc = xr_error_errno(err, errno, "could not write \"%s\"", path);
            free(conf);
            goto fail;
        }
        free(conf);
    }

    char *status_argv[] = {bin_pgctl, "status", "-D", pg->data, NULL};
    int st = run_as_owner(pg, status_argv, tool_log, err);
    if (st < 0) {
        rc = XR_E_IO;
        goto fail;
    }
    if (st != 0) { /* 3: not running */
        char *argv[] = {bin_pgctl, "start", "-w", "-t", "120", "-D", pg->data, "-l", log_path,
                        NULL};
        st = run_as_owner(pg, argv, tool_log, err);
        if (st != 0) {
            if (st > 0) {
                rc = xr_error_set(err, XR_E_IO,
                                  "could not start the embedded PostgreSQL (pg_ctl exit status %d)",
                                  st);
                detail_from_log(err, log_path);
            } else
                rc = XR_E_IO;
            goto fail;
        }
        pg->started = true;
        xr_log_write(XR_LOG_INFO, "embedded PostgreSQL started in \"%s\"", pg->data);
    } else
        xr_log_write(XR_LOG_INFO, "embedded PostgreSQL in \"%s\" is already running", pg->data);

    /* createdb fails if the database exists; psql tells whether it does. */
    char *psql_argv[] = {bin_psql, "-X", "-q", "-h", run, "-U", "xreg", "-d", "xreg", "-c",
                         "select 1", NULL};
    if (run_as_owner(pg, psql_argv, tool_log, err) != 0) {
        char *argv[] = {bin_createdb, "-h", run, "-U", "xreg", "xreg", NULL};
        st = run_as_owner(pg, argv, tool_log, err);
        if (st != 0) {
            rc = st > 0 ? xr_error_set(err, XR_E_IO, "createdb failed with exit status %d", st)
                        : XR_E_IO;
            detail_from_log(err, tool_log);
            goto fail;
        }
    }
    if (asprintf(ret_conninfo, "host=%s dbname=xreg user=xreg", run) < 0) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto fail;
    }
    *ret_pg = pg;
    return XR_OK;
fail:
    pgembed_stop(pg);
    return rc;
}

pgembed *pgembed_stop(pgembed *pg)
{
    if (!pg)
        return NULL;
    if (pg->started) {
        char bin_pgctl[PATH_MAX], tool_log[PATH_MAX];
        snprintf(bin_pgctl, sizeof(bin_pgctl), "%s/pg_ctl", XREG_PG_BINDIR);
        snprintf(tool_log, sizeof(tool_log), "%s/tools.log", pg->dir);
        char *argv[] = {bin_pgctl, "stop", "-w", "-t", "60", "-m", "fast", "-D", pg->data, NULL};
        xr_error err = XR_ERROR_INIT;
        int st = run_as_owner(pg, argv, tool_log, &err);
        if (st != 0)
            xr_log_write(XR_LOG_WARNING, "could not stop the embedded PostgreSQL (status %d)%s%s",
                         st, err.msg[0] ? ": " : "", err.msg);
        else
            xr_log_write(XR_LOG_INFO, "embedded PostgreSQL stopped");
    }
    free(pg->dir);
    free(pg->data);
    free(pg);
    return NULL;
}
