/*
 * redis_script.c — Lua scripts called by SHA: the process-wide script table and the
 * RESP encoding of EVAL / EVALSHA (see redis.h "Scripts", redis_int.h).
 *
 * A script is the concatenation of up to three static texts (a shared prelude, a library
 * of functions a caller adds, a body), named by the pointers. The first use of a pair builds its
 * text, its SHA1 (what Redis names a script by) and a small id once; later uses find it again
 * without copying or hashing anything. The table is an open-addressed array of entry pointers: a
 * lookup is a few acquire loads and never locks; an insertion takes a mutex, checks again and
 * publishes the finished entry with a release store, so a reader on another worker thread
 * sees either nothing (and inserts under the mutex) or a whole entry. Entries are never
 * removed: there are as many as the program has call sites (a few dozen).
 *
 * The id (0 .. SB_REDIS_SCRIPT_IDS - 1) is the script's bit in each connection's
 * "loaded here" set (redis.c); a script past that many gets id -1 and is always sent as
 * EVAL, which is correct, only slower.
 *
 * Never: hash or copy a script's text on a call after its first, or free an entry.
 */
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/redis.h"
#include "switchboard/util.h"

#include "redis_int.h"

#include <openssl/sha.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define TABLE_SLOTS 512 /* power of two, well above the program's scripts */

static sb_redis_script *g_table[TABLE_SLOTS];
static pthread_mutex_t g_insert = PTHREAD_MUTEX_INITIALIZER;
static int g_next_id;

static size_t slot_of(const char *head, const char *mid, const char *body)
{
    uintptr_t h = (uintptr_t)head * 0x9e3779b97f4a7c15ull ^
                  (uintptr_t)body * 0xc2b2ae3d27d4eb4full ^ (uintptr_t)mid * 0x165667b19e3779f9ull;
    return (size_t)(h >> 17) & (TABLE_SLOTS - 1);
}

static const sb_redis_script *find(const char *head, const char *mid, const char *body,
                                   size_t *free_slot)
{
    size_t i = slot_of(head, mid, body);
    for (size_t n = 0; n < TABLE_SLOTS; n++, i = (i + 1) & (TABLE_SLOTS - 1)) {
        sb_redis_script *s = __atomic_load_n(&g_table[i], __ATOMIC_ACQUIRE);
        if (s == NULL) {
            *free_slot = i;
            return NULL;
        }
        if (s->head == head && s->mid == mid && s->body == body)
            return s;
    }
    *free_slot = TABLE_SLOTS; /* full */
    return NULL;
}

static sb_redis_script *script_new(const char *head, const char *mid, const char *body)
{
    sb_redis_script *s = sb_calloc(1, sizeof(*s));
    size_t hl = head ? strlen(head) : 0, ml = mid ? strlen(mid) : 0, bl = strlen(body);
    s->head = head;
    s->mid = mid;
    s->body = body;
    s->len = hl + ml + bl;
    s->text = sb_malloc(s->len + 1);
    if (hl > 0)
        memcpy(s->text, head, hl);
    if (ml > 0)
        memcpy(s->text + hl, mid, ml);
    memcpy(s->text + hl + ml, body, bl + 1);
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)s->text, s->len, md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
    s->id = g_next_id < SB_REDIS_SCRIPT_IDS ? g_next_id++ : -1;
    return s;
}

const sb_redis_script *sb_redis_script_get(const char *head, const char *body)
{
    return sb_redis_script_get3(head, NULL, body);
}

const sb_redis_script *sb_redis_script_get3(const char *head, const char *mid, const char *body)
{
    size_t free_slot;
    const sb_redis_script *s = find(head, mid, body, &free_slot);
    if (s != NULL)
        return s;
    pthread_mutex_lock(&g_insert);
    s = find(head, mid, body, &free_slot);
    if (s == NULL) {
        sb_redis_script *made = script_new(head, mid, body);
        if (free_slot < TABLE_SLOTS)
            __atomic_store_n(&g_table[free_slot], made, __ATOMIC_RELEASE);
        /* else: a table full of call sites cannot happen; the entry just stays unlisted */
        s = made;
    }
    pthread_mutex_unlock(&g_insert);
    return s;
}

const char *sb_redis_script_sha(const sb_redis_script *s)
{
    return s->sha;
}

/* ---- RESP ---- */

static size_t digits(size_t n)
{
    size_t d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

size_t sb_redis_resp_len(int argc, const char *const *argv, const size_t *lens)
{
    size_t n = 0;
    for (int i = 0; i < argc; i++) {
        size_t l = lens ? lens[i] : strlen(argv[i]);
        n += 1 + digits(l) + 2 + l + 2;
    }
    return n;
}

size_t sb_redis_resp_write(char *out, int argc, const char *const *argv, const size_t *lens)
{
    char *p = out;
    for (int i = 0; i < argc; i++) {
        size_t l = lens ? lens[i] : strlen(argv[i]);
        *p++ = '$';
        p += sb_fmt_ll(p, (long long)l); /* its NUL lands where the CR goes */
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], l);
        p += l;
        *p++ = '\r';
        *p++ = '\n';
    }
    return (size_t)(p - out);
}

char *sb_redis_resp_eval(const sb_redis_script *s, int argc, const char *tail, size_t taillen,
                         size_t *len)
{
    char head[64];
    int hl = snprintf(head, sizeof(head), "*%d\r\n$4\r\nEVAL\r\n$%zu\r\n", argc, s->len);
    char *buf = sb_malloc((size_t)hl + s->len + 2 + taillen);
    memcpy(buf, head, (size_t)hl);
    memcpy(buf + hl, s->text, s->len);
    memcpy(buf + hl + s->len, "\r\n", 2);
    memcpy(buf + hl + s->len + 2, tail, taillen);
    *len = (size_t)hl + s->len + 2 + taillen;
    return buf;
}

size_t sb_redis_resp_evalsha_head(const sb_redis_script *s, int argc, char *out)
{
    char head[SB_REDIS_EVALSHA_HEAD_MAX];
    int hl = snprintf(head, sizeof(head), "*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n", argc, s->sha);
    /* right-aligned against |out| + SB_REDIS_EVALSHA_HEAD_MAX, where the tail starts */
    memcpy(out + SB_REDIS_EVALSHA_HEAD_MAX - hl, head, (size_t)hl);
    return (size_t)hl;
}
