/*
 * jsontext.c — JSON strings and reals written straight into a buffer (see jsontext.h).
 *
 * sb_json_quote makes one pass to size the text and, when it fits, a second to write it;
 * valid UTF-8 (the common case, checked once) is copied byte for byte but for the
 * escapes, and invalid input is first repaired by utf8.c into a temporary copy, so the
 * repair rules live in one place.
 */
#include "switchboard/jsontext.h"
#include "switchboard/alloc.h"
#include "switchboard/utf8.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Bytes |c| takes inside a JSON string. */
static size_t escaped_len(unsigned char c)
{
    if (c >= 0x20)
        return c == '"' || c == '\\' ? 2 : 1;
    return c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f' ? 2 : 6;
}

static size_t quote_valid(char *dst, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t need = 2;
    for (size_t i = 0; i < n; i++)
        need += escaped_len((unsigned char)s[i]);
    if (dst == NULL || need + 1 > cap)
        return need;
    char *o = dst;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
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
    return need;
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

size_t sb_json_real(char dst[40], double v)
{
    if (!isfinite(v)) {
        memcpy(dst, "null", 5);
        return 4;
    }
    int n = snprintf(dst, 40, "%.10g", v);
    if (strpbrk(dst, ".eE") == NULL) {
        memcpy(dst + n, ".0", 3);
        n += 2;
    }
    return (size_t)n;
}
