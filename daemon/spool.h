/*
 * The spool: xregd's durable queue of received objects.
 *
 *     <dir>/tmp/              objects being received (never acknowledged; emptied at start)
 *     <dir>/incoming/ID.dcm   acknowledged objects waiting for the registry, as received
 *     <dir>/incoming/ID.meta  their reception record (spool_meta as key=value lines)
 *     <dir>/rejected/ID.dcm   refused objects, kept for inspection; never deleted by xregd
 *     <dir>/rejected/ID.reason  why, with the reception record
 *
 * DESIGN
 * - An object is acknowledged (DIMSE Success) only after spool_commit returned: the .meta is
 *   written, fsync'd and renamed into incoming/ first, then the .dcm is fsync'd and renamed, then
 *   incoming/ is fsync'd. A .meta without its .dcm is a commit that never finished (never
 *   acknowledged) and is removed at start; a .dcm is the unit of work.
 * - IDs are "<received_at_us>-<pid>-<counter>": unique across restarts and in arrival order when
 *   sorted, so recovery replays the oldest first.
 * - The in-memory queue holds IDs only; at start every incoming/ object and every rejected/
 *   reason is enqueued again (processing is at-least-once; the registry is idempotent).
 * - Bytes in incoming/ are counted against max_bytes with an atomic reservation taken before the
 *   rename, so concurrent associations cannot overshoot the budget.
 *
 * Thread rule: every function is thread-safe. Association threads call spool_commit and
 * spool_reject; worker threads call spool_next, spool_done and spool_fail.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

typedef struct spool spool;

#define SPOOL_ID_BYTES 48

/* The reception record of one object; strings are NUL-terminated, "" when unknown. */
typedef struct spool_meta {
    int64_t received_at_us;
    uint64_t assoc_id;
    char calling_ae[17];
    char called_ae[17];
    char peer_host[64];
    char sop_class_uid[65];
    char sop_instance_uid[65];
    char transfer_syntax_uid[65];
} spool_meta;

typedef enum spool_kind {
    SPOOL_KIND_INCOMING, /* register the object */
    SPOOL_KIND_REJECTED, /* record the rejection */
    SPOOL_KIND_MAX,
} spool_kind;

typedef struct spool_item {
    spool_kind kind;
    char id[SPOOL_ID_BYTES];
    uint64_t n_bytes;
} spool_item;

/*
 * Open (creating) the spool at dir, remove leftovers of unfinished receptions and commits, count
 * the bytes waiting and enqueue every waiting object and rejection. The result is freed with
 * spool_close.
 */
__attribute__((warn_unused_result)) xr_code spool_open(const char *dir, uint64_t max_bytes,
                                                       spool **ret_spool, xr_error *err);
/* Wake every waiter, then free; accepts NULL; returns NULL. No thread may use it afterwards. */
spool *spool_close(spool *sp);

/* Directory where receptions are written before commit (borrowed, lives as long as sp). */
const char *spool_tmp_dir(const spool *sp);
const char *spool_dir(const spool *sp);
void spool_set_max_bytes(spool *sp, uint64_t max_bytes);

/*
 * Make the received file at tmp_path durable in incoming/ and enqueue it. XR_E_LIMIT when the
 * spool would exceed max_bytes, XR_E_IO when a write, fsync or rename fails; in both cases
 * tmp_path is removed and nothing is left in incoming/. ret_id receives the ID.
 */
__attribute__((warn_unused_result)) xr_code spool_commit(spool *sp, const char *tmp_path,
                                                         uint64_t n_bytes, const spool_meta *meta,
                                                         char ret_id[SPOOL_ID_BYTES],
                                                         xr_error *err);
/*
 * Move the file at path (in tmp/ or incoming/) to rejected/ with a reason file and enqueue the
 * rejection for recording. dimse_status is the status sent to the peer (0 if the object had been
 * acknowledged). If the move fails the file is removed so that tmp/ cannot fill up.
 */
__attribute__((warn_unused_result)) xr_code spool_reject(spool *sp, const char *path,
                                                         const spool_meta *meta,
                                                         uint16_t dimse_status, const char *reason,
                                                         char ret_id[SPOOL_ID_BYTES],
                                                         xr_error *err);

/* Wait for the next item; false once spool_shutdown was called. */
bool spool_next(spool *sp, spool_item *ret_item);
/*
 * Wait for the next item, then keep taking items until max are held or wait_ms have passed
 * since the first arrived (wait_ms <= 0: take only what is queued now). Returns how many were
 * written to ret_items; 0 once spool_shutdown was called with nothing taken. Items taken when a
 * shutdown interrupts the wait are returned: their files stay in incoming/ until spool_done.
 */
size_t spool_next_batch(spool *sp, spool_item *ret_items, size_t max, int64_t wait_ms);
/* Wake every spool_next waiter and make them return false. */
void spool_shutdown(spool *sp);
/* Sleep up to timeout_ms unless spool_shutdown is called; false if shut down. */
bool spool_sleep(spool *sp, int64_t timeout_ms);

/* The item was registered (or its rejection recorded): drop its incoming files. */
void spool_done(spool *sp, const spool_item *item);
/*
 * An acknowledged item cannot be registered (corrupt on disk, refused by the database
 * permanently): move it to rejected/ with reason and enqueue the rejection record.
 */
void spool_fail(spool *sp, const spool_item *item, const spool_meta *meta, const char *reason);

/* Paths of an item's files (into buf, which must hold PATH_MAX bytes). */
const char *spool_item_path(const spool *sp, const spool_item *item, char *buf, size_t n);
const char *spool_item_meta_path(const spool *sp, const spool_item *item, char *buf, size_t n);

/*
 * Read an item's reception record. For rejected items, *ret_status and ret_reason (of reason_bytes)
 * receive the status and reason (may be NULL for incoming items).
 */
__attribute__((warn_unused_result)) xr_code spool_meta_read(const spool *sp,
                                                            const spool_item *item,
                                                            spool_meta *ret_meta,
                                                            uint16_t *ret_status, char *ret_reason,
                                                            size_t reason_bytes, xr_error *err);
/* Parse a reception record from text (the .meta / .reason format). */
__attribute__((warn_unused_result)) xr_code spool_meta_parse(const char *text, size_t n,
                                                             spool_meta *ret_meta,
                                                             uint16_t *ret_status,
                                                             char *ret_reason, size_t reason_bytes,
                                                             xr_error *err);

/* Reception time (Unix microseconds) of the oldest object waiting in the queue, 0 if none. */
int64_t spool_oldest_us(spool *sp);
/* Queue depth and bytes waiting in incoming/. */
size_t spool_depth(spool *sp);
uint64_t spool_bytes(spool *sp);
