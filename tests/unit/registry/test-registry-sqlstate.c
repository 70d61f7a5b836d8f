/* registry_sqlstate_code: SQLSTATE -> xr_code classification table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "registry.h"

static const struct {
    const char *sqlstate;
    xr_code code;
} cases[] = {
    /* class 08: connection exception */
    {"08000", XR_E_TRANSIENT},
    {"08003", XR_E_TRANSIENT},
    {"08006", XR_E_TRANSIENT},
    {"08001", XR_E_TRANSIENT},
    {"08P01", XR_E_TRANSIENT},
    /* class 40: only serialization failure and deadlock are worth an immediate retry */
    {"40001", XR_E_TRANSIENT},
    {"40P01", XR_E_TRANSIENT},
    {"40000", XR_E_INTERNAL},
    {"40002", XR_E_INTERNAL},
    {"40003", XR_E_INTERNAL},
    /* class 53: insufficient resources */
    {"53000", XR_E_TRANSIENT},
    {"53100", XR_E_TRANSIENT},
    {"53200", XR_E_TRANSIENT},
    {"53300", XR_E_TRANSIENT},
    {"53400", XR_E_TRANSIENT},
    /* class 57: operator intervention */
    {"57P01", XR_E_TRANSIENT},
    {"57P02", XR_E_TRANSIENT},
    {"57P03", XR_E_TRANSIENT},
    {"57P05", XR_E_TRANSIENT},
    {"57014", XR_E_TRANSIENT},
    {"57P04", XR_E_INTERNAL}, /* database_dropped: will not come back */
    {"57000", XR_E_INTERNAL},
    {"55P03", XR_E_TRANSIENT},
    {"55000", XR_E_INTERNAL},
    /* classes 22 and 23: the data */
    {"22000", XR_E_INPUT},
    {"22001", XR_E_INPUT},
    {"22003", XR_E_INPUT},
    {"22007", XR_E_INPUT},
    {"22021", XR_E_INPUT},
    {"22P02", XR_E_INPUT},
    {"23000", XR_E_INPUT},
    {"23502", XR_E_INPUT},
    {"23503", XR_E_INPUT},
    {"23505", XR_E_INPUT},
    {"23514", XR_E_INPUT},
    /* configuration */
    {"28000", XR_E_CONFIG},
    {"28P01", XR_E_CONFIG},
    {"3D000", XR_E_CONFIG},
    {"42501", XR_E_CONFIG},
    /* everything else is a bug */
    {"42601", XR_E_INTERNAL},
    {"42P01", XR_E_INTERNAL},
    {"42703", XR_E_INTERNAL},
    {"25P02", XR_E_INTERNAL},
    {"0A000", XR_E_INTERNAL},
    {"XX000", XR_E_INTERNAL},
    {"XX001", XR_E_INTERNAL},
    {"P0001", XR_E_INTERNAL},
    {"58030", XR_E_INTERNAL},
    {"01000", XR_E_INTERNAL},
    /* success is not an error */
    {"00000", XR_OK},
    /* malformed input is never mistaken for a class */
    {"", XR_E_INTERNAL},
    {"08", XR_E_INTERNAL},
    {"0800", XR_E_INTERNAL},
    {"080000", XR_E_INTERNAL},
    {"08 00", XR_E_INTERNAL},
    {"08p01", XR_E_INTERNAL},
    {"22\n00", XR_E_INTERNAL},
};

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xr_code got = registry_sqlstate_code(cases[i].sqlstate);
        if (got != cases[i].code)
            fail_msg("SQLSTATE \"%s\": got %s, want %s", cases[i].sqlstate, xr_code_name(got),
                     xr_code_name(cases[i].code));
    }
}

static void test_null(void **state)
{
    (void)state;
    assert_int_equal(registry_sqlstate_code(NULL), XR_E_INTERNAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
