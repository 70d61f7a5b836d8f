/*
 * Pseudonymization of patient identifiers (see pseudonym.h).
 */
#include "pseudonym.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xr-limits.h"

typedef enum pseudonym_mode {
    PSEUDONYM_KEEP,
    PSEUDONYM_DROP,
    PSEUDONYM_HMAC,
    PSEUDONYM_MODE_MAX,
} pseudonym_mode;

static const char *const mode_names[PSEUDONYM_MODE_MAX] = {"keep", "drop", "hmac"};

struct pseudonymizer {
    pseudonym_mode patient_id, patient_name, accession_number;
    unsigned char key[XR_PSEUDONYM_KEY_MAX_BYTES];
    size_t n_key;
};

static pseudonym_mode mode_from_string(const char *s)
{
    for (int i = 0; i < PSEUDONYM_MODE_MAX; i++)
        if (strcmp(s, mode_names[i]) == 0)
            return (pseudonym_mode)i;
    return PSEUDONYM_KEEP; /* the loader only lets the three names through */
}

static xr_code key_error(xr_error *err, const char *path, const char *fmt, const char *fix, ...)
    __attribute__((format(printf, 3, 5)));

static xr_code key_error(xr_error *err, const char *path, const char *fmt, const char *fix, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fix);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    xr_error_set(err, XR_E_CONFIG, "pseudonymize.key_file \"%s\": %s", path, what);
    if (fix)
        xr_error_detail(err, "%s", fix);
    return XR_E_CONFIG;
}

static xr_code read_key(pseudonymizer *ps, const char *path, xr_error *err)
{
    /* O_NOFOLLOW: the checks below must be about the file itself, not where a link points. */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP)
            return key_error(err, path, "is a symbolic link", "point the key at the file itself");
        return key_error(err, path, "cannot open: %s",
                         "create it with: (umask 077; openssl rand -hex 32 > FILE), owned by the "
                         "user xregd runs as",
                         strerror(e));
    }
    struct stat st;
    xr_code rc = XR_OK;
    if (fstat(fd, &st) != 0) {
        rc = key_error(err, path, "cannot stat: %s", NULL, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        rc = key_error(err, path, "is not a regular file", NULL);
    } else if (st.st_mode & 077) {
        rc = key_error(err, path, "is accessible to group or others (mode %04o)",
                       "the key protects patient identities: chmod 600 it", st.st_mode & 07777);
    } else if (st.st_uid != 0 && st.st_uid != geteuid()) {
        rc = key_error(err, path, "is owned by uid %u, neither root nor this process's user "
                                  "(uid %u)",
                       "chown it to the user xregd runs as", (unsigned)st.st_uid,
                       (unsigned)geteuid());
    } else if (st.st_size > XR_PSEUDONYM_KEY_MAX_BYTES + 2) {
        rc = key_error(err, path, "is %lld bytes but a key must be at most %d", NULL,
                       (long long)st.st_size, XR_PSEUDONYM_KEY_MAX_BYTES);
    }
    if (rc) {
        close(fd);
        return rc;
    }
    unsigned char buf[XR_PSEUDONYM_KEY_MAX_BYTES + 3];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof(buf) - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = key_error(err, path, "cannot read: %s", NULL, strerror(errno));
            break;
        }
        if (r == 0 || (n += (size_t)r) == sizeof(buf))
            break;
    }
    close(fd);
    while (rc == XR_OK && n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (rc == XR_OK && n < XR_PSEUDONYM_KEY_MIN_BYTES)
        rc = key_error(err, path, "holds %zu bytes but a key must have at least %d",
                       "create it with: (umask 077; openssl rand -hex 32 > FILE)", n,
                       XR_PSEUDONYM_KEY_MIN_BYTES);
    if (rc == XR_OK && n > XR_PSEUDONYM_KEY_MAX_BYTES)
        rc = key_error(err, path, "holds %zu bytes but a key must be at most %d", NULL, n,
                       XR_PSEUDONYM_KEY_MAX_BYTES);
    if (rc == XR_OK) {
        memcpy(ps->key, buf, n);
        ps->n_key = n;
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}

xr_code pseudonymizer_new(const xregd_config *cfg, pseudonymizer **ret, xr_error *err)
{
    pseudonymizer *ps = calloc(1, sizeof(*ps));
    if (!ps)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    ps->patient_id = mode_from_string(cfg->pseudonymize.patient_id);
    ps->patient_name = mode_from_string(cfg->pseudonymize.patient_name);
    ps->accession_number = mode_from_string(cfg->pseudonymize.accession_number);
    bool hmac = ps->patient_id == PSEUDONYM_HMAC || ps->patient_name == PSEUDONYM_HMAC ||
                ps->accession_number == PSEUDONYM_HMAC;
    if (hmac) {
        if (!cfg->pseudonymize.key_file[0]) {
            pseudonymizer_free(ps);
            return xr_error_set(err, XR_E_CONFIG,
                                "pseudonymization by hmac needs pseudonymize.key_file");
        }
        xr_code rc = read_key(ps, cfg->pseudonymize.key_file, err);
        if (rc) {
            pseudonymizer_free(ps);
            return rc;
        }
    }
    *ret = ps;
    return XR_OK;
}

pseudonymizer *pseudonymizer_free(pseudonymizer *ps)
{
    if (ps) {
        OPENSSL_cleanse(ps->key, sizeof(ps->key));
        free(ps);
    }
    return NULL;
}

bool pseudonymizer_is_active(const pseudonymizer *ps)
{
    return ps && (ps->patient_id != PSEUDONYM_KEEP || ps->patient_name != PSEUDONYM_KEEP ||
                  ps->accession_number != PSEUDONYM_KEEP);
}

/* HMAC of field/issuer/value as n_hex lower-case hex digits into out (size > n_hex). */
static void hmac_hex(const pseudonymizer *ps, const char *field, const char *issuer,
                     const char *value, size_t n_hex, char *out)
{
    /* "xreg-pseudonym-v1" NUL field NUL issuer NUL value; every part is a bounded header
     * field, so the message fits. */
    static const char version[] = "xreg-pseudonym-v1";
    unsigned char msg[sizeof(version) + 32 + 2 * sizeof(((dicom_header *)0)->patient_name)];
    size_t parts_n[4] = {sizeof(version), strlen(field) + 1, strlen(issuer) + 1, strlen(value)};
    const char *parts[4] = {version, field, issuer, value};
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < 4; i++) {
        if (parts_n[i] > sizeof(msg) - len)
            return; /* cannot happen with header fields; never pass the value through */
        memcpy(msg + len, parts[i], parts_n[i]);
        len += parts_n[i];
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n_md = 0;
    if (!HMAC(EVP_sha256(), ps->key, (int)ps->n_key, msg, len, md, &n_md) || n_md != 32)
        return; /* out of memory inside OpenSSL: the field becomes empty, not the identifier */
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n_hex / 2; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 0xf];
    }
    out[n_hex] = '\0';
}

static void apply_one(const pseudonymizer *ps, pseudonym_mode mode, const char *field,
                      const char *issuer, char *value, size_t size, size_t n_hex)
{
    if (mode == PSEUDONYM_KEEP || !value[0])
        return;
    if (mode == PSEUDONYM_DROP) {
        value[0] = '\0';
        return;
    }
    char hex[65];
    if (n_hex > 64 || n_hex + 1 > size)
        n_hex = size - 1 < 64 ? size - 1 : 64;
    n_hex &= ~(size_t)1;
    hmac_hex(ps, field, issuer, value, n_hex, hex);
    memcpy(value, hex, strlen(hex) + 1); /* at most n_hex + 1 <= size bytes */
}

void pseudonymizer_apply(const pseudonymizer *ps, dicom_header *h)
{
    if (!pseudonymizer_is_active(ps))
        return;
    apply_one(ps, ps->patient_id, "patient_id", h->issuer_of_patient_id, h->patient_id,
              sizeof(h->patient_id), 32);
    apply_one(ps, ps->patient_name, "patient_name", "", h->patient_name, sizeof(h->patient_name),
              16);
    apply_one(ps, ps->accession_number, "accession_number", "", h->accession_number,
              sizeof(h->accession_number), 16);
}

void pseudonymizer_describe(const pseudonymizer *ps, char *buf, size_t n)
{
    if (!pseudonymizer_is_active(ps)) {
        snprintf(buf, n, "off (identifiers kept)");
        return;
    }
    snprintf(buf, n, "patient_id %s, patient_name %s, accession_number %s",
             mode_names[ps->patient_id], mode_names[ps->patient_name],
             mode_names[ps->accession_number]);
}
