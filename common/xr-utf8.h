/*
 * UTF-8 validation: PostgreSQL refuses invalid UTF-8 (SQLSTATE 22021), and DICOM text in an
 * undeclared or unconvertible character set must not make an object unregistrable.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* True if s (NUL-terminated) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool xr_utf8_is_valid(const char *s);
/* Replace every byte that is not part of a valid UTF-8 sequence with '?', in place; returns the
 * number of bytes replaced. */
size_t xr_utf8_sanitize(char *s);

#ifdef __cplusplus
}
#endif
