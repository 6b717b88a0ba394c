/*
 * utf8.h — the one gate for outside text on its way into JSON, log lines and records.
 *
 * jansson refuses a string that is not valid UTF-8: json_string() returns NULL, which
 * the callers cannot tell apart from out-of-memory (and one of them aborted on it).
 * Text that came from outside — parser error messages, agent bodies, header values,
 * URLs, Redis replies, anything formatted with them — is therefore passed through here
 * first. The rules are Unicode's (Table 3-7, "well-formed UTF-8 byte sequences", the
 * same jansson checks): overlong forms, surrogates and code points past U+10FFFF are
 * invalid. Each maximal invalid subpart becomes one U+FFFD (the W3C/WHATWG practice),
 * a NUL byte becomes U+FFFD too (the result is also used as a C string), and a result
 * that must fit a bound is cut on a character boundary only. Valid input comes out
 * byte for byte unchanged.
 *
 * Ground level: depends on alloc.h and jansson only, keeps no state, never logs.
 */
#ifndef SWITCHBOARD_UTF8_H
#define SWITCHBOARD_UTF8_H

#include <stddef.h>

struct json_t; /* jansson's json_t */

/* The UTF-8 encoding of U+FFFD REPLACEMENT CHARACTER. */
#define SB_UTF8_REPLACEMENT "\xEF\xBF\xBD"

/* Length of the well-formed sequence starting at |s| (|len| > 0 bytes available):
 * 1..4, or 0 when the bytes there do not start one. A NUL byte counts as well-formed
 * (1): it is valid UTF-8, the callers below are the ones that refuse it. */
size_t sb_utf8_seq_len(const unsigned char *s, size_t len);

/* 1 when |len| bytes at |s| are well-formed UTF-8 with no NUL byte, else 0.
 * |s| may be NULL when |len| is 0. */
int sb_utf8_valid(const char *s, size_t len);

/* Copies |len| bytes at |src| into |dst| (capacity |cap| >= 1) as valid UTF-8: invalid
 * subparts and NUL bytes are replaced with U+FFFD, and the copy is cut at the last whole
 * character that fits in cap - 1 bytes. Always NUL-terminates |dst|. |src| may be NULL
 * when |len| is 0. Returns the bytes written, excluding the terminator. |src| and |dst|
 * must not overlap. */
size_t sb_utf8_copy(char *dst, size_t cap, const char *src, size_t len);

/* Makes the NUL-terminated string in |buf| (capacity |cap|, >= 1) valid UTF-8 in place,
 * as sb_utf8_copy would, keeping it within |cap| bytes including the terminator. Meant
 * for fixed buffers filled by vsnprintf, which may cut a character in two. */
void sb_utf8_fix(char *buf, size_t cap);

/* A new heap string (release with sb_free) holding |len| bytes at |s| made valid as
 * sb_utf8_copy does, without a bound. |s| may be NULL when |len| is 0. Never NULL. */
char *sb_utf8_dup(const char *s, size_t len);

/* A new JSON string of the NUL-terminated |s| made valid UTF-8 (NULL gives ""); the
 * caller owns the reference (json_object_set_new takes it). Never NULL: jansson can then
 * fail only on out-of-memory, which aborts, as alloc.h decides. */
struct json_t *sb_json_text(const char *s);

/* Same for |len| bytes at |s| (need not be NUL-terminated; NULL allowed when |len| 0). */
struct json_t *sb_json_textn(const char *s, size_t len);

#endif
