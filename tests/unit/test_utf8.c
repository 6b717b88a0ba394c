/*
 * test_utf8.c — unit tests for utf8.c, the gate every outside text passes on its way into
 * JSON: validation by Unicode's Table 3-7, one U+FFFD per maximal invalid subpart,
 * truncation on character boundaries only, and JSON strings that jansson always accepts.
 * Inputs are handed over in exact-size heap buffers so a read past |len| shows up under
 * AddressSanitizer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/alloc.h"
#include "switchboard/utf8.h"

#define R SB_UTF8_REPLACEMENT

/* An exact-size copy of |len| bytes, so ASan sees any overread. */
static char *exact(const char *s, size_t len)
{
    char *p = sb_malloc(len ? len : 1);
    if (len > 0)
        memcpy(p, s, len);
    return p;
}

static int valid(const char *s, size_t len)
{
    char *p = exact(s, len);
    int v = sb_utf8_valid(p, len);
    sb_free(p);
    return v;
}

static void expect_repair(const char *in, size_t len, const char *want)
{
    char *p = exact(in, len);
    char *got = sb_utf8_dup(p, len);
    assert_string_equal(got, want);
    assert_true(sb_utf8_valid(got, strlen(got)));
    sb_free(got);
    sb_free(p);
}

#define VALID(lit) valid(lit, sizeof(lit) - 1)
#define REPAIR(lit, want) expect_repair(lit, sizeof(lit) - 1, want)

static void test_valid_sequences(void **state)
{
    (void)state;
    assert_true(valid(NULL, 0));
    assert_true(VALID("plain ascii ~"));
    assert_true(VALID("\xC2\x80"));         /* U+0080, smallest 2-byte */
    assert_true(VALID("\xC3\xA9"));         /* é */
    assert_true(VALID("\xDF\xBF"));         /* U+07FF */
    assert_true(VALID("\xE0\xA0\x80"));     /* U+0800, smallest 3-byte */
    assert_true(VALID("\xE2\x82\xAC"));     /* € */
    assert_true(VALID("\xED\x9F\xBF"));     /* U+D7FF, just below the surrogates */
    assert_true(VALID("\xEE\x80\x80"));     /* U+E000, just above them */
    assert_true(VALID("\xEF\xBF\xBD"));     /* U+FFFD */
    assert_true(VALID("\xF0\x90\x80\x80")); /* U+10000, smallest 4-byte */
    assert_true(VALID("\xF0\x9F\x98\x80")); /* 😀 */
    assert_true(VALID("\xF4\x8F\xBF\xBF")); /* U+10FFFF, the last code point */
}

static void test_invalid_sequences(void **state)
{
    (void)state;
    assert_false(VALID("\x80"));             /* lone continuation */
    assert_false(VALID("\xC0\xAF"));         /* overlong '/' */
    assert_false(VALID("\xC1\xBF"));         /* overlong */
    assert_false(VALID("\xE0\x9F\xBF"));     /* overlong 3-byte */
    assert_false(VALID("\xED\xA0\x80"));     /* U+D800 surrogate */
    assert_false(VALID("\xED\xBF\xBF"));     /* U+DFFF surrogate */
    assert_false(VALID("\xF0\x8F\xBF\xBF")); /* overlong 4-byte */
    assert_false(VALID("\xF4\x90\x80\x80")); /* U+110000 */
    assert_false(VALID("\xF5\x80\x80\x80")); /* lead past F4 */
    assert_false(VALID("\xFF"));
    assert_false(VALID("\xC3"));         /* cut at the end */
    assert_false(VALID("\xE2\x82"));     /* cut at the end */
    assert_false(VALID("\xF0\x9F\x98")); /* cut at the end */
    assert_false(VALID("a\0b"));         /* NUL: results are C strings too */
}

/* Each of these is refused by jansson too, so the two can never disagree. */
static void test_agrees_with_jansson(void **state)
{
    (void)state;
    for (unsigned a = 0; a < 256; a++) {
        for (unsigned b = 0; b < 256; b += 3) {
            char s[4] = {(char)a, (char)b, (char)0x80, (char)0x80};
            for (size_t len = 1; len <= 4; len++) {
                json_t *j = json_stringn(s, len);
                int jv = j != NULL && memchr(s, 0, len) == NULL;
                assert_int_equal(sb_utf8_valid(s, len), jv);
                json_decref(j);
            }
        }
    }
}

static void test_repair_maximal_subparts(void **state)
{
    (void)state;
    REPAIR("ok", "ok");
    REPAIR("\x80", R);
    REPAIR("a\xFF"
           "b",
           "a" R "b");
    /* A cut 3-byte sequence is one subpart, then the next character stands. */
    REPAIR("\xE2\x82"
           "A",
           R "A");
    /* The exact bytes behind issue 8: jansson's message cut after the backslash and the
     * first byte of é. */
    REPAIR("\\\xC3", "\\" R);
    /* Surrogate: ED is a lead, A0 is not allowed after it, so ED and A0, 80 are three
     * subparts (Unicode's example). */
    REPAIR("\xED\xA0\x80", R R R);
    /* Overlong C0 AF: two subparts. */
    REPAIR("\xC0\xAF", R R);
    /* F4 90: F4 alone is a subpart, 90 another. */
    REPAIR("\xF4\x90\x80\x80", R R R R);
    /* A 4-byte sequence cut after three bytes: one replacement. */
    REPAIR("\xF0\x9F\x98", R);
    REPAIR("a\0b", "a" R "b");
}

static void test_copy_cuts_on_boundaries(void **state)
{
    (void)state;
    char out[8];
    /* "é€" is 5 bytes; capacity 5 leaves room for 4: only é (2) fits whole before €. */
    size_t n = sb_utf8_copy(out, 5, "\xC3\xA9\xE2\x82\xAC", 5);
    assert_int_equal(n, 2);
    assert_string_equal(out, "\xC3\xA9");
    n = sb_utf8_copy(out, 6, "\xC3\xA9\xE2\x82\xAC", 5);
    assert_int_equal(n, 5);
    /* A replacement character is never cut either. */
    n = sb_utf8_copy(out, 4, "a\xFF", 2);
    assert_int_equal(n, 1);
    assert_string_equal(out, "a");
    n = sb_utf8_copy(out, 1, "abc", 3);
    assert_int_equal(n, 0);
    assert_string_equal(out, "");
    n = sb_utf8_copy(out, sizeof(out), NULL, 0);
    assert_int_equal(n, 0);
}

static void test_fix_in_place(void **state)
{
    (void)state;
    char buf[8];
    memcpy(buf, "ab\xC3", 4); /* a character cut by a size bound */
    sb_utf8_fix(buf, sizeof(buf));
    assert_string_equal(buf, "ab" R);
    /* Repair that would grow past the buffer is cut on a boundary. */
    memcpy(buf, "\xFF\xFF\xFF\xFF", 5);
    sb_utf8_fix(buf, sizeof(buf));
    assert_string_equal(buf, R R);
    /* Valid text is untouched. */
    memcpy(buf, "\xE2\x82\xAC ok", 7);
    sb_utf8_fix(buf, sizeof(buf));
    assert_string_equal(buf, "\xE2\x82\xAC ok");
}

static void test_json_text_never_null(void **state)
{
    (void)state;
    json_t *j = sb_json_text("{\"x\":\"\\\xC3");
    assert_non_null(j);
    assert_string_equal(json_string_value(j), "{\"x\":\"\\" R);
    char *dumped = json_dumps(j, JSON_ENCODE_ANY);
    assert_non_null(dumped);
    free(dumped);
    json_decref(j);

    j = sb_json_text(NULL);
    assert_string_equal(json_string_value(j), "");
    json_decref(j);

    /* Valid text keeps its bytes, a NUL inside a counted string becomes U+FFFD. */
    j = sb_json_textn("\xF0\x9F\x98\x80", 4);
    assert_int_equal(json_string_length(j), 4);
    json_decref(j);
    char *p = exact("a\0b", 3);
    j = sb_json_textn(p, 3);
    assert_string_equal(json_string_value(j), "a" R "b");
    json_decref(j);
    sb_free(p);

    /* Every 2-byte input, whatever it holds, gives a JSON string. */
    for (unsigned a = 0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++) {
            char s[2] = {(char)a, (char)b};
            j = sb_json_textn(s, 2);
            assert_non_null(j);
            json_decref(j);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_sequences),
        cmocka_unit_test(test_invalid_sequences),
        cmocka_unit_test(test_agrees_with_jansson),
        cmocka_unit_test(test_repair_maximal_subparts),
        cmocka_unit_test(test_copy_cuts_on_boundaries),
        cmocka_unit_test(test_fix_in_place),
        cmocka_unit_test(test_json_text_never_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
