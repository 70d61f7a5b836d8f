/* UTF-8 validation (see xr-utf8.h). */
#include "xr-utf8.h"

/* Length of the valid UTF-8 sequence at p, or 0 if it is not one. */
static size_t seq_len(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80)
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        if (p[1] < lo || p[1] > hi || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        return 4;
    }
    return 0;
}

bool xr_utf8_is_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = seq_len(p);
        if (!n)
            return false;
        p += n;
    }
    return true;
}

size_t xr_utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t replaced = 0;
    while (*p) {
        size_t n = seq_len(p);
        if (!n) {
            *p++ = '?';
            replaced++;
        } else
            p += n;
    }
    return replaced;
}
