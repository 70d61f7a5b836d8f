/*
 * Minimal JSON output helpers shared by xregd's /status and xregctl's --json outputs.
 */
#pragma once

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Write s as a JSON string literal (control characters as \uXXXX); NULL is written as null.
 * s is taken as UTF-8 and passed through byte for byte. */
void xr_json_write_str(FILE *f, const char *s);

#ifdef __cplusplus
}
#endif
