/*
 * alloc.h — the one allocation policy: abort on out-of-memory.
 *
 * Like redis and h2o, switchboard treats OOM as fatal: a router that cannot allocate
 * cannot keep its promises about messages anyway, and propagating NULL through every
 * async path would multiply error branches that are never exercised. Every heap
 * allocation in src/ goes through these wrappers (never plain malloc), so the policy
 * lives in one place. These functions never return NULL.
 *
 * sb_evbuffer_new() and sb_event_new() apply the same policy to libevent's constructors,
 * which fail only when malloc does; sb_alloc_libevent() hands libevent these wrappers,
 * and sb_alloc_nghttp2() is the same for nghttp2's sessions.
 *
 * Freed blocks up to 16 KB are kept per thread and handed out again before malloc is
 * asked (alloc.c says why); sb_alloc_thread_clear() returns a thread's to malloc.
 *
 * sb_alloc_fail_after(n) is a test hook: the n-th allocation from now aborts with a
 * clear message, so tests can prove the abort path is the only OOM path.
 */
#ifndef SWITCHBOARD_ALLOC_H
#define SWITCHBOARD_ALLOC_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stddef.h>

void *sb_malloc(size_t n);
void *sb_calloc(size_t count, size_t size);
void *sb_realloc(void *p, size_t n);
char *sb_strdup(const char *s);
char *sb_strndup(const char *s, size_t n);
void sb_free(void *p);

/* evbuffer_new(): an empty buffer the caller owns (evbuffer_free). Never NULL. */
struct evbuffer *sb_evbuffer_new(void);
/* event_new(|base|, |fd|, |events|, |fn|, |arg|): a new, not yet added event the caller
 * owns (event_free). Never NULL. */
struct event *sb_event_new(struct event_base *base, evutil_socket_t fd, short events,
                           event_callback_fn fn, void *arg);

/* Routes libevent's own allocations through sb_malloc/sb_realloc/sb_free: the same
 * OOM policy, and its zeroed blocks (evbuffers, events) then come from malloc + memset
 * rather than calloc, which skips glibc's per-thread cache. Process-wide; call once at
 * start-up, before libevent allocates anything. */
void sb_alloc_libevent(void);

/* An nghttp2 allocator over sb_malloc/sb_calloc/sb_realloc/sb_free, for
 * nghttp2_session_*_new3: a session's streams, frames and header tables (~7 blocks
 * per h2 stream) then come from the per-thread cache under the same OOM policy
 * (never NULL, so nghttp2's NOMEM paths are never taken). nghttp2 copies it; one
 * static instance, never freed. */
nghttp2_mem *sb_alloc_nghttp2(void);

/* Frees the blocks this thread's cache holds (see alloc.c): call when a thread that
 * allocated ends. The cache keeps at most 4 MB a thread either way. */
void sb_alloc_thread_clear(void);
/* Bytes this thread's cache holds now (for tests). */
size_t sb_alloc_thread_cached(void);

/* Test hook: make the |n|-th allocation from now fail (abort). 0 disables. */
void sb_alloc_fail_after(long n);

#endif
