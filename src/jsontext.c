/*
 * jsontext.c — JSON strings and reals written straight into a buffer (see jsontext.h).
 *
 * sb_json_write serializes a jansson tree with the same two writers (jansson's own dumper
 * costs ~5 µs for a 400-byte answer: it goes through a callback per piece and decodes
 * every string again).
 *
 * sb_json_quote writes in one pass when the buffer surely holds the text (else it sizes
 * first, like snprintf): runs of plain ASCII are found sixteen or eight bytes at a time
 * (a text's tail as its last full word, overlapping what passed; a text under eight bytes
 * in one word) and copied whole, a text that is one run straight between its quotes,
 * and UTF-8 is validated only where a byte from 0x80 up appears. Invalid input
 * is then repaired by utf8.c into a temporary copy and quoted again, so the repair
 * rules live in one place.
 */
#include "switchboard/jsontext.h"
#include "switchboard/alloc.h"
#include "switchboard/utf8.h"
#include "switchboard/util.h"

#include <math.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Bytes |c| (an escape: not plain) takes inside a JSON string. */
static size_t escaped_len(unsigned char c)
{
    if (c >= 0x20)
        return 2; /* '"' or '\\' */
    return c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f' ? 2 : 6;
}

/* The bytes of the word |w| that stop a run, as the high bit of each: below 0x20, '"',
 * '\\', and with |top| = the high bits, from 0x80 up. Each test is exact for "some byte
 * of the word", and the lowest byte it marks is a true one (a borrow only runs towards
 * higher bytes), so on a little-endian machine the first marked byte is the first one
 * that stops the run. */
static uint64_t stops(uint64_t w, uint64_t top)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    return ((w & top) | ((w - ones * 0x20) & ~w) | ((q - ones) & ~q) | ((b - ones) & ~b)) & high;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* The run of a text shorter than eight bytes, in one word: its first four and last four
 * bytes (overlapping when |n| < 8), or for |n| < 4 its bytes 0, n/2 and n-1 padded with
 * 'a' — in both the words' byte order is the text's, so the lowest marked byte maps back
 * to the first stop. */
static size_t run_short(const unsigned char *s, size_t n, uint64_t top)
{
    uint64_t w;
    if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        w = a | (uint64_t)b << 32;
    } else if (n > 0) {
        w = 0x6161616161000000ULL | s[0] | (uint64_t)s[n / 2] << 8 | (uint64_t)s[n - 1] << 16;
    } else {
        return 0;
    }
    uint64_t m = stops(w, top);
    if (m == 0)
        return n;
    size_t k = (size_t)__builtin_ctzll(m) / 8;
    if (n >= 4)
        return k < 4 ? k : n - 8 + k;
    return k == 0 ? 0 : k == 1 ? n / 2 : n - 1;
}
#endif

#if defined(__SSE2__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* The stops among sixteen bytes, as the high bit of each: a signed "below 0x20" also
 * catches every byte from 0x80 up, which is what |ascii| wants; without it, "below 0x20"
 * is min(x, 0x1F) == x, unsigned. */
static inline __m128i stops16(const unsigned char *p, int ascii)
{
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i stop =
        _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')), _mm_cmpeq_epi8(x, _mm_set1_epi8('\\')));
    return _mm_or_si128(stop, ascii ? _mm_cmplt_epi8(x, _mm_set1_epi8(0x20))
                                    : _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1F)), x));
}

/* sb_json_string_run for |n| >= 16 where SSE2 is there (every x86-64), |ascii| a constant
 * at each call: the first sixteen bytes (most strings end there, though |n| is all the
 * body left to a reader), then 64 bytes a step while that many are left (a long text),
 * then sixteen, the tail as the last sixteen bytes, overlapping what already passed. */
static inline __attribute__((always_inline)) size_t run_sse(const unsigned char *s, size_t n,
                                                            int ascii)
{
    unsigned mask = (unsigned)_mm_movemask_epi8(stops16(s, ascii));
    if (mask != 0)
        return (size_t)__builtin_ctz(mask);
    size_t i = 16;
    for (; n - i >= 64; i += 64) {
        __m128i a = stops16(s + i, ascii), b = stops16(s + i + 16, ascii);
        __m128i c = stops16(s + i + 32, ascii), d = stops16(s + i + 48, ascii);
        if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d))) == 0)
            continue;
        uint64_t m = (uint64_t)(unsigned)_mm_movemask_epi8(a) |
                     (uint64_t)(unsigned)_mm_movemask_epi8(b) << 16 |
                     (uint64_t)(unsigned)_mm_movemask_epi8(c) << 32 |
                     (uint64_t)(unsigned)_mm_movemask_epi8(d) << 48;
        return i + (size_t)__builtin_ctzll(m);
    }
    for (;; i += 16) {
        if (n - i < 16) {
            if (i == n)
                return n;
            i = n - 16;
        }
        if ((mask = (unsigned)_mm_movemask_epi8(stops16(s + i, ascii))) != 0)
            return i + (size_t)__builtin_ctz(mask);
        if (i == n - 16)
            return n;
    }
}
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* sb_json_string_run for 8 <= |n| < 16 (or without SSE2): eight bytes at a time, the tail
 * as the last eight (overlapping what passed). Apart from the dispatcher below, so that
 * its many constants cost the other paths no saved registers. */
static __attribute__((noinline)) size_t run_words(const unsigned char *s, size_t n, uint64_t top)
{
    for (size_t i = 0;; i += 8) {
        if (n - i < 8) {
            if (i == n)
                return n;
            i = n - 8;
        }
        uint64_t w, m;
        memcpy(&w, s + i, 8);
        if ((m = stops(w, top)) != 0)
            return i + (size_t)__builtin_ctzll(m) / 8;
        if (i == n - 8)
            return n;
    }
}

#ifdef __SSE2__
static __attribute__((noinline)) size_t run_sse_ascii(const unsigned char *s, size_t n)
{
    return run_sse(s, n, 1);
}

static __attribute__((noinline)) size_t run_sse_any(const unsigned char *s, size_t n)
{
    return run_sse(s, n, 0);
}
#endif
#endif

size_t sb_json_string_run(const char *text, size_t n, int ascii)
{
    const unsigned char *s = (const unsigned char *)text;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#ifdef __SSE2__
    if (n >= 16)
        return ascii ? run_sse_ascii(s, n) : run_sse_any(s, n);
#endif
    const uint64_t top = ascii ? 0x8080808080808080ULL : 0;
    return n < 8 ? run_short(s, n, top) : run_words(s, n, top);
#else
    size_t i = 0;
    while (i < n && s[i] >= 0x20 && s[i] != '"' && s[i] != '\\' && (!ascii || s[i] < 0x80))
        i++;
    return i;
#endif
}

#define QUOTE_BAD SIZE_MAX /* the text is not valid UTF-8 (only when |check|) */

/* |s| (|n| bytes) as a JSON string: written to |dst| when not NULL (which then holds at
 * least 6 * |n| + 3 bytes: the most it can take), its length returned either way. Runs of
 * plain ASCII are copied whole; a byte from 0x80 up is copied as it is, and with |check|
 * the UTF-8 sequence it starts is validated there (utf8.c's scanner): QUOTE_BAD when one
 * is not well formed. NUL is escaped (jansson strings may hold it). |run| is the length
 * of the text's leading run (sb_json_string_run), found by the caller. */
static size_t quote_into(char *dst, const char *text, size_t n, int check, size_t run)
{
    static const char hex[] = "0123456789ABCDEF"; /* as jansson writes */
    const unsigned char *s = (const unsigned char *)text;
    size_t len = 2, i = 0;
    char *o = dst;
    if (o != NULL)
        *o++ = '"';
    for (size_t j = run;; j = i + sb_json_string_run(text + i, n - i, 1)) {
        if (o != NULL) { /* a run that needs no escape, copied whole */
            memcpy(o, s + i, j - i);
            o += j - i;
        }
        len += j - i;
        if (j == n)
            break;
        unsigned char c = s[j];
        if (c >= 0x80) {
            size_t k = check ? sb_utf8_seq_len(s + j, n - j) : 1;
            if (k == 0)
                return QUOTE_BAD;
            if (o != NULL) {
                memcpy(o, s + j, k);
                o += k;
            }
            len += k;
            i = j + k;
            continue;
        }
        i = j + 1;
        len += escaped_len(c);
        if (o == NULL)
            continue;
        *o++ = '\\';
        switch (c) {
        case '"':
        case '\\':
            *o++ = (char)c;
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    if (o != NULL) {
        *o++ = '"';
        *o = '\0';
    }
    return len;
}

/* quote_into with sb_json_quote's buffer contract: one pass when |cap| surely holds the
 * text, else sized first and written only when it fits. |run| as for quote_into. */
static size_t quote_capped(char *dst, size_t cap, const char *s, size_t n, int check, size_t run)
{
    if (dst != NULL && n <= (SIZE_MAX - 3) / 6 && cap >= 6 * n + 3)
        return quote_into(dst, s, n, check, run);
    size_t need = quote_into(NULL, s, n, check, run);
    if (need != QUOTE_BAD && dst != NULL && need + 1 <= cap)
        quote_into(dst, s, n, 0, run);
    return need;
}

/* Valid UTF-8 (a jansson string) quoted. */
static size_t quote_valid(char *dst, size_t cap, const char *s, size_t n)
{
    return quote_capped(dst, cap, s, n, 0, sb_json_string_run(s, n, 1));
}

size_t sb_json_quote(char *dst, size_t cap, const char *s)
{
    return sb_json_quoten(dst, cap, s, strlen(s));
}

size_t sb_json_quoten(char *dst, size_t cap, const char *s, size_t n)
{
    /* A text that is one plain run (identifiers, most values) is copied between its
     * quotes at once. */
    size_t run = sb_json_string_run(s, n, 1);
    if (run == n && dst != NULL && n <= SIZE_MAX - 3 && cap >= n + 3) {
        dst[0] = '"';
        memcpy(dst + 1, s, n);
        dst[n + 1] = '"';
        dst[n + 2] = '\0';
        return n + 2;
    }
    size_t len = quote_capped(dst, cap, s, n, 1, run); /* validated as it goes */
    if (len != QUOTE_BAD)
        return len;
    char *fixed = sb_utf8_dup(s, n); /* the rare repair, by utf8.c's rules */
    len = quote_valid(dst, cap, fixed, strlen(fixed));
    sb_free(fixed);
    return len;
}

/* |k| (>= 0) in decimal at |dst|; returns the length. */
static size_t put_uint(char *dst, unsigned long long k)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + k % 10);
        k /= 10;
    } while (k > 0);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

size_t sb_json_real(char dst[40], double v)
{
    if (!isfinite(v)) {
        memcpy(dst, "null", 5);
        return 4;
    }
    /* Durations in milliseconds with at most three decimals (v = k / 1000), below 10^7:
     * "%.10g" would print k's digits exactly, so they are written without printf. */
    double k = v * 1000.0;
    if (v >= 0 && v < 1e7 && fabs(k - nearbyint(k)) < 1e-6) {
        unsigned long long ms = (unsigned long long)nearbyint(k);
        size_t n = put_uint(dst, ms / 1000);
        unsigned frac = (unsigned)(ms % 1000);
        dst[n++] = '.';
        if (frac == 0) {
            dst[n++] = '0';
        } else {
            char d[3] = {(char)('0' + frac / 100), (char)('0' + frac / 10 % 10),
                         (char)('0' + frac % 10)};
            size_t nd = d[2] != '0' ? 3 : d[1] != '0' ? 2 : 1;
            memcpy(dst + n, d, nd);
            n += nd;
        }
        dst[n] = '\0';
        return n;
    }
    int n = snprintf(dst, 40, "%.10g", v);
    char *e = strchr(dst, 'e');
    if (e != NULL) { /* jansson drops the exponent's '+' and leading zeros: 1e-9, 1e300 */
        char *from = e + 1, *to = e + 1;
        if (*from == '-')
            to = ++from;
        else if (*from == '+')
            from++;
        while (*from == '0' && from[1] != '\0')
            from++;
        memmove(to, from, strlen(from) + 1);
        return strlen(dst);
    }
    if (strchr(dst, '.') == NULL) {
        memcpy(dst + n, ".0", 3);
        n += 2;
    }
    return (size_t)n;
}

/* ---- a jansson tree as text ---- */

static void jb_reserve(sb_jbuf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return;
    size_t cap = (b->len + more) * 2;
    if (b->heap) {
        b->p = sb_realloc(b->p, cap);
    } else {
        char *p = sb_malloc(cap);
        memcpy(p, b->p, b->len);
        b->p = p;
        b->heap = 1;
    }
    b->cap = cap;
}

static void jb_put(sb_jbuf *b, const char *s, size_t n)
{
    jb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

/* A jansson string (valid UTF-8, may hold NUL) quoted. */
static void jb_string(sb_jbuf *b, const char *s, size_t n)
{
    jb_reserve(b, 6 * n + 3);
    b->len += quote_valid(b->p + b->len, b->cap - b->len, s, n);
}

void sb_json_write(sb_jbuf *b, const json_t *v)
{
    char num[40];
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT: {
        const char *key;
        const json_t *value;
        int first = 1;
        jb_put(b, "{", 1);
        json_object_foreach((json_t *)(uintptr_t)v, key, value)
        {
            if (!first)
                jb_put(b, ",", 1);
            first = 0;
            jb_string(b, key, strlen(key));
            jb_put(b, ":", 1);
            sb_json_write(b, value);
        }
        jb_put(b, "}", 1);
        break;
    }
    case JSON_ARRAY:
        jb_put(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i > 0)
                jb_put(b, ",", 1);
            sb_json_write(b, json_array_get(v, i));
        }
        jb_put(b, "]", 1);
        break;
    case JSON_STRING:
        jb_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        jb_put(b, num, sb_fmt_ll(num, json_integer_value(v)));
        break;
    case JSON_REAL:
        jb_put(b, num, sb_json_real(num, json_real_value(v)));
        break;
    case JSON_TRUE:
        jb_put(b, "true", 4);
        break;
    case JSON_FALSE:
        jb_put(b, "false", 5);
        break;
    default:
        jb_put(b, "null", 4);
        break;
    }
}

char *sb_json_text_of(const json_t *v)
{
    sb_jbuf b = {NULL, 0, 0, 1};
    sb_json_write(&b, v);
    jb_put(&b, "", 1);
    return b.p;
}

void sb_jbuf_add(sb_jbuf *b, const char *s, size_t n)
{
    jb_put(b, s, n);
}

void sb_jbuf_quote(sb_jbuf *b, const char *s)
{
    size_t n = strlen(s);
    jb_reserve(b, 6 * n + 3);
    b->len += sb_json_quoten(b->p + b->len, b->cap - b->len, s, n);
}
