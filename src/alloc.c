/*
 * alloc.c — abort-on-OOM wrappers around the C allocator and libevent's constructors
 * (see alloc.h for why), with a per-thread cache of freed blocks in front of malloc.
 *
 * The cache: glibc's own per-thread cache (tcache) keeps 7 blocks per size and none
 * above 1,032 bytes. A worker with dozens of messages in flight frees and takes more
 * than 7 blocks of a size per loop turn, and libevent's buffer chains are 2 and 4 KB,
 * so about a third of the push path's allocations took malloc's slow path (bins,
 * splitting, coalescing: ~250 instructions each, and its free as much). Here a freed
 * block up to 16 KB goes on a list of its thread for its size class (malloc's own
 * 16-byte chunk classes, read back with malloc_usable_size), up to 256 blocks a class
 * and 4 MB a thread; sb_malloc takes from that list first. A block is always a real
 * malloc block: it can be freed by any thread, with free() or sb_free, or realloc'd;
 * a block freed on another thread simply joins that thread's cache. Under
 * AddressSanitizer the cache is off, so use-after-free stays visible.
 */
#include "switchboard/alloc.h"

#include <malloc.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fail_countdown;

static void check_injected_failure(size_t n)
{
    long left = atomic_load(&fail_countdown);
    if (left > 0 && atomic_fetch_sub(&fail_countdown, 1) == 1) {
        fprintf(stderr, "switchboard: out of memory (injected, %zu bytes)\n", n);
        abort();
    }
}

static void *oom(size_t n)
{
    fprintf(stderr, "switchboard: out of memory allocating %zu bytes\n", n);
    abort();
}

#if defined(__SANITIZE_ADDRESS__)
#define BLOCK_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BLOCK_CACHE 0
#endif
#endif
#ifndef BLOCK_CACHE
#define BLOCK_CACHE 1
#endif

#define CACHE_MAX_BLOCK 16384u /* usable bytes; larger blocks go straight to free() */
#define CACHE_CLASSES (CACHE_MAX_BLOCK / 16 + 2)
#define CACHE_DEPTH 256                  /* blocks per class */
#define CACHE_BYTES (4u * 1024u * 1024u) /* per thread */

typedef struct cached_block {
    struct cached_block *next;
} cached_block;

static __thread cached_block *cache_head[CACHE_CLASSES];
static __thread unsigned short cache_count[CACHE_CLASSES];
static __thread size_t cache_bytes;

/* The class whose every block has at least |n| usable bytes: glibc's chunk size for
 * |n| (n + 8 rounded up to 16, at least 32) over 16. */
static size_t class_for_request(size_t n)
{
    return n <= 24 ? 2 : (n + 8 + 15) / 16;
}

/* The class of a block with |usable| bytes, rounded down so that class_for_request
 * never hands out a block smaller than asked for. */
static size_t class_for_block(size_t usable)
{
    return (usable + 8) / 16;
}

static void *cache_take(size_t n)
{
    if (!BLOCK_CACHE || n > CACHE_MAX_BLOCK - 8)
        return NULL;
    size_t c = class_for_request(n);
    cached_block *b = cache_head[c];
    if (b == NULL)
        return NULL;
    cache_head[c] = b->next;
    if (b->next != NULL)
        __builtin_prefetch(b->next); /* the next take reads it: start the load now */
    cache_count[c]--;
    cache_bytes -= c * 16;
    return b;
}

void *sb_malloc(size_t n)
{
    check_injected_failure(n);
    void *p = cache_take(n);
    if (p != NULL)
        return p;
    p = malloc(n ? n : 1);
    return p ? p : oom(n);
}

/* Zeroed blocks up to 16 KB come from the cache or malloc, then memset: glibc's calloc
 * skips its per-thread cache (tcache) and takes the arena path, ~200 instructions more
 * per call, and the push path zeroes several structs per message (one over 1 KB). The
 * memset goes through a volatile pointer: the compiler otherwise folds malloc + memset
 * back into calloc. */
#define CALLOC_BY_MALLOC_MAX CACHE_MAX_BLOCK
static void *(*volatile zero_fill)(void *, int, size_t) = memset;

void *sb_calloc(size_t count, size_t size)
{
    check_injected_failure(count * size);
    if (count != 0 && size != 0 && size <= CALLOC_BY_MALLOC_MAX &&
        count <= CALLOC_BY_MALLOC_MAX / size) {
        void *p = cache_take(count * size);
        if (p == NULL)
            p = malloc(count * size);
        if (p == NULL)
            return oom(count * size);
        return zero_fill(p, 0, count * size);
    }
    void *p = calloc(count ? count : 1, size ? size : 1);
    return p ? p : oom(count * size);
}

void *sb_realloc(void *p, size_t n)
{
    if (p == NULL)
        return sb_malloc(n); /* a first allocation can come from the cache */
    check_injected_failure(n);
    void *q = realloc(p, n ? n : 1);
    return q ? q : oom(n);
}

char *sb_strdup(const char *s)
{
    return sb_strndup(s, strlen(s));
}

char *sb_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = sb_malloc(len + 1);
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

void sb_free(void *p)
{
    if (BLOCK_CACHE && p != NULL) {
        size_t usable = malloc_usable_size(p);
        if (usable <= CACHE_MAX_BLOCK) {
            size_t c = class_for_block(usable);
            if (c >= 2 && cache_count[c] < CACHE_DEPTH && cache_bytes + c * 16 <= CACHE_BYTES) {
                cached_block *b = p;
                b->next = cache_head[c];
                cache_head[c] = b;
                cache_count[c]++;
                cache_bytes += c * 16;
                return;
            }
        }
    }
    free(p);
}

void sb_alloc_thread_clear(void)
{
    for (size_t c = 0; c < CACHE_CLASSES; c++) {
        while (cache_head[c] != NULL) {
            cached_block *b = cache_head[c];
            cache_head[c] = b->next;
            free(b);
        }
        cache_count[c] = 0;
    }
    cache_bytes = 0;
}

size_t sb_alloc_thread_cached(void)
{
    return cache_bytes;
}

void sb_alloc_libevent(void)
{
    event_set_mem_functions(sb_malloc, sb_realloc, sb_free);
}

static void *ng_malloc(size_t n, void *ud)
{
    return sb_malloc(n);
}

static void ng_free(void *p, void *ud)
{
    sb_free(p);
}

static void *ng_calloc(size_t count, size_t size, void *ud)
{
    return sb_calloc(count, size);
}

static void *ng_realloc(void *p, size_t n, void *ud)
{
    return sb_realloc(p, n);
}

static nghttp2_mem ng_mem = {NULL, ng_malloc, ng_free, ng_calloc, ng_realloc};

nghttp2_mem *sb_alloc_nghttp2(void)
{
    return &ng_mem;
}

struct evbuffer *sb_evbuffer_new(void)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        fprintf(stderr, "switchboard: out of memory allocating an evbuffer\n");
        abort();
    }
    return b;
}

struct event *sb_event_new(struct event_base *base, evutil_socket_t fd, short events,
                           event_callback_fn fn, void *arg)
{
    struct event *ev = event_new(base, fd, events, fn, arg);
    if (ev == NULL) {
        fprintf(stderr, "switchboard: out of memory allocating an event\n");
        abort();
    }
    return ev;
}

void sb_alloc_fail_after(long n)
{
    atomic_store(&fail_countdown, n);
}
