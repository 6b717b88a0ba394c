/*
 * jsontext.h — JSON text written directly, without building a jansson tree.
 *
 * For the per-message texts (the log line, a pushed message's record) a tree costs an
 * allocation per member and a serializer pass; these write the same text jansson would
 * (compact, UTF-8 kept as is, reals with 10 significant digits) straight into a buffer.
 * Strings are outside text: invalid UTF-8 is repaired as utf8.h does (U+FFFD), so the
 * result is always valid JSON.
 */
#ifndef SWITCHBOARD_JSONTEXT_H
#define SWITCHBOARD_JSONTEXT_H

#include <jansson.h>
#include <stddef.h>

/* Writes |s| (NUL-terminated) as a JSON string, quotes included, into |dst| when the
 * text and a terminating NUL fit in |cap|; returns the text's length either way (like
 * snprintf), so sb_json_quote(NULL, 0, s) sizes a buffer. With |cap| >= 6 * strlen(s) + 3
 * (the most it can take) it writes in one pass. Escapes the quote, backslash
 * and control characters (\n \r \t \b \f, else \u00XX, upper-case hex) and nothing else. */
size_t sb_json_quote(char *dst, size_t cap, const char *s);
/* sb_json_quote of |s|'s first |n| bytes (|s| holds no NUL before them). */
size_t sb_json_quoten(char *dst, size_t cap, const char *s, size_t n);

/* The length of the leading run of |s| (|n| bytes) whose bytes stand for themselves
 * inside a JSON string: none is '"', '\\' or a control character (below 0x20), and with
 * |ascii| none is from 0x80 up either. For writers (copy the run whole) and readers (the
 * string goes on to its closing quote). Tests eight bytes at a time. */
size_t sb_json_string_run(const char *s, size_t n, int ascii);

/* |v| as jansson writes a real with JSON_REAL_PRECISION(10): "%.10g", the exponent
 * without '+' or leading zeros, ".0" added when that looks like an integer; "null" for NaN and
 * infinities (JSON has none). |dst| must hold 40 bytes. Returns the length. */
size_t sb_json_real(char dst[40], double v);

/* A growing text buffer that starts in the caller's storage (|p| = that storage, |cap|
 * its size, |heap| 0) and moves to the heap when it outgrows it (|heap| 1: the caller
 * frees |p| with sb_free). */
typedef struct sb_jbuf {
    char *p;
    size_t len, cap;
    int heap;
} sb_jbuf;

/* Appends |v| as compact JSON to |b|: exactly what json_dumps(v, JSON_COMPACT |
 * JSON_ENCODE_ANY | JSON_REAL_PRECISION(10)) writes (members in insertion order), about
 * ten times faster. NULL writes null. Not NUL-terminated. */
void sb_json_write(sb_jbuf *b, const json_t *v);

/* Appends |n| bytes of |s| as they are. */
void sb_jbuf_add(sb_jbuf *b, const char *s, size_t n);

/* Appends |s| (NUL-terminated, outside text) quoted as sb_json_quote does. */
void sb_jbuf_quote(sb_jbuf *b, const char *s);

/* sb_json_write's text of |v| as a new NUL-terminated heap string (release with
 * sb_free). Never NULL. */
char *sb_json_text_of(const json_t *v);

#endif
