/*
 * utf8.c — validation and repair of outside text before it becomes JSON (see utf8.h).
 *
 * One scanner decides, at each position, either "a well-formed sequence of n bytes" or
 * "a maximal invalid subpart of n bytes" (the longest prefix of a well-formed sequence
 * that is there, at least one byte), following Unicode Table 3-7. Everything else is
 * built on it, so validation and repair can never disagree. All functions are linear
 * in their input and never read past |len|. A JSON string built here can only fail on
 * out-of-memory, and that aborts like every other allocation (alloc.h).
 */
#include "switchboard/utf8.h"
#include "switchboard/alloc.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLACEMENT_LEN (sizeof(SB_UTF8_REPLACEMENT) - 1)

/* Scans the unit at |s| (|len| > 0): returns its length in bytes and sets |*ok| to 1 for
 * a well-formed sequence, 0 for a maximal invalid subpart. */
static size_t scan(const unsigned char *s, size_t len, int *ok)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    *ok = 0;
    if (c < 0x80) {
        *ok = 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong below U+0800 */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates U+D800..U+DFFF */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong below U+10000 */
        else if (c == 0xF4)
            hi = 0x8F; /* past U+10FFFF */
    } else {
        return 1; /* continuation byte, C0/C1 (always overlong) or F5..FF */
    }
    for (size_t i = 1; i < n; i++) {
        if (i >= len)
            return i;
        unsigned char b = s[i];
        if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF))
            return i;
    }
    *ok = 1;
    return n;
}

size_t sb_utf8_seq_len(const unsigned char *s, size_t len)
{
    int ok;
    size_t n = scan(s, len, &ok);
    return ok ? n : 0;
}

/* 1 when the 8 bytes at |p| are ASCII without NUL (the common case, tested at once). */
static int ascii8(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    const uint64_t lo = 0x0101010101010101ULL, hi = 0x8080808080808080ULL;
    return ((w | ((w - lo) & ~w)) & hi) == 0; /* no high bit, no zero byte */
}

int sb_utf8_valid(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        if (len - i >= 8 && ascii8(u + i)) {
            i += 8;
            continue;
        }
        if (u[i] == 0)
            return 0;
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int ok;
        i += scan(u + i, len - i, &ok);
        if (!ok)
            return 0;
    }
    return 1;
}

size_t sb_utf8_copy(char *dst, size_t cap, const char *src, size_t len)
{
    const unsigned char *u = (const unsigned char *)src;
    size_t out = 0, i = 0;
    while (i < len) {
        int ok;
        size_t n = scan(u + i, len - i, &ok);
        const char *piece = src + i;
        size_t piece_len = n;
        if (!ok || u[i] == 0) {
            piece = SB_UTF8_REPLACEMENT;
            piece_len = REPLACEMENT_LEN;
        }
        if (piece_len > cap - 1 - out)
            break; /* cut before the first character that does not fit whole */
        memcpy(dst + out, piece, piece_len);
        out += piece_len;
        i += n;
    }
    dst[out] = '\0';
    return out;
}

void sb_utf8_fix(char *buf, size_t cap)
{
    size_t len = strnlen(buf, cap - 1);
    if (sb_utf8_valid(buf, len)) {
        buf[len] = '\0';
        return;
    }
    char *tmp = sb_malloc(cap);
    size_t n = sb_utf8_copy(tmp, cap, buf, len);
    memcpy(buf, tmp, n + 1);
    sb_free(tmp);
}

char *sb_utf8_dup(const char *s, size_t len)
{
    if (sb_utf8_valid(s, len)) {
        char *d = sb_malloc(len + 1);
        if (len > 0)
            memcpy(d, s, len);
        d[len] = '\0';
        return d;
    }
    /* Every input byte yields at most one U+FFFD (3 bytes) or itself. */
    if (len > (SIZE_MAX - 1) / REPLACEMENT_LEN) {
        fprintf(stderr, "switchboard: text of %zu bytes too large to repair\n", len);
        abort();
    }
    size_t cap = len * REPLACEMENT_LEN + 1;
    char *d = sb_malloc(cap);
    size_t n = sb_utf8_copy(d, cap, s, len);
    return sb_realloc(d, n + 1);
}

/* jansson fails on valid input only when malloc does: the allocation policy applies. */
static json_t *must(json_t *j)
{
    if (j == NULL) {
        fprintf(stderr, "switchboard: out of memory building a JSON string\n");
        abort();
    }
    return j;
}

json_t *sb_json_textn(const char *s, size_t len)
{
    if (len == 0)
        return must(json_string(""));
    if (sb_utf8_valid(s, len))
        return must(json_stringn(s, len));
    char *fixed = sb_utf8_dup(s, len);
    json_t *j = must(json_string(fixed));
    sb_free(fixed);
    return j;
}

json_t *sb_json_text(const char *s)
{
    return sb_json_textn(s, s != NULL ? strlen(s) : 0);
}
