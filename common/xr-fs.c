/* Durable file helpers (see xr-fs.h). */
#include "xr-fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

xr_code xr_fs_fsync_path(const char *path, xr_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not open \"%s\"", path);
    if (fsync(fd) < 0) {
        int e = errno;
        close(fd);
        return xr_error_errno(err, e, "could not fsync \"%s\"", path);
    }
    close(fd);
    return XR_OK;
}

xr_code xr_fs_fsync_dir(const char *dir, xr_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not open directory \"%s\"", dir);
    if (fsync(fd) < 0) {
        int e = errno;
        close(fd);
        return xr_error_errno(err, e, "could not fsync directory \"%s\"", dir);
    }
    close(fd);
    return XR_OK;
}

xr_code xr_fs_mkdir_p(const char *dir, unsigned mode, xr_error *err)
{
    char buf[PATH_MAX];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof(buf))
        return xr_error_set(err, XR_E_INPUT, "invalid directory path \"%s\"", dir);
    memcpy(buf, dir, len + 1);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return xr_error_errno(err, errno, "could not create directory \"%s\"", buf);
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(dir, &st) < 0)
        return xr_error_errno(err, errno, "could not stat \"%s\"", dir);
    if (!S_ISDIR(st.st_mode))
        return xr_error_set(err, XR_E_IO, "\"%s\" exists and is not a directory", dir);
    return XR_OK;
}

/* Write all of data to fd; errno is kept on failure. */
static bool write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

xr_code xr_fs_write_new_sync(const char *path, const void *data, size_t n, xr_error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not create \"%s\"", path);
    const char *what = "write";
    if (!write_all(fd, data, n) || (what = "fsync", fsync(fd) < 0)) {
        int e = errno;
        close(fd);
        unlink(path);
        return xr_error_errno(err, e, "could not %s \"%s\"", what, path);
    }
    if (close(fd) < 0) {
        int e = errno;
        unlink(path);
        return xr_error_errno(err, e, "could not close \"%s\"", path);
    }
    return XR_OK;
}

xr_code xr_fs_write_atomic(const char *path, const void *data, size_t n, xr_error *err)
{
    char tmp[PATH_MAX];
    char dir[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return xr_error_set(err, XR_E_INPUT, "path too long: \"%s\"", path);
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), ".");

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not create \"%s\"", tmp);
    if (!write_all(fd, data, n)) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return xr_error_errno(err, e, "could not write \"%s\"", tmp);
    }
    if (fsync(fd) < 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return xr_error_errno(err, e, "could not fsync \"%s\"", tmp);
    }
    if (close(fd) < 0) {
        int e = errno;
        unlink(tmp);
        return xr_error_errno(err, e, "could not close \"%s\"", tmp);
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return xr_error_errno(err, e, "could not rename \"%s\" to \"%s\"", tmp, path);
    }
    return xr_fs_fsync_dir(dir, err);
}

xr_code xr_fs_read_all(const char *path, size_t max_bytes, char **ret_data, size_t *ret_n,
                       xr_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not open \"%s\"", path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return xr_error_errno(err, e, "could not stat \"%s\"", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return xr_error_set(err, XR_E_INPUT, "\"%s\" is not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        close(fd);
        return xr_error_set(err, XR_E_LIMIT, "\"%s\" is %lld bytes but must be at most %zu",
                            path, (long long)st.st_size, max_bytes);
    }
    size_t cap = (size_t)st.st_size;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return xr_error_set(err, XR_E_NOMEM, "out of memory reading \"%s\"", path);
    }
    size_t got = 0;
    while (got < cap) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            free(buf);
            close(fd);
            return xr_error_errno(err, e, "could not read \"%s\"", path);
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *ret_data = buf;
    *ret_n = got;
    return XR_OK;
}
