/* Unit tests for common/: xr_error formatting and the durable file helpers. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "xr-error.h"
#include "xr-fs.h"

static void test_error_prefix_and_errno(void **state)
{
    (void)state;
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(xr_error_errno(&err, ENOENT, "could not open \"%s\"", "x.dcm"), XR_E_IO);
    assert_string_equal(err.msg, "could not open \"x.dcm\": No such file or directory");
    assert_int_equal(err.sys_errno, ENOENT);
    xr_error_prefix(&err, "reading %s: ", "spool");
    assert_string_equal(err.msg, "reading spool: could not open \"x.dcm\": No such file or directory");
    assert_string_equal(xr_code_name(XR_E_TRANSIENT), "transient");
    assert_string_equal(xr_code_name((xr_code)99), "invalid");
    /* NULL err is allowed and still returns the code */
    assert_int_equal(xr_error_set(NULL, XR_E_LIMIT, "x"), XR_E_LIMIT);
}

static void test_write_atomic_and_read(void **state)
{
    (void)state;
    char dir[] = "/tmp/xr-fs-test.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[512], path[600];
    snprintf(sub, sizeof(sub), "%s/a/b/c", dir);
    xr_error err = XR_ERROR_INIT;
    assert_int_equal(xr_fs_mkdir_p(sub, 0750, &err), XR_OK);
    assert_int_equal(xr_fs_mkdir_p(sub, 0750, &err), XR_OK); /* existing is fine */
    snprintf(path, sizeof(path), "%s/f.txt", sub);
    assert_int_equal(xr_fs_write_atomic(path, "hello", 5, &err), XR_OK);
    char *data;
    size_t n;
    assert_int_equal(xr_fs_read_all(path, 100, &data, &n, &err), XR_OK);
    assert_int_equal(n, 5);
    assert_string_equal(data, "hello");
    free(data);
    /* the limit: exactly at it passes, one below fails */
    assert_int_equal(xr_fs_read_all(path, 5, &data, &n, &err), XR_OK);
    free(data);
    assert_int_equal(xr_fs_read_all(path, 4, &data, &n, &err), XR_E_LIMIT);
    assert_non_null(strstr(err.msg, "is 5 bytes but must be at most 4"));
    /* a file where a directory is wanted */
    assert_int_equal(xr_fs_mkdir_p(path, 0750, &err), XR_E_IO);
    /* reading a directory */
    assert_int_equal(xr_fs_read_all(sub, 100, &data, &n, &err), XR_E_INPUT);
    /* writing into a missing directory fails cleanly */
    snprintf(path, sizeof(path), "%s/missing/f.txt", dir);
    assert_int_equal(xr_fs_write_atomic(path, "x", 1, &err), XR_E_IO);
    assert_int_equal(err.sys_errno, ENOENT);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_prefix_and_errno),
        cmocka_unit_test(test_write_atomic_and_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
