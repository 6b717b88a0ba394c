/*
 * test_util.c — unit tests for util.c's random ids: the pooled ids (sb_random_id) keep
 * sb_random_token's shape, never repeat across pool refills, and refuse what does not fit;
 * and the chain clocks (sb_chain_mono_us/wall_ms): one reading per chain, nested chains
 * share it, outside a chain and in the next one the clock is read again; sb_ct_equal
 * against memcmp for a difference at every position of every length up to 80.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "switchboard/common.h"
#include "switchboard/util.h"

#define N_IDS 2000 /* 12-byte ids: the 256-byte pool is refilled ~90 times */

static int is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_ct_equal(void **state)
{
    unsigned char a[80], b[80];
    for (size_t i = 0; i < sizeof(a); i++)
        a[i] = b[i] = (unsigned char)(i * 37 + 11);
    for (size_t n = 0; n <= sizeof(a); n++) {
        assert_int_equal(sb_ct_equal(a, b, n), 1);
        for (size_t pos = 0; pos < n; pos++)
            for (unsigned bit = 0; bit < 8; bit++) {
                b[pos] ^= (unsigned char)(1u << bit);
                assert_int_equal(sb_ct_equal(a, b, n), 0);
                assert_int_equal(sb_ct_equal(b, a, n), 0);
                b[pos] ^= (unsigned char)(1u << bit);
            }
        /* unaligned starts read the same bytes */
        if (n > 0)
            assert_int_equal(sb_ct_equal(a + 1, b + 1, n - 1), 1);
    }
}

/* sb_concat3 writes what snprintf "%s%s%s" writes, cut or not. */
static void test_concat3_like_snprintf(void **state)
{
    (void)state;
    const char *a = "sb:{", *b = "ws-1", *c = "}:dstats";
    for (size_t cap = 1; cap <= 24; cap++) {
        char got[24], want[24];
        memset(got, 'x', sizeof(got));
        size_t n = sb_concat3(got, cap, a, b, c);
        int w = snprintf(want, cap, "%s%s%s", a, b, c);
        assert_string_equal(got, want);
        assert_int_equal(n, strlen(want));
        assert_true(w >= 0 && (size_t)w == strlen(a) + strlen(b) + strlen(c));
    }
    char out[8];
    assert_int_equal(sb_concat3(out, sizeof(out), "", "", ""), 0);
    assert_string_equal(out, "");
}

static void test_random_id_shape_and_uniqueness(void **state)
{
    (void)state;
    static char ids[N_IDS][32];
    for (int i = 0; i < N_IDS; i++) {
        assert_int_equal(sb_random_id("req_", 12, ids[i], sizeof(ids[i])), SB_OK);
        assert_int_equal(strlen(ids[i]), 4 + 24);
        assert_memory_equal(ids[i], "req_", 4);
        assert_true(is_lower_hex(ids[i] + 4, 24));
    }
    qsort(ids, N_IDS, sizeof(ids[0]), cmp_str);
    for (int i = 1; i < N_IDS; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    /* not all zero: the pool was really filled */
    int zeros = 0;
    for (int i = 0; i < N_IDS; i++)
        zeros += strcmp(ids[i] + 4, "000000000000000000000000") == 0;
    assert_int_equal(zeros, 0);
}

static void test_random_id_sizes(void **state)
{
    (void)state;
    char small[8], big[600];
    assert_int_equal(sb_random_id("q_", 4, small, sizeof(small)), SB_ERR_TOOBIG);
    assert_int_equal(sb_random_id("", 3, small, sizeof(small)), SB_OK);
    assert_int_equal(strlen(small), 6);
    assert_int_equal(sb_random_id("", 257, big, sizeof(big)), SB_ERR_TOOBIG);
    assert_int_equal(sb_random_id("", 256, big, sizeof(big)), SB_OK);
    assert_int_equal(strlen(big), 512);
    assert_true(is_lower_hex(big, 512));
}

static void sleep_ms(long ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_chain_clock_reads_once_per_chain(void **state)
{
    /* Outside a chain: the clock itself. */
    uint64_t a = sb_chain_mono_us();
    sleep_ms(3);
    assert_true(sb_chain_mono_us() >= a + 3000);

    sb_clock_chain_begin();
    uint64_t m = sb_chain_mono_us();
    int64_t w = sb_chain_wall_ms();
    assert_true(m >= a + 3000);
    assert_true(w > 0);
    sleep_ms(3);
    assert_true(sb_chain_mono_us() == m); /* the chain's one reading */
    assert_true(sb_chain_wall_ms() == w);
    sb_clock_chain_begin(); /* nested: the same chain */
    assert_true(sb_chain_mono_us() == m);
    sb_clock_chain_end();
    assert_true(sb_chain_mono_us() == m);
    assert_true(sb_chain_wall_ms() == w);
    sb_clock_chain_end();

    /* After the chain: read again, and a new chain reads afresh. */
    assert_true(sb_chain_mono_us() >= m + 3000);
    assert_true(sb_chain_wall_ms() >= w + 3);
    sb_clock_chain_begin();
    assert_true(sb_chain_mono_us() >= m + 3000);
    assert_true(sb_chain_wall_ms() >= w + 3);
    sb_clock_chain_end();
    sb_clock_chain_end(); /* an unmatched end is harmless */
    uint64_t b = sb_chain_mono_us();
    sleep_ms(2);
    assert_true(sb_chain_mono_us() >= b + 2000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_concat3_like_snprintf),
        cmocka_unit_test(test_random_id_shape_and_uniqueness),
        cmocka_unit_test(test_random_id_sizes),
        cmocka_unit_test(test_chain_clock_reads_once_per_chain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
