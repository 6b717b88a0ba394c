/*
 * test_jsontext.c — unit tests for jsontext.c: the direct JSON writers must write what
 * jansson writes for the same value (strings and reals), so texts built either way read
 * the same (sb_json_write against json_dumps on every document of the corpora);
 * likewise util.c's number formatters against printf.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/alloc.h"
#include "switchboard/jsontext.h"
#include "switchboard/utf8.h"
#include "switchboard/util.h"

#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>

/* jansson's text of |v| (stolen) as a compact JSON value. */
static char *jansson_text(json_t *v)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(v);
    return s;
}

static void test_quote_matches_jansson(void **state)
{
    static const char *const cases[] = {
        "",         "plain",       "POST http://a/b \xe2\x86\x92 200",
        "q\"uote",  "back\\slash", "\n\r\t\b\f",
        "\x01\x1f", "tab\tin",     "\xf0\x9f\x98\x80 emoji",
        "/slash",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *want = jansson_text(json_string(cases[i]));
        size_t n = sb_json_quote(NULL, 0, cases[i]);
        assert_int_equal(n, strlen(want));
        char *got = malloc(n + 1);
        assert_int_equal(sb_json_quote(got, n + 1, cases[i]), n);
        assert_string_equal(got, want);
        /* Too small a buffer: nothing promised but the length. */
        char small[2];
        assert_int_equal(sb_json_quote(small, sizeof(small), cases[i]), n);
        free(got);
        free(want);
    }
    /* Invalid UTF-8 is repaired as the gate does. */
    char got[64];
    sb_json_quote(got, sizeof(got), "cut \xC3");
    assert_string_equal(got, "\"cut " SB_UTF8_REPLACEMENT "\"");
    /* The length-taking form quotes the first |n| bytes only, repair included. */
    assert_int_equal(sb_json_quoten(got, sizeof(got), "ab\"cdef", 4), 7);
    assert_string_equal(got, "\"ab\\\"c\"");
    sb_json_quoten(got, sizeof(got), "cut \xC3\xA9", 5);
    assert_string_equal(got, "\"cut " SB_UTF8_REPLACEMENT "\"");
}

/* The one-pass quoting tests eight bytes at a time: every byte that needs a look (escape,
 * control, UTF-8 sequence, invalid UTF-8) is put at every offset of texts of every
 * length around the word size, and the text must be jansson's (after utf8.c's repair),
 * through a large buffer (one pass), an exact one (sized first) and no buffer. */
static void test_quote_fast_path_edges(void **state)
{
    static const char *const odd[] = {
        "\"",
        "\\",
        "\x01",
        "\x1f",
        "\n",
        "\x7f",
        " ",
        "/",
        "\xc3\xa9",
        "\xe2\x82\xac",
        "\xf0\x9f\x98\x80",
        "\xc3",
        "\xff",
        "\xed\xa0\x80",
        "\xe2\x82",
        "\x80",
        "\xc0\xaf",
    };
    char text[64], big[512], exact[512];
    for (size_t o = 0; o < sizeof(odd) / sizeof(odd[0]); o++) {
        size_t olen = strlen(odd[o]);
        for (size_t len = 0; len <= 40; len++) {
            for (size_t at = 0; at <= len; at++) {
                memset(text, 'a', len + olen);
                memcpy(text + at, odd[o], olen);
                text[len + olen] = '\0';
                char *fixed = sb_utf8_dup(text, len + olen);
                char *want = jansson_text(json_string(fixed));
                size_t n = sb_json_quote(NULL, 0, text);
                if (n != strlen(want))
                    fail_msg("odd %zu len %zu at %zu: %zu, jansson %zu", o, len, at, n,
                             strlen(want));
                assert_int_equal(sb_json_quote(big, sizeof(big), text), n);
                assert_string_equal(big, want);
                assert_int_equal(sb_json_quote(exact, n + 1, text), n);
                assert_string_equal(exact, want);
                free(want);
                sb_free(fixed);
            }
        }
    }
    /* Empty, and a long text mixing all of them. */
    assert_int_equal(sb_json_quote(big, sizeof(big), ""), 2);
    assert_string_equal(big, "\"\"");
    size_t long_len = 100000;
    char *lng = malloc(long_len + 1);
    for (size_t i = 0; i < long_len; i++)
        lng[i] = i % 97 == 0 ? '"' : i % 89 == 0 ? '\t' : (char)('a' + i % 26);
    memcpy(lng + 5000, "\xe2\x82\xac", 3);
    lng[long_len] = '\0';
    char *want = jansson_text(json_string(lng));
    size_t n = sb_json_quote(NULL, 0, lng);
    char *got = malloc(6 * long_len + 3);
    assert_int_equal(sb_json_quote(got, 6 * long_len + 3, lng), n);
    assert_string_equal(got, want);
    free(want);
    /* Invalid UTF-8 deep in a long text: repaired, not cut. */
    lng[70001] = '\xff';
    char *fixed = sb_utf8_dup(lng, long_len);
    want = jansson_text(json_string(fixed));
    assert_int_equal(sb_json_quote(got, 6 * long_len + 3, lng), strlen(want));
    assert_string_equal(got, want);
    free(want);
    sb_free(fixed);
    free(got);
    free(lng);
    /* A jansson string holding NUL (sb_json_write): escaped, not cut. */
    json_t *nul = json_stringn("a\0b", 3);
    char *w = sb_json_text_of(nul);
    assert_string_equal(w, "\"a\\u0000b\"");
    sb_free(w);
    json_decref(nul);
}

/* The run finder against a byte-by-byte walk: each byte value at each offset of texts of
 * every length around the word sizes (8, and 16 with SSE2), and the bytes that matter at
 * each offset of texts up to 200 bytes (the 64-byte steps, their tails), with and without
 * |ascii|. The text sits at the end of a heap block, so a read past it is ASan's error. */
static void test_string_run_matches_bytewise(void **state)
{
    static const unsigned char some[] = {0x00, 0x1f, '"', '\\', 0x20, 0x7f, 0x80, 0xff};
    unsigned char buf[201];
    for (int ascii = 0; ascii <= 1; ascii++) {
        for (unsigned vi = 0; vi < 256 + sizeof(some); vi++) {
            unsigned v = vi < 256 ? vi : some[vi - 256];
            for (size_t len = 0; len <= (vi < 256 ? 33 : 200); len++) {
                unsigned char *text = malloc(len + 1);
                memset(buf, 'a', sizeof(buf));
                unsigned char *t = buf;
                for (size_t at = 0; at <= len; at++) {
                    memset(t, 'a', len);
                    if (at < len)
                        t[at] = (unsigned char)v;
                    if (at + 1 + at % 5 < len) /* a later stop too: the first one counts */
                        t[at + 1 + at % 5] = at % 2 ? '"' : 0x01;
                    size_t want = 0;
                    while (want < len && t[want] >= 0x20 && t[want] != '"' && t[want] != '\\' &&
                           (!ascii || t[want] < 0x80))
                        want++;
                    memcpy(text + 1, t, len); /* text + 1: unaligned, ends at the block's end */
                    size_t got = sb_json_string_run((const char *)text + 1, len, ascii);
                    if (got != want)
                        fail_msg("byte %02x at %zu of %zu (ascii %d): %zu, want %zu", v, at, len,
                                 ascii, got, want);
                }
                free(text);
            }
        }
    }
}

static void test_real_matches_jansson(void **state)
{
    char got[40];
    /* Every duration of a push up to 100 s, to the microsecond, then a sparse sweep. */
    for (long us = 0; us < 20000000000L; us += us < 100000000 ? 1 + us / 1000 : 9973331) {
        double v = (double)us / 1000.0;
        char *want = jansson_text(json_real(v));
        sb_json_real(got, v);
        if (strcmp(got, want) != 0)
            fail_msg("%ld us: %s, jansson %s", us, got, want);
        free(want);
    }
    static const double odd[] = {1.0 / 3, 0.0001, 123456789.5, 1e-9, 2.5e7, -1.5, 1e300, 13.1};
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        char *want = jansson_text(json_real(odd[i]));
        sb_json_real(got, odd[i]);
        assert_string_equal(got, want);
        free(want);
    }
    sb_json_real(got, NAN);
    assert_string_equal(got, "null");
}

/* util.c's printf-free number formatters write what printf writes. */
static void test_number_formatters_match_printf(void **state)
{
    char got[40], want[40];
    for (long us = 0; us < 50000000; us += 7) {
        double ms = (double)us / 1000.0;
        sb_fmt_ms3(got, ms);
        snprintf(want, sizeof(want), "%.3f", ms);
        if (strcmp(got, want) != 0)
            fail_msg("%ld us: %s, printf %s", us, got, want);
    }
    static const long long ll[] = {0, 1, -1, 9, 10, LLONG_MAX, LLONG_MIN, 1796543002994LL, -42};
    for (size_t i = 0; i < sizeof(ll) / sizeof(ll[0]); i++) {
        sb_fmt_ll(got, ll[i]);
        snprintf(want, sizeof(want), "%lld", ll[i]);
        assert_string_equal(got, want);
    }
    /* Every digit count and both sides of each power of ten, signed, plus a spread. */
    for (long long p = 1; p <= LLONG_MAX / 10; p *= 10) {
        const long long around[] = {p - 1, p, p + 1, 10 * p - 1, -p, -(p + 1), -(10 * p - 1)};
        for (size_t i = 0; i < sizeof(around) / sizeof(around[0]); i++) {
            size_t n = sb_fmt_ll(got, around[i]);
            snprintf(want, sizeof(want), "%lld", around[i]);
            assert_string_equal(got, want);
            assert_int_equal(n, strlen(want));
        }
    }
    for (unsigned long long x = 1; x < (1ULL << 62); x = x * 3 + 7) {
        sb_fmt_ll(got, (long long)x);
        snprintf(want, sizeof(want), "%lld", (long long)x);
        assert_string_equal(got, want);
    }
    sb_fmt_ms3(got, -2.5);
    assert_string_equal(got, "-2.500");
}

/* sb_json_write against json_dumps on every JSON document of the test corpora (requests,
 * agent cards, queue replies...) and on hand-made values: the same text, byte for byte. */
static int same_as_jansson(const json_t *v)
{
    char *want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10));
    char small[16];
    sb_jbuf b = {small, 0, sizeof(small), 0}; /* small: the heap path is taken too */
    sb_json_write(&b, v);
    int same = want != NULL && b.len == strlen(want) && memcmp(b.p, want, b.len) == 0;
    if (!same)
        print_error("jansson: %s\nours:    %.*s\n", want, (int)b.len, b.p);
    if (b.heap)
        free(b.p);
    free(want);
    return same;
}

static int compared;

static void compare_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            compare_dir(path);
            continue;
        }
        json_t *v = json_load_file(path, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (v == NULL)
            continue;
        if (!same_as_jansson(v))
            fail_msg("%s: sb_json_write differs from json_dumps", path);
        compared++;
        json_decref(v);
    }
    closedir(d);
}

static void test_write_matches_jansson(void **state)
{
    const char *dir = getenv("SB_CORPUS_DIR");
    compared = 0;
    compare_dir(dir != NULL && *dir != '\0' ? dir : "tests/corpus");
    if (compared < 50)
        fail_msg("only %d corpus documents compared", compared);
    json_t *v = json_pack("{s:s,s:i,s:f,s:f,s:b,s:n,s:[],s:{},s:[i,s,{s:o}],s:s%}", "text",
                          "line\n\"q\" \\ \x01 \xe2\x86\x92", "int", -42, "real", 4.798, "whole",
                          5.0, "yes", 1, "nothing", "empty", "obj", "list", 1, "x", "k",
                          json_real(1e300), "nul", "a\0b", (size_t)3);
    assert_true(same_as_jansson(v));
    json_decref(v);
    assert_true(same_as_jansson(json_null()));
    json_t *s = json_string("plain");
    assert_true(same_as_jansson(s));
    json_decref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quote_matches_jansson),
        cmocka_unit_test(test_quote_fast_path_edges),
        cmocka_unit_test(test_string_run_matches_bytewise),
        cmocka_unit_test(test_real_matches_jansson),
        cmocka_unit_test(test_number_formatters_match_printf),
        cmocka_unit_test(test_write_matches_jansson),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
