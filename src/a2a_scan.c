/*
 * a2a_scan.c — the one-pass reader of the common request: a valid send.
 *
 * Building a jansson tree costs about 140 instructions per body byte (its lexer reads
 * through a stream, one character at a time, and copies every string), and the tree is
 * thrown away unread but for six members. This scanner reads the body once, by RFC 8259's
 * grammar, without a tree or a copy of any string but the members it keeps: "jsonrpc",
 * "id", "method", params.message.{messageId,taskId,contextId} and
 * params.metadata.expires_in_s. Strings are found sixteen bytes at a time
 * (sb_json_string_run), inline up to a closing quote, with escapes and UTF-8 sequences
 * handled out of line; keys are hashed eight bytes a step for the duplicate check. A generic
 * event parser (yajl, used before) paid ~100 instructions per token, which made a
 * 120-byte agent answer cost three times a 1 KB request.
 *
 * It answers only "yes, here is the call" or "not for me" (a2a_int.h): every body it is
 * not sure jansson would read exactly alike goes to the tree reader, which then decides,
 * and alone words the errors. So it gives up on: anything that is not strict JSON (white
 * space is space, tab, LF and CR only; nothing but white space after the root object; no
 * raw control character in a string); a method that is not a send (task and notification
 * methods need the tree); params.configuration (push notification settings are read from
 * the tree); any member switchboard reads that is missing, mistyped or holds a NUL; a
 * number with an exponent or more than 15 characters (jansson fails on real overflow, and
 * re-reads huge integers as reals); an id or expires_in_s that is not a plain integer;
 * "\u0000" or a "\uD800".."\uDFFF" escape anywhere (jansson refuses NUL in keys and lone
 * surrogates); nesting deeper than SCAN_MAX_DEPTH; more than SCAN_MAX_KEYS keys open at
 * once; and two keys of one object whose hashes collide (a duplicate, or a rare false
 * alarm). JSON allows bytes from 0x80 up only inside strings: there each UTF-8 sequence
 * is checked where it starts, by utf8.c's scanner (the one jansson's rules match).
 */
#include "a2a_int.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/jsontext.h"
#include "switchboard/utf8.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
    unsigned nkeys;
    int pending; /* slot of the value that comes next (set by its key) */
    unsigned char type[S_COUNT];
    char *text; /* |inline_text| until it outgrows it */
    size_t text_len, text_cap;
    char *dec; /* a string with escapes, decoded (heap) */
    size_t dec_cap;
    int vslot; /* answers: the root member whose value is being read */
    /* Not cleared by scan_init (~1 KB less to clear per body): each entry is written before
     * it is read — role, array and key_base at depth when a container opens, off and len
     * with a slot's type, voff and vlen with "result"/"error"'s type, bytes below
     * text_len, keys below nkeys. */
    unsigned char role[SCAN_MAX_DEPTH + 1];
    unsigned char array[SCAN_MAX_DEPTH + 1];     /* 1: an array at depth, 0: an object */
    unsigned short key_base[SCAN_MAX_DEPTH + 1]; /* first key hash of the object at depth */
    size_t off[S_COUNT], len[S_COUNT];           /* string or number text, in |text| */
    size_t voff[2], vlen[2]; /* answers: where "result" and "error" are in the body */
    char inline_text[256];
    uint64_t keys[SCAN_MAX_KEYS];
} scan;

static void scan_init(scan *sc, int mode)
{
    memset(sc, 0, offsetof(scan, role));
    sc->mode = mode;
    sc->text = sc->inline_text;
    sc->text_cap = sizeof(sc->inline_text);
}

static void scan_clear(scan *sc)
{
    if (sc->text != sc->inline_text)
        sb_free(sc->text);
    sb_free(sc->dec);
}

/* A key's hash, for finding duplicates: eight bytes at a time, every byte of the key and
 * its length mixed in (a key under eight bytes is read as its first and last four bytes,
 * or under four as its bytes 0, n/2 and n-1, which cover it). A collision of two
 * different keys only sends the body to the tree reader. */
static uint64_t hash_key(const unsigned char *s, size_t n)
{
    const uint64_t k = 0x9E3779B97F4A7C15ULL;
    uint64_t h = (n + 1) * k, w;
    if (n >= 8) {
        size_t i = 0;
        for (; n - i > 8; i += 8) {
            memcpy(&w, s + i, 8);
            h = (h ^ w) * k;
            h ^= h >> 29;
        }
        memcpy(&w, s + n - 8, 8); /* the last eight, overlapping what was mixed */
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        w = a | (uint64_t)b << 32;
    } else {
        w = n == 0 ? 0 : s[0] | (uint64_t)s[n / 2] << 8 | (uint64_t)s[n - 1] << 16;
    }
    h = (h ^ w) * k;
    return h ^ h >> 32;
}

static void keep_text(scan *sc, int slot, const char *s, size_t n)
{
    if (sc->text_len + n + 1 > sc->text_cap) {
        sc->text_cap = (sc->text_len + n + 1) * 2;
        if (sc->text == sc->inline_text) {
            sc->text = sb_malloc(sc->text_cap);
            memcpy(sc->text, sc->inline_text, sc->text_len);
        } else {
            sc->text = sb_realloc(sc->text, sc->text_cap);
        }
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

static int on_number(scan *sc, const char *s, size_t n)
{
    if (n > 15 || memchr(s, 'e', n) != NULL || memchr(s, 'E', n) != NULL)
        return 0;
    return take(sc, T_NUMBER, s, n);
}

/* An object or array opens (its parent's pending slot takes it). */
static int open_container(scan *sc, int array)
{
    int slot = sc->pending, role = R_OTHER;
    if (array)
        role = R_OTHER;
    else if (sc->depth == 0)
        role = R_ROOT;
    else if (slot == S_PARAMS)
        role = R_PARAMS;
    else if (slot == S_MESSAGE)
        role = R_MESSAGE;
    else if (slot == S_METADATA)
        role = R_METADATA;
    else if (slot == S_ERROR)
        role = R_ERROR;
    take(sc, array ? T_OTHER : T_OBJECT, NULL, 0);
    if (sc->depth >= SCAN_MAX_DEPTH)
        return 0;
    sc->depth++;
    sc->role[sc->depth] = (unsigned char)role;
    sc->array[sc->depth] = (unsigned char)array;
    sc->key_base[sc->depth] = (unsigned short)sc->nkeys;
    return 1;
}

static void close_container(scan *sc)
{
    sc->nkeys = sc->key_base[sc->depth];
    sc->depth--;
    sc->pending = S_NONE;
}

/* |s| (|n| bytes) is the literal |lit|: the length first, then a compare of a constant
 * size (the compiler writes it inline). */
#define is(s, n, lit) ((n) == sizeof(lit) - 1 && memcmp((s), (lit), sizeof(lit) - 1) == 0)

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

static int on_key(scan *sc, const unsigned char *s, size_t n)
{
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

/* ---- the grammar (RFC 8259), strictly ---- */

/* White space is rare between tokens (bodies are mostly compact): one compare decides
 * that there is none, since every white space byte is below '!' and every token byte
 * above. */
static inline const unsigned char *skip_space(const unsigned char *p, const unsigned char *end)
{
    while (p < end && *p <= ' ' && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static int hex_digit(unsigned char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The string whose text starts at |p| (after the opening quote) and holds an escape:
 * its end is found first (an escape's next byte is skipped; UTF-8 checked), then it is decoded into
 * sc->dec. NULL when it is not one jansson reads alike: unterminated, a raw control
 * character, an unknown escape, or "\u0000" or a surrogate escape (jansson refuses NUL in
 * keys and lone surrogates; pairs are rare enough to leave to the tree reader). */
static __attribute__((noinline)) const unsigned char *
read_escaped(scan *sc, const unsigned char *p, const unsigned char *end, const char **s, size_t *n)
{
    const unsigned char *q = p;
    while (q < end && *q != '"') {
        size_t k = *q == '\\' ? 2 : *q < 0x80 ? 1 : sb_utf8_seq_len(q, (size_t)(end - q));
        if (*q < 0x20 || k == 0)
            return NULL;
        q += k;
    }
    if (q >= end)
        return NULL;
    if (sc->dec_cap < (size_t)(q - p)) {
        sc->dec_cap = (size_t)(q - p) * 2;
        sb_free(sc->dec);
        sc->dec = sb_malloc(sc->dec_cap);
    }
    char *o = sc->dec;
    while (p < q) {
        if (*p != '\\') {
            *o++ = (char)*p++;
            continue;
        }
        unsigned char e = p[1];
        p += 2;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            *o++ = (char)e;
            break;
        case 'b':
            *o++ = '\b';
            break;
        case 'f':
            *o++ = '\f';
            break;
        case 'n':
            *o++ = '\n';
            break;
        case 'r':
            *o++ = '\r';
            break;
        case 't':
            *o++ = '\t';
            break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 0; i < 4; i++) {
                int d = p + i < q ? hex_digit(p[i]) : -1;
                if (d < 0)
                    return NULL;
                cp = cp << 4 | (unsigned)d;
            }
            p += 4;
            if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF))
                return NULL;
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else if (cp < 0x800) { /* two bytes; an escape takes six: it fits */
                *o++ = (char)(0xC0 | cp >> 6);
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xE0 | cp >> 12);
                *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return NULL;
        }
    }
    *s = sc->dec;
    *n = (size_t)(o - sc->dec);
    return q + 1;
}

/* read_string past its first plain run, which ends at |q| (not a closing quote): UTF-8
 * sequences checked where they start, then an escape or the end. */
static __attribute__((noinline)) const unsigned char *
read_string_rest(scan *sc, const unsigned char *p, const unsigned char *q, const unsigned char *end,
                 const char **s, size_t *n)
{
    for (;;) { /* a UTF-8 sequence checked where one starts, and plain ASCII runs */
        if (q == end)
            return NULL;
        if (*q < 0x80)
            break;
        size_t k = sb_utf8_seq_len(q, (size_t)(end - q));
        if (k == 0)
            return NULL;
        q += k;
        q += sb_json_string_run((const char *)q, (size_t)(end - q), 1);
    }
    if (*q == '"') {
        *s = (const char *)p;
        *n = (size_t)(q - p);
        return q + 1;
    }
    if (*q != '\\')
        return NULL;
    return read_escaped(sc, p, end, s, n);
}

/* The string whose text starts at |p| (after the opening quote): its text in |*s|, |*n|
 * (the body itself when it holds no escape, the common case); returns the byte after
 * the closing quote, NULL when it is not a string read alike (read_escaped). Inline for
 * the common case, plain ASCII to the closing quote; the rest in read_string_rest. */
static inline const unsigned char *read_string(scan *sc, const unsigned char *p,
                                               const unsigned char *end, const char **s, size_t *n)
{
    const unsigned char *q = p + sb_json_string_run((const char *)p, (size_t)(end - p), 1);
    if (q < end && *q == '"') {
        *s = (const char *)p;
        *n = (size_t)(q - p);
        return q + 1;
    }
    return read_string_rest(sc, p, q, end, s, n);
}

/* A key at |p|, its colon and the white space after: returns the value's first byte. */
static inline const unsigned char *read_key(scan *sc, const unsigned char *p,
                                            const unsigned char *end)
{
    const char *s;
    size_t n;
    if (p == end || *p != '"')
        return NULL;
    p = read_string(sc, p + 1, end, &s, &n);
    if (p == NULL || !on_key(sc, (const unsigned char *)s, n))
        return NULL;
    if (end - p >= 2 && p[0] == ':' && p[1] > ' ')
        return p + 1; /* compact JSON: no white space around the colon */
    p = skip_space(p, end);
    if (p == end || *p != ':')
        return NULL;
    return skip_space(p + 1, end);
}

/* The end of the number at |p|: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; NULL when
 * none is there. */
static const unsigned char *read_number(const unsigned char *p, const unsigned char *end)
{
#define DIGIT(q) ((q) < end && *(q) >= '0' && *(q) <= '9')
    if (p < end && *p == '-')
        p++;
    if (p < end && *p == '0')
        p++;
    else if (DIGIT(p))
        while (DIGIT(p))
            p++;
    else
        return NULL;
    if (p < end && *p == '.') {
        if (!DIGIT(p + 1))
            return NULL;
        for (p++; DIGIT(p); p++)
            ;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!DIGIT(p))
            return NULL;
        while (DIGIT(p))
            p++;
    }
    return p;
#undef DIGIT
}

/* The literal |lit| at |p|: the byte after it, or NULL. */
static const unsigned char *read_literal(const unsigned char *p, const unsigned char *end,
                                         const char *lit, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0 ? p + n : NULL;
}

/* Reads |buf| into |sc| (scan_init done). 1 when the body is one JSON object that jansson
 * would read alike (see the file comment), else 0. One loop: a value, then what follows
 * values (commas, closing brackets) until the next value or the root's end. */
static int run(scan *sc, const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf, *end = p + len;
    p = skip_space(p, end);
    if (p == end || *p != '{')
        return 0; /* the root is an object */
    for (;;) {
        const char *s;
        size_t n;
        const unsigned char *q;
        if (p == end)
            return 0;
        if (sc->depth == 1 && (sc->pending == S_RESULT || sc->pending == S_ERROR)) {
            sc->vslot = sc->pending; /* its bytes end when the root is next in view */
            sc->voff[sc->pending - S_RESULT] = (size_t)(p - (const unsigned char *)buf);
        }
        switch (*p) { /* a value starts at p */
        case '{':
        case '[':
            if (!open_container(sc, *p == '['))
                return 0;
            p = skip_space(p + 1, end);
            if (p < end && *p == (sc->array[sc->depth] ? ']' : '}')) {
                p++;
                close_container(sc);
                break;
            }
            if (!sc->array[sc->depth] && (p = read_key(sc, p, end)) == NULL)
                return 0;
            continue;
        case '"':
            if ((p = read_string(sc, p + 1, end, &s, &n)) == NULL)
                return 0;
            take(sc, T_STRING, s, n);
            break;
        case 't':
        case 'f':
            if ((q = read_literal(p, end, *p == 't' ? "true" : "false", *p == 't' ? 4 : 5)) == NULL)
                return 0;
            take(sc, T_OTHER, NULL, 0);
            p = q;
            break;
        case 'n':
            if ((p = read_literal(p, end, "null", 4)) == NULL)
                return 0;
            take(sc, T_NULL, NULL, 0);
            break;
        default:
            if ((q = read_number(p, end)) == NULL ||
                !on_number(sc, (const char *)p, (size_t)(q - p)))
                return 0;
            p = q;
            break;
        }
        for (;;) { /* after a value */
            if (sc->vslot != S_NONE && sc->depth == 1) {
                int v = sc->vslot - S_RESULT;
                sc->vlen[v] = (size_t)(p - (const unsigned char *)buf) - sc->voff[v];
                sc->vslot = S_NONE;
            }
            p = skip_space(p, end);
            if (sc->depth == 0)
                return p == end; /* the root closed: only white space may follow */
            if (p == end)
                return 0;
            if (*p == ',') {
                p = skip_space(p + 1, end);
                if (!sc->array[sc->depth] && (p = read_key(sc, p, end)) == NULL)
                    return 0;
                break;
            }
            if (*p != (sc->array[sc->depth] ? ']' : '}'))
                return 0;
            p++;
            close_container(sc);
        }
    }
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
        /* valid UTF-8 (read_string checked it) without NUL ("\u0000" is refused) */
        id = json_stringn_nocheck(sc->text + sc->off[S_ID], sc->len[S_ID]);
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
    if (sc->text == sc->inline_text) { /* the usual case: one allocation, to size */
        char *kept = sb_malloc(sc->text_len);
        memcpy(kept, sc->text, sc->text_len);
        method = kept + (method - sc->text);
        mid = kept + (mid - sc->text);
        task = task != NULL ? kept + (task - sc->text) : NULL;
        context = context != NULL ? kept + (context - sc->text) : NULL;
        sc->text = kept;
    }
    out->strings = sc->text; /* the pointers below point into it */
    sc->text = sc->inline_text;
    out->method = method;
    out->kind = kind;
    out->version = sb_a2a_int_version_of(method);
    out->message_id = mid;
    out->task_id = task;
    out->context_id = context;
    out->expires_in_s = expires;
    return SB_OK;
}

int sb_a2a_int_scan(const char *buf, size_t len, sb_a2a_call *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = SB_A2A_OTHER;
    out->expires_in_s = -1;
    scan scratch, *sc = &scratch;
    scan_init(sc, M_REQUEST);
    int rc = run(sc, buf, len) ? finish(sc, out) : SB_ERR_INVALID;
    if (rc != SB_OK)
        sb_a2a_call_clear(out);
    scan_clear(sc);
    return rc;
}

/* The scanner on an agent's answer (sb_a2a_int_scan_response), keeping in |sc| where its
 * "result" or "error" value is. */
static int scan_answer(scan *sc, const char *buf, size_t len)
{
    scan_init(sc, M_RESPONSE);
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
    return ok;
}

int sb_a2a_int_scan_response(const char *buf, size_t len)
{
    scan scratch;
    int ok = scan_answer(&scratch, buf, len);
    scan_clear(&scratch);
    return ok;
}

int sb_a2a_answer_member(const char *buf, size_t len, sb_a2a_answer *where)
{
    scan scratch;
    int ok = scan_answer(&scratch, buf, len);
    if (ok) {
        int v = scratch.type[S_ERROR] != T_ABSENT;
        where->is_error = v;
        where->off = scratch.voff[v];
        where->n = scratch.vlen[v];
    }
    scan_clear(&scratch);
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
