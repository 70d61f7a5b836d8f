/*
 * Helpers shared by the dicom/ unit tests: temporary directories, running DCMTK's command-line
 * tools (paths come from meson through the environment), and building fixtures at run time with
 * dump2dcm, so no third-party data is committed.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* cmocka group setup/teardown for tests of dicom/: dicom_global_init / dicom_global_done. */
int tu_dicom_group_setup(void **state);
int tu_dicom_group_teardown(void **state);

/* cmocka per-test setup/teardown: *state is a struct tu_fixture with a fresh temporary dir. */
struct tu_fixture {
    char *dir;
};
int tu_fixture_setup(void **state);
int tu_fixture_teardown(void **state);
#define TU_WITH_DIR(test) \
    cmocka_unit_test_setup_teardown(test, tu_fixture_setup, tu_fixture_teardown)

/* Path of a tool from the environment variable env (set by meson); fails the test if unset. */
const char *tu_tool(const char *env);

/* mkdtemp under $TMPDIR (or /tmp); malloc'ed, remove with tu_rm_rf and free. */
char *tu_mkdtemp(const char *prefix);
/* rm -rf path (best effort). */
void tu_rm_rf(const char *path);
/* malloc'ed path "dir/name". */
char *tu_path(const char *dir, const char *name);

void tu_write_file(const char *path, const void *data, size_t n);
/* Whole file, malloc'ed, NUL-terminated beyond *ret_n; fails the test if unreadable. */
char *tu_read_file(const char *path, size_t *ret_n);
/* Number of directory entries (not "." or "..") in dir. */
int tu_count_entries(const char *dir);

/*
 * Run argv (NULL-terminated, argv[0] a path) and wait. stdout and stderr go to *ret_output
 * (malloc'ed, NUL-terminated) if ret_output is not NULL, else to /dev/null. Returns the exit
 * status, or 128 + signal number.
 */
int tu_run(char *const argv[], char **ret_output);
/* Start argv with output to /dev/null; tu_wait collects it. */
pid_t tu_spawn(char *const argv[]);
int tu_wait(pid_t pid);

/*
 * Write a CR test object with dump2dcm into dir/name: 64 rows x 48 columns, 16 bits allocated, 12
 * stored, with fixed UIDs and demographics (see the .c file). extra_dump is appended to the dump
 * text (may be NULL), extra_args go to dump2dcm (NULL-terminated, may be NULL). With
 * with_pixels false there is no Pixel Data. Returns the malloc'ed path.
 */
char *tu_make_cr(const char *dir, const char *name, const char *extra_dump,
                 const char *const extra_args[], bool with_pixels);
/* As tu_make_cr but with the whole dump text given (no default attributes). */
char *tu_make_from_dump(const char *dir, const char *name, const char *dump,
                        const char *const extra_args[]);

/* Offset of the data set in a Part-10 file (after the meta header), or 0 if none is found. */
size_t tu_dataset_offset(const char *data, size_t n);

/* The UIDs tu_make_cr writes. */
#define TU_SOP_INSTANCE_UID "1.2.826.0.1.3680043.10.1234.1.1"
#define TU_STUDY_UID "1.2.826.0.1.3680043.10.1234.2.1"
#define TU_SERIES_UID "1.2.826.0.1.3680043.10.1234.3.1"
#define TU_CR_SOP_CLASS "1.2.840.10008.5.1.4.1.1.1"
