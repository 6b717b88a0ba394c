/*
 * alloc.c — abort-on-OOM wrappers around the C allocator and libevent's constructors
 * (see alloc.h for why).
 */
#include "switchboard/alloc.h"

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

void *sb_malloc(size_t n)
{
    check_injected_failure(n);
    void *p = malloc(n ? n : 1);
    return p ? p : oom(n);
}

/* Small zeroed blocks come from malloc and memset: glibc's calloc skips the per-thread
 * cache (tcache) and takes the arena path, ~200 instructions more per call, and the
 * push path zeroes several small structs per message. The memset goes through a
 * volatile pointer: the compiler otherwise folds malloc + memset back into calloc. */
#define CALLOC_BY_MALLOC_MAX 1024
static void *(*volatile zero_fill)(void *, int, size_t) = memset;

void *sb_calloc(size_t count, size_t size)
{
    check_injected_failure(count * size);
    if (count != 0 && size != 0 && size <= CALLOC_BY_MALLOC_MAX &&
        count <= CALLOC_BY_MALLOC_MAX / size) {
        void *p = malloc(count * size);
        if (p == NULL)
            return oom(count * size);
        return zero_fill(p, 0, count * size);
    }
    void *p = calloc(count ? count : 1, size ? size : 1);
    return p ? p : oom(count * size);
}

void *sb_realloc(void *p, size_t n)
{
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
    free(p);
}

void sb_alloc_libevent(void)
{
    event_set_mem_functions(sb_malloc, sb_realloc, sb_free);
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
