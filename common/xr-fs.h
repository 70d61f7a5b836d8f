/*
 * Durable file system helpers: the spool's write-fsync-rename-fsync(dir) sequence.
 *
 * Thread rule: all functions are reentrant.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* fsync the file at path (opened read-only). */
__attribute__((warn_unused_result)) xr_code xr_fs_fsync_path(const char *path, xr_error *err);
/* fsync a directory so that renames and unlinks inside it are durable. */
__attribute__((warn_unused_result)) xr_code xr_fs_fsync_dir(const char *dir, xr_error *err);
/* Create dir and its parents with mode (like mkdir -p); existing directories are fine. */
__attribute__((warn_unused_result)) xr_code xr_fs_mkdir_p(const char *dir, unsigned mode,
                                                          xr_error *err);
/*
 * Write data to path durably: temp file in the same directory, write, fsync, rename, fsync the
 * directory. On failure nothing is left at path's temp name and path is unchanged.
 */
__attribute__((warn_unused_result)) xr_code xr_fs_write_atomic(const char *path, const void *data,
                                                               size_t n, xr_error *err);
/*
 * Create path (which must not exist), write data and fsync it; no rename. For files that are
 * renamed into place by the caller, whose directory fsync then makes both durable. On failure
 * path is removed.
 */
__attribute__((warn_unused_result)) xr_code xr_fs_write_new_sync(const char *path,
                                                                 const void *data, size_t n,
                                                                 xr_error *err);
/*
 * Read a whole file (at most max_bytes) into a malloc'ed, NUL-terminated buffer; the caller
 * frees *ret_data with free().
 */
__attribute__((warn_unused_result)) xr_code xr_fs_read_all(const char *path, size_t max_bytes,
                                                           char **ret_data, size_t *ret_n,
                                                           xr_error *err);

#ifdef __cplusplus
}
#endif
