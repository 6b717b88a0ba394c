/*
 * test_alloc.c — unit tests for alloc.c's sb_calloc: blocks up to 16 KB come from the
 * cache or malloc and a memset (glibc's calloc skips its per-thread cache), larger ones
 * from calloc; either way every byte is zero, also when the block reuses memory that
 * was just written and freed (the case calloc's fresh pages never show). And the per-thread
 * cache of freed blocks: a freed block is handed out again, never to a request larger
 * than it, the cache stays within its bound, and a thread's clear empties it; nghttp2's
 * allocator (sb_alloc_nghttp2) goes through the same cache.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>
#include <pthread.h>
#include <string.h>

#include "switchboard/alloc.h"

static void test_calloc_zeroes_reused_blocks(void **state)
{
    static const size_t sizes[] = {1, 8, 48, 448, 1000, 1008, 1023, 1024, 1025, 1584, 5000};
    static const size_t counts[] = {1, 2, 3, 7};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
            size_t n = sizes[i] * counts[k];
            for (int round = 0; round < 3; round++) { /* dirty, free, take again */
                unsigned char *p = sb_calloc(counts[k], sizes[i]);
                for (size_t b = 0; b < n; b++)
                    if (p[b] != 0)
                        fail_msg("%zu x %zu: byte %zu is %u", counts[k], sizes[i], b, p[b]);
                memset(p, 0xA5, n);
                sb_free(p);
            }
        }
    }
    /* Zero sizes still give a block that can be freed. */
    void *z = sb_calloc(0, 16);
    assert_non_null(z);
    sb_free(z);
    z = sb_calloc(16, 0);
    assert_non_null(z);
    sb_free(z);
}

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CACHE_ON 0
#endif
#endif
#ifndef CACHE_ON
#define CACHE_ON 1
#endif

/* A freed block comes back for the next request of its size class. */
static void test_cache_reuses_freed_blocks(void **state)
{
    sb_alloc_thread_clear();
    assert_int_equal(sb_alloc_thread_cached(), 0);
    static const size_t sizes[] = {1, 24, 25, 200, 1000, 1040, 2048, 4096, 9000, 16000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        void *p = sb_malloc(sizes[i]);
        sb_free(p);
        if (!CACHE_ON)
            continue; /* under ASan the cache is off, so use-after-free stays visible */
        assert_true(sb_alloc_thread_cached() > 0);
        void *q = sb_malloc(sizes[i]);
        assert_ptr_equal(q, p);
        sb_free(q);
        q = sb_realloc(NULL, sizes[i]); /* a first realloc is a malloc */
        assert_ptr_equal(q, p);
        sb_free(q);
    }
    sb_alloc_thread_clear();
    assert_int_equal(sb_alloc_thread_cached(), 0);
}

/* Every size up to past the cached range: freed blocks of all sizes are in the cache
 * when each request is served, and each block has room for what was asked. */
static void test_cache_never_hands_out_a_smaller_block(void **state)
{
    enum { MAXN = 17000 };
    for (size_t n = 1; n <= MAXN; n += (n < 1100 ? 1 : 37)) {
        void *a = sb_malloc(n / 2 + 1), *b = sb_malloc(n + 16), *c = sb_malloc(n);
        sb_free(a);
        sb_free(b);
        sb_free(c);
        unsigned char *p = sb_malloc(n);
        assert_true(malloc_usable_size(p) >= n);
        memset(p, 0x5A, n);
        unsigned char *z = sb_calloc(1, n);
        assert_true(malloc_usable_size(z) >= n);
        for (size_t k = 0; k < n; k++)
            if (z[k] != 0)
                fail_msg("calloc %zu: byte %zu is %u", n, k, z[k]);
        sb_free(z);
        sb_free(p);
    }
    sb_alloc_thread_clear();
}

/* However much is freed, the cache holds at most 4 MB. */
static void test_cache_is_bounded(void **state)
{
    enum { N = 2000 };
    static void *blocks[N];
    for (int i = 0; i < N; i++)
        blocks[i] = sb_malloc(i % 2 ? 8000 : 64);
    for (int i = 0; i < N; i++)
        sb_free(blocks[i]);
    size_t held = sb_alloc_thread_cached();
    assert_true(held <= 4u * 1024u * 1024u);
    if (CACHE_ON)
        assert_true(held >= 256u * 64u); /* 64-byte blocks: a class's full depth */
    sb_alloc_thread_clear();
    assert_int_equal(sb_alloc_thread_cached(), 0);
}

/* A block allocated on one thread may be freed on another: it joins that thread's
 * cache, which that thread's clear returns to malloc. */
static void *free_elsewhere(void *arg)
{
    sb_free(arg);
    size_t held = sb_alloc_thread_cached();
    sb_alloc_thread_clear();
    return (void *)held;
}

static void test_cache_blocks_cross_threads(void **state)
{
    sb_alloc_thread_clear();
    void *p = sb_malloc(3000);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, free_elsewhere, p), 0);
    void *held = NULL;
    assert_int_equal(pthread_join(t, &held), 0);
    if (CACHE_ON)
        assert_true((size_t)held >= 3000);
    assert_int_equal(sb_alloc_thread_cached(), 0); /* this thread's cache is untouched */
}

/* nghttp2's allocator is the same cache: its free keeps a block that its malloc (and
 * sb_malloc) hands out again, its calloc zeroes a dirty reused block, its realloc
 * keeps the contents. */
static void test_nghttp2_allocator_uses_the_cache(void **state)
{
    const nghttp2_mem *m = sb_alloc_nghttp2();
    sb_alloc_thread_clear();
    unsigned char *p = m->malloc(600, m->mem_user_data);
    memset(p, 0xC3, 600);
    m->free(p, m->mem_user_data);
    if (CACHE_ON) {
        assert_true(sb_alloc_thread_cached() >= 600);
        void *q = sb_malloc(600);
        assert_ptr_equal(q, p);
        sb_free(q);
    }
    unsigned char *z = m->calloc(10, 60, m->mem_user_data);
    if (CACHE_ON)
        assert_ptr_equal(z, p);
    for (size_t k = 0; k < 600; k++)
        if (z[k] != 0)
            fail_msg("nghttp2 calloc: byte %zu is %u", k, z[k]);
    memcpy(z, "hpack", 5);
    unsigned char *r = m->realloc(z, 5000, m->mem_user_data);
    assert_memory_equal(r, "hpack", 5);
    m->free(r, m->mem_user_data);
    m->free(NULL, m->mem_user_data); /* nghttp2 frees NULL */
    sb_alloc_thread_clear();
    assert_int_equal(sb_alloc_thread_cached(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calloc_zeroes_reused_blocks),
        cmocka_unit_test(test_cache_reuses_freed_blocks),
        cmocka_unit_test(test_cache_never_hands_out_a_smaller_block),
        cmocka_unit_test(test_cache_is_bounded),
        cmocka_unit_test(test_cache_blocks_cross_threads),
        cmocka_unit_test(test_nghttp2_allocator_uses_the_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
