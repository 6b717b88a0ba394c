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

#include <stddef.h>

/* Writes |s| (NUL-terminated) as a JSON string, quotes included, into |dst| when the
 * text and a terminating NUL fit in |cap|; returns the text's length either way (like
 * snprintf), so sb_json_quote(NULL, 0, s) sizes a buffer. With |cap| >= 6 * strlen(s) + 3
 * (the most it can take) it writes in one pass. Escapes the quote, backslash
 * and control characters (\n \r \t \b \f, else \u00XX, upper-case hex) and nothing else. */
size_t sb_json_quote(char *dst, size_t cap, const char *s);

/* |v| as jansson writes a real with JSON_REAL_PRECISION(10): "%.10g", the exponent
 * without '+' or leading zeros, ".0" added when that looks like an integer; "null" for NaN and
 * infinities (JSON has none). |dst| must hold 40 bytes. Returns the length. */
size_t sb_json_real(char dst[40], double v);

#endif
