/* test_kb_err: the error table of common/include/kb_err.h. In: every code of
 * KB_ERRNO_MAP, some -errno values, codes in neither. Out: pass/fail on the
 * texts and names kb_strerror() / kb_errname() give them. No state. */
#include "kb_test.h"

#include "kb_err.h"

#include <errno.h>
#include <limits.h>

/* The table itself, expanded here the same way kb_err.c does, so that a code
 * added to the map is covered without touching this file. */
struct code {
    int val;
    const char *name; /* "KB_E" #name */
    const char *text;
};
static const struct code codes[] = {
#define T(name, val, text) {val, "KB_E" #name, text},
    KB_ERRNO_MAP(T)
#undef T
};
#define NCODES (sizeof codes / sizeof codes[0])

static void test_kb_err_every_code_has_text_and_name(void **state)
{
    (void)state;
    assert_true(NCODES >= 20); /* -1000 .. -1020 as documented, maybe more */
    for (size_t i = 0; i < NCODES; i++) {
        const char *t = kb_strerror(codes[i].val);
        const char *n = kb_errname(codes[i].val);
        assert_non_null(t);
        assert_non_null(n);
        assert_string_equal(t, codes[i].text);
        assert_string_equal(n, codes[i].name);
        assert_true(strlen(t) > 0);
        assert_string_not_equal(t, "unknown error");
    }
}

static void test_kb_err_codes_are_unique_negative_and_stable(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCODES; i++) {
        /* Values travel on the wire: they are the documented -1000 - i. */
        assert_int_equal(codes[i].val, -1000 - (int)i);
        for (size_t j = i + 1; j < NCODES; j++) {
            assert_int_not_equal(codes[i].val, codes[j].val);
            assert_string_not_equal(codes[i].name, codes[j].name);
        }
    }
    assert_int_equal(KB_EINVAL, -1000);
    assert_int_equal(KB_EGAP, -1017);
    assert_int_equal(KB_ENOMEM, -1019);
    assert_int_equal(KB_EACCES, -1020);
    assert_int_equal(KB_ECONFLICT, -1021);
}

static void test_kb_err_zero_is_success(void **state)
{
    (void)state;
    assert_string_equal(kb_strerror(0), "success");
    assert_string_equal(kb_errname(0), "OK");
}

static void test_kb_err_errno_passes_through(void **state)
{
    (void)state;
    static const int errs[] = {ENOENT, EAGAIN, EINTR,       ENOSPC,
                               EACCES, EEXIST, EHOSTUNREACH};
    static const char *names[] = {"ENOENT", "EAGAIN", "EINTR",       "ENOSPC",
                                  "EACCES", "EEXIST", "EHOSTUNREACH"};
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
        char want[256];
        snprintf(want, sizeof want, "%s", strerror(errs[i]));
        assert_string_equal(kb_strerror(-errs[i]), want);
        assert_string_equal(kb_errname(-errs[i]), names[i]);
    }
    /* No errno value reaches the project range: the two never collide. */
    assert_true(-ENOENT > KB_EINVAL);
}

static void test_kb_err_unknown_code(void **state)
{
    (void)state;
    static const int unknown[] = {1, 42, INT_MAX, -5000, INT_MIN};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        assert_string_equal(kb_strerror(unknown[i]), "unknown error");
        assert_string_equal(kb_errname(unknown[i]), "UNKNOWN");
    }
    /* Just past the table, inside the errno range: never NULL, never
     * mistaken for a project code. */
    const char *t = kb_strerror(KB_ECONFLICT - 1);
    const char *n = kb_errname(KB_ECONFLICT - 1);
    assert_non_null(t);
    assert_non_null(n);
    assert_true(strncmp(n, "KB_E", 4) != 0);
    for (size_t i = 0; i < NCODES; i++)
        assert_string_not_equal(t, codes[i].text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kb_err_every_code_has_text_and_name),
        cmocka_unit_test(test_kb_err_codes_are_unique_negative_and_stable),
        cmocka_unit_test(test_kb_err_zero_is_success),
        cmocka_unit_test(test_kb_err_errno_passes_through),
        cmocka_unit_test(test_kb_err_unknown_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
