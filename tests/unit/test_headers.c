/*
 * test_headers.c — unit tests for headers.c: the header list keeps its first items in its
 * first text chunk (one allocation per typical list); these fill lists past that, past a
 * text chunk and with long values, and check every entry keeps its bytes, lookups fold
 * case, and a cleared list is empty and reusable (ASan/LSan in `make asan` see any
 * block freed twice or lost).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/headers.h"

/* Adds |n| entries "X-Name-<i>: <value of i>" (every 7th value |long_len| bytes long). */
static void fill(sb_headers *h, int n, size_t long_len)
{
    char name[32], *value = malloc(long_len + 32);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "X-Name-%d", i);
        if (i % 7 == 6) {
            memset(value, 'a' + i % 26, long_len);
            value[long_len] = '\0';
        } else {
            snprintf(value, long_len + 32, "value %d", i);
        }
        sb_headers_add(h, name, value);
    }
    free(value);
}

static void check(const sb_headers *h, int n, size_t long_len)
{
    assert_int_equal(h->count, (size_t)n);
    char name[32], want[64];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "x-NAME-%d", i); /* case folded */
        const char *v = sb_headers_get(h, name);
        assert_non_null(v);
        if (i % 7 == 6) {
            assert_int_equal(strlen(v), long_len);
            assert_int_equal(v[0], 'a' + i % 26);
            assert_int_equal(v[long_len - 1], 'a' + i % 26);
        } else {
            snprintf(want, sizeof(want), "value %d", i);
            assert_string_equal(v, want);
        }
        assert_string_equal(h->items[i].value, v);
    }
    assert_null(sb_headers_get(h, "X-Absent"));
}

static void test_lists_of_every_size(void **state)
{
    static const int sizes[] = {0, 1, 15, 16, 17, 33, 200};
    static const size_t longs[] = {10, 900, 5000};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (size_t l = 0; l < sizeof(longs) / sizeof(longs[0]); l++) {
            sb_headers h;
            sb_headers_init(&h);
            fill(&h, sizes[s], longs[l]);
            check(&h, sizes[s], longs[l]);
            sb_headers_clear(&h);
            assert_int_equal(h.count, 0);
            assert_null(sb_headers_get(&h, "X-Name-0"));
            fill(&h, sizes[s], longs[l]); /* reusable after a clear */
            check(&h, sizes[s], longs[l]);
            sb_headers_clear(&h);
        }
    }
}

static void test_first_match_and_empty_names(void **state)
{
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Accept", "one");
    sb_headers_add(&h, "accept", "two");
    sb_headers_add(&h, "", "empty name");
    sb_headers_addn(&h, "Content-Type", 7, "abc", 2); /* "Content", "ab" */
    assert_string_equal(sb_headers_get(&h, "ACCEPT"), "one");
    assert_string_equal(sb_headers_get(&h, ""), "empty name");
    assert_string_equal(sb_headers_get(&h, "content"), "ab");
    assert_null(sb_headers_get(&h, "Content-Type"));
    assert_null(sb_headers_get(&h, "Bccept")); /* same length, other first letter */
    assert_null(sb_headers_get(NULL, "Accept"));
    sb_headers_clear(&h);
}

/* The names senders set themselves, by kind, in any case; a name is judged by exactly
 * |len| bytes, and near misses of every length the table uses are ordinary names. */
static void test_reserved_names(void **state)
{
    static const struct {
        const char *name;
        unsigned kind;
    } cases[] = {
        {"TE", SB_HDR_HOP},
        {"Trailer", SB_HDR_HOP},
        {"upgrade", SB_HDR_HOP},
        {"Connection", SB_HDR_HOP},
        {"KEEP-ALIVE", SB_HDR_HOP},
        {"Content-Length", SB_HDR_HOP},
        {"Proxy-Connection", SB_HDR_HOP},
        {"transfer-encoding", SB_HDR_HOP},
        {"Date", SB_HDR_DATE},
        {"host", SB_HDR_HOST},
        {"Tf", 0},
        {"Data", 0},
        {"Hosts", 0},
        {"Upgrades", 0},
        {"Connexion", 0},
        {"Content-Type", 0},
        {"Content-Lengths", 0},
        {"Proxy-Connectio", 0},
        {"Transfer-Encodinx", 0},
        {"X-Switchboard-Message-Id", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(sb_headers_reserved(cases[i].name, strlen(cases[i].name)), cases[i].kind);
    assert_int_equal(sb_headers_reserved("Datex", 4), SB_HDR_DATE); /* only |len| bytes */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lists_of_every_size),
        cmocka_unit_test(test_first_match_and_empty_names),
        cmocka_unit_test(test_reserved_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
