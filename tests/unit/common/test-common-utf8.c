/* UTF-8 validation and sanitizing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "xr-utf8.h"

static void test_valid(void **state)
{
    (void)state;
    assert_true(xr_utf8_is_valid(""));
    assert_true(xr_utf8_is_valid("Doe^John"));
    assert_true(xr_utf8_is_valid("M\xc3\xbcller"));          /* ü */
    assert_true(xr_utf8_is_valid("\xe5\xb1\xb1\xe7\x94\xb0")); /* 山田 */
    assert_true(xr_utf8_is_valid("\xf0\x9f\x98\x80"));         /* U+1F600 */
    assert_false(xr_utf8_is_valid("M\xfcller"));               /* Latin-1 ü */
    assert_false(xr_utf8_is_valid("\xc0\xaf"));                /* overlong */
    assert_false(xr_utf8_is_valid("\xed\xa0\x80"));            /* surrogate */
    assert_false(xr_utf8_is_valid("\xf4\x90\x80\x80"));        /* > U+10FFFF */
    assert_false(xr_utf8_is_valid("\xe5\xb1"));                /* truncated */
}

static void test_sanitize(void **state)
{
    (void)state;
    char a[] = "M\xfcller^Hans";
    assert_int_equal(xr_utf8_sanitize(a), 1);
    assert_string_equal(a, "M?ller^Hans");
    char b[] = "ok \xc3\xbc \xe5\xb1";
    assert_int_equal(xr_utf8_sanitize(b), 2);
    assert_string_equal(b, "ok \xc3\xbc ??");
    char c[] = "plain";
    assert_int_equal(xr_utf8_sanitize(c), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_sanitize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
