/*
 * jsontext.c — JSON strings and reals written straight into a buffer (see jsontext.h).
 *
 * sb_json_write serializes a jansson tree with the same two writers (jansson's own dumper
 * costs ~5 µs for a 400-byte answer: it goes through a callback per piece and decodes
 * every string again).
 *
 * sb_json_quote makes one pass to size the text and, when it fits, a second to write it;
 * valid UTF-8 (the common case, checked once) is copied byte for byte but for the
 * escapes, and invalid input is first repaired by utf8.c into a temporary copy, so the
 * repair rules live in one place.
 */
#include "switchboard/jsontext.h"
#include "switchboard/alloc.h"
#include "switchboard/utf8.h"
#include "switchboard/util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Bytes |c| takes inside a JSON string. */
static size_t escaped_len(unsigned char c)
{
    if (c >= 0x20)
        return c == '"' || c == '\\' ? 2 : 1;
    return c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f' ? 2 : 6;
}

static int plain(unsigned char c)
{
    return c >= 0x20 && c != '"' && c != '\\';
}

static size_t quote_valid(char *dst, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF"; /* as jansson writes */
    if (dst == NULL || cap < 6 * n + 3) {         /* might not fit: size it first */
        size_t need = 2 + n;
        for (size_t i = 0; i < n; i++)
            if (!plain((unsigned char)s[i]))
                need += escaped_len((unsigned char)s[i]) - 1;
        if (dst == NULL || need + 1 > cap)
            return need;
    }
    char *o = dst;
    *o++ = '"';
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < n && plain((unsigned char)s[j]))
            j++;
        memcpy(o, s + i, j - i); /* a run that needs no escape, copied whole */
        o += j - i;
        if (j == n)
            break;
        unsigned char c = (unsigned char)s[j];
        i = j + 1;
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
    *o++ = '"';
    *o = '\0';
    return (size_t)(o - dst);
}

size_t sb_json_quote(char *dst, size_t cap, const char *s)
{
    size_t n = strlen(s);
    if (sb_utf8_valid(s, n))
        return quote_valid(dst, cap, s, n);
    char *fixed = sb_utf8_dup(s, n);
    size_t need = quote_valid(dst, cap, fixed, strlen(fixed));
    sb_free(fixed);
    return need;
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
    size_t need = 6 * strlen(s) + 3;
    jb_reserve(b, need);
    b->len += sb_json_quote(b->p + b->len, b->cap - b->len, s);
}
