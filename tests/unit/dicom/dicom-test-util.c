/* Helpers for the dicom/ unit tests; see dicom-test-util.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dicom-test-util.h"
#include "dicom.h"

const char *tu_tool(const char *env)
{
    const char *p = getenv(env);
    if (!p || !*p)
        fail_msg("environment variable %s is not set (meson passes the DCMTK tool paths)", env);
    return p;
}

char *tu_mkdtemp(const char *prefix)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    char *tmpl = NULL;
    if (asprintf(&tmpl, "%s/%s-XXXXXX", base, prefix) < 0)
        fail_msg("out of memory");
    if (!mkdtemp(tmpl))
        fail_msg("mkdtemp(%s): %s", tmpl, strerror(errno));
    return tmpl;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    (void)remove(path);
    return 0;
}

void tu_rm_rf(const char *path)
{
    if (path)
        (void)nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *tu_path(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        fail_msg("out of memory");
    return p;
}

void tu_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("fopen(%s): %s", path, strerror(errno));
    if (n > 0 && fwrite(data, 1, n, f) != n)
        fail_msg("fwrite(%s) failed", path);
    if (fclose(f) != 0)
        fail_msg("fclose(%s): %s", path, strerror(errno));
}

char *tu_read_file(const char *path, size_t *ret_n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("fopen(%s): %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        if (got == 0)
            break;
        n += got;
    }
    fclose(f);
    buf[n] = '\0';
    *ret_n = n;
    return buf;
}

int tu_count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("opendir(%s): %s", dir, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static pid_t start(char *const argv[], int out_fd)
{
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        dup2(out_fd >= 0 ? out_fd : devnull, 1);
        dup2(out_fd >= 0 ? out_fd : devnull, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

int tu_wait(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            fail_msg("waitpid: %s", strerror(errno));
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

pid_t tu_spawn(char *const argv[])
{
    return start(argv, -1);
}

int tu_run(char *const argv[], char **ret_output)
{
    if (!ret_output)
        return tu_wait(start(argv, -1));
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        fail_msg("pipe: %s", strerror(errno));
    pid_t pid = start(argv, p[1]);
    close(p[1]);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t got = read(p[0], buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(p[0]);
    buf[n] = '\0';
    *ret_output = buf;
    return tu_wait(pid);
}

/* Default attributes of the CR test object, one dump2dcm line each. */
static const char *const cr_lines[] = {
    "(0002,0010) UI [1.2.840.10008.1.2.1]",
    "(0008,0005) CS [ISO_IR 100]",
    "(0008,0016) UI [" TU_CR_SOP_CLASS "]",
    "(0008,0018) UI [" TU_SOP_INSTANCE_UID "]",
    "(0008,0020) DA [20240131]",
    "(0008,0030) TM [101530.123]",
    "(0008,0050) SH [ACC0001]",
    "(0008,0060) CS [CR]",
    "(0008,0070) LO [ACME Imaging]",
    "(0008,0080) LO [General Hospital]",
    "(0008,1030) LO [CHEST PA]",
    "(0008,103e) LO [PA view]",
    "(0010,0010) PN [Doe^Jane]",
    "(0010,0020) LO [PAT001]",
    "(0010,0021) LO [HOSP]",
    "(0010,0030) DA [19700101]",
    "(0010,0040) CS [F]",
    "(0018,0015) CS [CHEST]",
    "(0018,5101) CS [PA]",
    "(0020,000d) UI [" TU_STUDY_UID "]",
    "(0020,000e) UI [" TU_SERIES_UID "]",
    "(0020,0011) IS [3]",
    "(0020,0013) IS [7]",
    "(0020,0060) CS [L]",
    "(0028,0002) US 1",
    "(0028,0004) CS [MONOCHROME2]",
    "(0028,0010) US 64",
    "(0028,0011) US 48",
    "(0028,0100) US 16",
    "(0028,0101) US 12",
    "(0028,0102) US 11",
    "(0028,0103) US 0",
};

#define CR_ROWS 64
#define CR_COLUMNS 48

char *tu_make_from_dump(const char *dir, const char *name, const char *dump,
                        const char *const extra_args[])
{
    char *out = tu_path(dir, name);
    char *dump_path = NULL;
    if (asprintf(&dump_path, "%s.dump", out) < 0)
        fail_msg("out of memory");
    tu_write_file(dump_path, dump, strlen(dump));

    char *argv[16];
    int argc = 0;
    argv[argc++] = (char *)tu_tool("DUMP2DCM");
    for (int i = 0; extra_args && extra_args[i] && argc < 12; i++)
        argv[argc++] = (char *)extra_args[i];
    argv[argc++] = dump_path;
    argv[argc++] = out;
    argv[argc] = NULL;
    char *output = NULL;
    int rc = tu_run(argv, &output);
    if (rc != 0)
        fail_msg("dump2dcm %s failed (%d): %s", dump_path, rc, output);
    free(output);
    free(dump_path);
    return out;
}

char *tu_make_cr(const char *dir, const char *name, const char *extra_dump,
                 const char *const extra_args[], bool with_pixels)
{
    /* Pixel data: a deterministic ramp, 12 significant bits. */
    char *raw_path = NULL;
    if (asprintf(&raw_path, "%s/%s.raw", dir, name) < 0)
        fail_msg("out of memory");
    uint8_t pixels[CR_ROWS * CR_COLUMNS * 2];
    for (int y = 0; y < CR_ROWS; y++)
        for (int x = 0; x < CR_COLUMNS; x++) {
            unsigned v = (unsigned)(x * 37 + y * 11) % 4096;
            pixels[(y * CR_COLUMNS + x) * 2] = (uint8_t)(v & 0xff);
            pixels[(y * CR_COLUMNS + x) * 2 + 1] = (uint8_t)(v >> 8);
        }
    tu_write_file(raw_path, pixels, sizeof(pixels));

    size_t cap = 8192 + (extra_dump ? strlen(extra_dump) : 0);
    char *dump = malloc(cap);
    size_t n = 0;
    dump[0] = '\0';
    for (size_t i = 0; i < sizeof(cr_lines) / sizeof(cr_lines[0]); i++) {
        /* A tag named in extra_dump replaces the default line ("(gggg,eeee) DEL" removes it). */
        char tag[12];
        memcpy(tag, cr_lines[i], 11);
        tag[11] = '\0';
        if (extra_dump && strcasestr(extra_dump, tag))
            continue;
        n += (size_t)snprintf(dump + n, cap - n, "%s\n", cr_lines[i]);
    }
    if (extra_dump) {
        const char *line = extra_dump;
        while (*line) {
            const char *end = strchr(line, '\n');
            size_t len = end ? (size_t)(end - line) : strlen(line);
            if (!(len >= 15 && strncmp(line + 12, "DEL", 3) == 0))
                n += (size_t)snprintf(dump + n, cap - n, "%.*s\n", (int)len, line);
            line += len + (end ? 1 : 0);
        }
    }
    if (with_pixels)
        n += (size_t)snprintf(dump + n, cap - n, "(7fe0,0010) OW =%s\n", raw_path);
    char *out = tu_make_from_dump(dir, name, dump, extra_args);
    free(dump);
    free(raw_path);
    return out;
}

size_t tu_dataset_offset(const char *data, size_t n)
{
    /* 128-byte preamble, "DICM", then (0002,0000) UL 4 <group length> in explicit VR LE. */
    if (n < 144 || memcmp(data + 128, "DICM", 4) != 0)
        return 0;
    const unsigned char *p = (const unsigned char *)data + 132;
    if (p[0] != 0x02 || p[1] != 0 || p[2] != 0 || p[3] != 0 || p[4] != 'U' || p[5] != 'L')
        return 0;
    uint32_t gl =
        (uint32_t)p[8] | (uint32_t)p[9] << 8 | (uint32_t)p[10] << 16 | (uint32_t)p[11] << 24;
    size_t off = 144 + (size_t)gl;
    return off <= n ? off : 0;
}

int tu_dicom_group_setup(void **state)
{
    (void)state;
    xr_error err = XR_ERROR_INIT;
    if (dicom_global_init(&err) != XR_OK) {
        fprintf(stderr, "dicom_global_init: %s (%s)\n", err.msg, err.detail);
        return -1;
    }
    return 0;
}

int tu_dicom_group_teardown(void **state)
{
    (void)state;
    dicom_global_done();
    return 0;
}

int tu_fixture_setup(void **state)
{
    struct tu_fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    f->dir = tu_mkdtemp("xreg-dicom-test");
    *state = f;
    return 0;
}

int tu_fixture_teardown(void **state)
{
    struct tu_fixture *f = *state;
    tu_rm_rf(f->dir);
    free(f->dir);
    free(f);
    return 0;
}
