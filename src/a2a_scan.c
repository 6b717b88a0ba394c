/*
 * a2a_scan.c — the one-pass reader of the common request: a valid send.
 *
 * Building a jansson tree costs about 140 instructions per body byte (its lexer reads
 * through a stream, one character at a time, and copies every string), and the tree is
 * thrown away unread but for six members. This scanner runs yajl's event parser (about
 * a tenth of that) over the body and keeps only what sb_a2a_call holds: "jsonrpc", "id",
 * "method", params.message.{messageId,taskId,contextId} and params.metadata.expires_in_s.
 *
 * It answers only "yes, here is the call" or "not for me" (a2a_int.h): every body it is
 * not sure jansson would read exactly alike goes to the tree reader, which then decides,
 * and alone words the errors. So it gives up on: anything yajl refuses; a method that is
 * not a send (task and notification methods need the tree); params.configuration (push
 * notification settings are read from the tree); any member switchboard reads that is
 * missing, mistyped or holds a NUL; a number with an exponent or more than 15
 * characters (jansson fails on real overflow, and re-reads huge integers as reals); an
 * id or expires_in_s that is not a plain integer; "\u0000" or a "\uD800".."\uDFFF"
 * escape anywhere (jansson refuses NUL in keys and lone surrogates, yajl does not); a
 * control character other than tab, LF and CR (yajl takes \f and \v as white space);
 * anything but white space after the root object (yajl lets an unfinished trailing
 * token pass); nesting deeper than SCAN_MAX_DEPTH; more than SCAN_MAX_KEYS keys open at once; and
 * two keys of one object whose hashes collide (a duplicate, or a rare false alarm). Bytes are
 * checked as UTF-8 by utf8.c's validator first, the one jansson's rules match.
 */
#include "a2a_int.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/utf8.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#define SCAN_MAX_DEPTH 64
#define SCAN_MAX_KEYS 256 /* keys of all the objects open at one time */

/* What an object is, by the path that led to it. */
enum { R_OTHER = 0, R_ROOT, R_PARAMS, R_MESSAGE, R_METADATA, R_ERROR };

/* What is read: a request (sb_a2a_int_scan) or an agent's answer (..._scan_response). */
enum { M_REQUEST = 0, M_RESPONSE };

/* The members read, by slot. */
enum {
    S_NONE = 0,
    S_JSONRPC,
    S_ID,
    S_METHOD,
    S_PARAMS,
    S_MESSAGE,
    S_METADATA,
    S_MESSAGE_ID,
    S_TASK_ID,
    S_CONTEXT_ID,
    S_EXPIRES,
    S_RESULT,     /* answers: result */
    S_ERROR,      /* answers: error */
    S_CODE,       /* answers: error.code */
    S_ERROR_TEXT, /* answers: error.message */
    S_COUNT
};

/* Value types, as far as they matter here. */
enum { T_ABSENT = 0, T_STRING, T_NUMBER, T_NULL, T_OBJECT, T_OTHER };

typedef struct scan {
    int mode;
    int depth;
    unsigned char role[SCAN_MAX_DEPTH + 1];
    unsigned short key_base[SCAN_MAX_DEPTH + 1]; /* first key hash of the object at depth */
    uint64_t keys[SCAN_MAX_KEYS];
    unsigned nkeys;
    int pending; /* slot of the value that comes next (set by its key) */
    unsigned char type[S_COUNT];
    size_t off[S_COUNT], len[S_COUNT]; /* string or number text, in |text| */
    char *text;
    size_t text_len, text_cap;
    yajl_handle h;
    size_t root_end; /* offset just past the root value's last byte, once it closed */
} scan;

static uint64_t hash_key(const unsigned char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ULL;
    return h ^ n;
}

static void keep_text(scan *sc, int slot, const char *s, size_t n)
{
    if (sc->text_len + n + 1 > sc->text_cap) {
        sc->text_cap = (sc->text_len + n + 1) * 2;
        sc->text = sb_realloc(sc->text, sc->text_cap);
    }
    memcpy(sc->text + sc->text_len, s, n);
    sc->text[sc->text_len + n] = '\0';
    sc->off[slot] = sc->text_len;
    sc->len[slot] = n;
    sc->text_len += n + 1;
}

/* A value arrived; the slot its key named (if any) takes it. */
static int take(scan *sc, int type, const char *s, size_t n)
{
    int slot = sc->pending;
    sc->pending = S_NONE;
    if (slot == S_NONE)
        return 1;
    sc->type[slot] = (unsigned char)type;
    if (s != NULL)
        keep_text(sc, slot, s, n);
    return 1;
}

static int on_null(void *ctx)
{
    return take(ctx, T_NULL, NULL, 0);
}

static int on_bool(void *ctx, int b)
{
    (void)b;
    return take(ctx, T_OTHER, NULL, 0);
}

static int on_number(void *ctx, const char *s, size_t n)
{
    if (n > 15 || memchr(s, 'e', n) != NULL || memchr(s, 'E', n) != NULL)
        return 0;
    return take(ctx, T_NUMBER, s, n);
}

static int on_string(void *ctx, const unsigned char *s, size_t n)
{
    return take(ctx, T_STRING, (const char *)s, n);
}

static int open_container(scan *sc, int role)
{
    if (sc->depth >= SCAN_MAX_DEPTH)
        return 0;
    sc->depth++;
    sc->role[sc->depth] = (unsigned char)role;
    sc->key_base[sc->depth] = (unsigned short)sc->nkeys;
    return 1;
}

static int close_container(void *ctx)
{
    scan *sc = ctx;
    sc->nkeys = sc->key_base[sc->depth];
    sc->depth--;
    if (sc->depth == 0)
        sc->root_end = yajl_get_bytes_consumed(sc->h);
    sc->pending = S_NONE;
    return 1;
}

static int on_start_map(void *ctx)
{
    scan *sc = ctx;
    int slot = sc->pending, role = R_OTHER;
    /* role[1] records that the root is an object (run() checks it). */
    if (sc->depth == 0)
        role = R_ROOT;
    else if (slot == S_PARAMS)
        role = R_PARAMS;
    else if (slot == S_MESSAGE)
        role = R_MESSAGE;
    else if (slot == S_METADATA)
        role = R_METADATA;
    else if (slot == S_ERROR)
        role = R_ERROR;
    take(sc, T_OBJECT, NULL, 0);
    return open_container(sc, role);
}

static int on_start_array(void *ctx)
{
    scan *sc = ctx;
    take(sc, T_OTHER, NULL, 0);
    return open_container(sc, R_OTHER);
}

static int is(const unsigned char *s, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* The slot a key names in an object of |role|, when reading an answer. */
static int answer_slot_of(int role, const unsigned char *s, size_t n)
{
    if (role == R_ROOT)
        return is(s, n, "jsonrpc")  ? S_JSONRPC
               : is(s, n, "result") ? S_RESULT
               : is(s, n, "error")  ? S_ERROR
                                    : S_NONE;
    if (role == R_ERROR)
        return is(s, n, "code") ? S_CODE : is(s, n, "message") ? S_ERROR_TEXT : S_NONE;
    return S_NONE;
}

/* The slot a key names in an object of |role|. */
static int slot_of(int mode, int role, const unsigned char *s, size_t n)
{
    if (mode == M_RESPONSE)
        return answer_slot_of(role, s, n);
    switch (role) {
    case R_ROOT:
        return is(s, n, "jsonrpc")  ? S_JSONRPC
               : is(s, n, "id")     ? S_ID
               : is(s, n, "method") ? S_METHOD
               : is(s, n, "params") ? S_PARAMS
                                    : S_NONE;
    case R_PARAMS:
        return is(s, n, "message") ? S_MESSAGE : is(s, n, "metadata") ? S_METADATA : S_NONE;
    case R_MESSAGE:
        return is(s, n, "messageId")   ? S_MESSAGE_ID
               : is(s, n, "taskId")    ? S_TASK_ID
               : is(s, n, "contextId") ? S_CONTEXT_ID
                                       : S_NONE;
    case R_METADATA:
        return is(s, n, "expires_in_s") ? S_EXPIRES : S_NONE;
    default:
        return S_NONE;
    }
}

static int on_key(void *ctx, const unsigned char *s, size_t n)
{
    scan *sc = ctx;
    int role = sc->role[sc->depth];
    if (sc->mode == M_REQUEST && role == R_PARAMS && is(s, n, "configuration"))
        return 0; /* push notification settings: read from the tree */
    uint64_t h = hash_key(s, n);
    for (unsigned i = sc->key_base[sc->depth]; i < sc->nkeys; i++)
        if (sc->keys[i] == h)
            return 0; /* a duplicate (or a collision): the tree reader decides */
    if (sc->nkeys == SCAN_MAX_KEYS)
        return 0;
    sc->keys[sc->nkeys++] = h;
    sc->pending = slot_of(sc->mode, role, s, n);
    return 1;
}

static const yajl_callbacks callbacks = {
    .yajl_null = on_null,
    .yajl_boolean = on_bool,
    .yajl_number = on_number,
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_key,
    .yajl_end_map = close_container,
    .yajl_start_array = on_start_array,
    .yajl_end_array = close_container,
};

/* yajl allocates a handful of small blocks per parse (handle, lexer, buffers). They come
 * from a per-thread arena that is reset after each parse, not from malloc; a block that
 * does not fit goes to the heap. Every block carries its size, for realloc. Out of
 * memory aborts like everywhere (alloc.h). */
#define ARENA_BYTES 8192

/* Under AddressSanitizer every block comes from the heap, so overruns are still caught. */
#if defined(__SANITIZE_ADDRESS__)
#define ARENA_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_OFF 1
#endif
#endif
#ifndef ARENA_OFF
#define ARENA_OFF 0
#endif

static __thread struct {
    _Alignas(16) unsigned char mem[ARENA_BYTES];
    size_t used;
} arena;

typedef struct block {
    size_t size;
    size_t pad; /* keeps the payload 16-byte aligned */
} block;

static int in_arena(const void *p)
{
    const unsigned char *u = p;
    return u >= arena.mem && u < arena.mem + ARENA_BYTES;
}

static void *yajl_malloc(void *ctx, size_t n)
{
    (void)ctx;
    size_t need = (sizeof(block) + n + 15) & ~(size_t)15;
    block *b;
    if (!ARENA_OFF && need <= ARENA_BYTES - arena.used) {
        b = (block *)(void *)(arena.mem + arena.used);
        arena.used += need;
    } else {
        b = sb_malloc(sizeof(block) + n);
    }
    b->size = n;
    return b + 1;
}

static void yajl_free_fn(void *ctx, void *p)
{
    (void)ctx;
    if (p != NULL && !in_arena(p))
        sb_free((block *)p - 1);
}

static void *yajl_realloc(void *ctx, void *p, size_t n)
{
    if (p == NULL)
        return yajl_malloc(ctx, n);
    size_t old = ((block *)p - 1)->size;
    void *q = yajl_malloc(ctx, n);
    memcpy(q, p, old < n ? old : n);
    yajl_free_fn(ctx, p);
    return q;
}

/* 1 if |buf| holds a "\u" escape jansson reads differently from yajl: U+0000 (refused
 * in keys) or a surrogate (refused when lone). Escapes pair left to right, so stepping
 * over each backslash's next byte keeps "\\u0000" (a backslash, then text) apart. */
static int has_risky_escape(const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;
    while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL) {
        if (end - p >= 6 && p[1] == 'u') {
            if (memcmp(p + 2, "0000", 4) == 0)
                return 1;
            if ((p[2] == 'd' || p[2] == 'D') && p[3] != '\0' &&
                strchr("89abcdefABCDEF", p[3]) != NULL)
                return 1;
        }
        p += 2;
        if (p >= end)
            break;
    }
    return 0;
}

/* 1 if |buf| holds a control character other than tab, LF and CR: JSON allows none
 * (yajl takes form feed and vertical tab as white space, jansson refuses them). */
static int has_stray_control(const char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            return 1;
    }
    return 0;
}

static int only_space(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            return 0;
    return 1;
}

/* A plain integer's text ("-"? digits, at most 15 characters) as a number; 0 if not. */
static int plain_integer(const char *s, size_t n, long long *v)
{
    size_t i = s[0] == '-' ? 1 : 0;
    if (i == n)
        return 0;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    *v = strtoll(s, NULL, 10);
    return 1;
}

/* A string member switchboard reads: present as a string without NUL. */
static const char *clean_string(const scan *sc, int slot)
{
    if (sc->type[slot] != T_STRING)
        return NULL;
    const char *s = sc->text + sc->off[slot];
    return strlen(s) == sc->len[slot] ? s : NULL;
}

/* An optional string member: absent/null/"" → NULL (*ok stays 1); a clean string → it;
 * anything else → *ok = 0. */
static const char *opt_string(const scan *sc, int slot, int *ok)
{
    if (sc->type[slot] == T_ABSENT || sc->type[slot] == T_NULL)
        return NULL;
    const char *s = clean_string(sc, slot);
    if (s == NULL) {
        *ok = 0;
        return NULL;
    }
    return s[0] != '\0' ? s : NULL;
}

/* Everything after the parse: the members' types and values, into |out|. */
static int finish(scan *sc, sb_a2a_call *out)
{
    const char *jsonrpc = clean_string(sc, S_JSONRPC);
    const char *method = clean_string(sc, S_METHOD);
    if (jsonrpc == NULL || strcmp(jsonrpc, "2.0") != 0 || method == NULL || method[0] == '\0')
        return SB_ERR_INVALID;
    sb_a2a_method kind = sb_a2a_int_classify(method);
    if ((kind != SB_A2A_SEND && kind != SB_A2A_STREAM) || sc->type[S_PARAMS] != T_OBJECT ||
        sc->type[S_MESSAGE] != T_OBJECT)
        return SB_ERR_INVALID;
    const char *mid = clean_string(sc, S_MESSAGE_ID);
    int ok = 1;
    const char *task = opt_string(sc, S_TASK_ID, &ok);
    const char *context = opt_string(sc, S_CONTEXT_ID, &ok);
    if (mid == NULL || mid[0] == '\0' || !ok)
        return SB_ERR_INVALID;

    long expires = -1;
    if (sc->type[S_METADATA] == T_OBJECT && sc->type[S_EXPIRES] == T_NUMBER) {
        long long n;
        if (!plain_integer(sc->text + sc->off[S_EXPIRES], sc->len[S_EXPIRES], &n))
            return SB_ERR_INVALID; /* 60.0 and the like: the tree reader judges them */
        if (n >= 1)
            expires = n > SB_A2A_EXPIRES_MAX_S ? SB_A2A_EXPIRES_MAX_S : (long)n;
    }

    json_t *id = NULL;
    long long n;
    switch (sc->type[S_ID]) {
    case T_STRING:
        id = json_stringn(sc->text + sc->off[S_ID], sc->len[S_ID]);
        break;
    case T_NUMBER:
        if (plain_integer(sc->text + sc->off[S_ID], sc->len[S_ID], &n))
            id = json_integer(n);
        break;
    case T_NULL:
        id = json_null();
        break;
    default:
        break;
    }
    if (id == NULL)
        return SB_ERR_INVALID;

    out->id_ref = id;
    out->id = id;
    out->strings = sc->text; /* the pointers below point into it */
    sc->text = NULL;
    out->method = method;
    out->kind = kind;
    out->version = sb_a2a_int_version_of(method);
    out->message_id = mid;
    out->task_id = task;
    out->context_id = context;
    out->expires_in_s = expires;
    return SB_OK;
}

/* Runs yajl over |buf| into |sc| (mode set, the rest zero). 1 when the body is one JSON
 * object that jansson would read alike (see the file comment), else 0. */
static int run(scan *sc, const char *buf, size_t len)
{
    if (len == 0 || has_stray_control(buf, len) || !sb_utf8_valid(buf, len) ||
        has_risky_escape(buf, len))
        return 0;
    yajl_alloc_funcs af = {yajl_malloc, yajl_realloc, yajl_free_fn, NULL};
    yajl_handle h = yajl_alloc(&callbacks, &af, sc);
    yajl_config(h, yajl_dont_validate_strings, 1); /* done above, by jansson's rules */
    sc->h = h;
    /* yajl ignores an unfinished token after the root ("{...}\"x"): only white space
     * may follow the root's closing brace. */
    int ok = yajl_parse(h, (const unsigned char *)buf, len) == yajl_status_ok &&
             yajl_complete_parse(h) == yajl_status_ok && sc->role[1] == R_ROOT &&
             sc->root_end > 0 && only_space(buf + sc->root_end, len - sc->root_end);
    yajl_free(h);
    arena.used = 0; /* everything yajl took from it is free again */
    return ok;
}

int sb_a2a_int_scan(const char *buf, size_t len, sb_a2a_call *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = SB_A2A_OTHER;
    out->expires_in_s = -1;
    scan scratch, *sc = &scratch;
    memset(sc, 0, sizeof(*sc));
    sc->mode = M_REQUEST;
    int rc = run(sc, buf, len) ? finish(sc, out) : SB_ERR_INVALID;
    if (rc != SB_OK)
        sb_a2a_call_clear(out);
    sb_free(sc->text); /* NULL when handed over to |out| */
    return rc;
}

int sb_a2a_int_scan_response(const char *buf, size_t len)
{
    scan scratch, *sc = &scratch;
    memset(sc, 0, sizeof(*sc));
    sc->mode = M_RESPONSE;
    int ok = run(sc, buf, len);
    if (ok) {
        const char *ver = clean_string(sc, S_JSONRPC);
        long long code;
        ok = ver != NULL && strcmp(ver, "2.0") == 0 &&
             (sc->type[S_RESULT] == T_ABSENT) != (sc->type[S_ERROR] == T_ABSENT);
        if (ok && sc->type[S_ERROR] != T_ABSENT)
            ok = sc->type[S_ERROR] == T_OBJECT && sc->type[S_CODE] == T_NUMBER &&
                 plain_integer(sc->text + sc->off[S_CODE], sc->len[S_CODE], &code) &&
                 sc->type[S_ERROR_TEXT] == T_STRING;
    }
    sb_free(sc->text);
    return ok;
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int sb_a2a_int_same(const sb_a2a_call *a, const sb_a2a_call *b)
{
    return a->kind == b->kind && a->version == b->version && same_str(a->method, b->method) &&
           same_str(a->message_id, b->message_id) && same_str(a->task_id, b->task_id) &&
           same_str(a->context_id, b->context_id) && a->expires_in_s == b->expires_in_s &&
           ((a->id == NULL && b->id == NULL) ||
            (a->id != NULL && b->id != NULL && json_equal(a->id, b->id)));
}
