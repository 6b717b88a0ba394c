/*
 * a2a_int.h — private to a2a.c and a2a_scan.c: the two ways a request is read.
 *
 * sb_a2a_parse (a2a.h) first tries the one-pass scanner (a2a_scan.c), which handles the
 * common case — a valid send whose body needs nothing but the routed members — without
 * building a tree. Anything else, including every invalid request, goes to the jansson
 * reader (sb_a2a_int_parse_tree), which alone writes error messages: the scanner never
 * decides that a request is invalid, so both paths answer every body the same way.
 */
#ifndef SWITCHBOARD_A2A_INT_H
#define SWITCHBOARD_A2A_INT_H

#include "switchboard/a2a.h"

/* The scanner: SB_OK when |buf| is a valid send (message/send, message/stream,
 * SendMessage, SendStreamingMessage) it could read completely; |out| is then filled as
 * sb_a2a_parse would fill it, with out->root NULL, out->id owned through out->id_ref and
 * the strings in out->strings. Any other result (SB_ERR_INVALID: "not for me") leaves
 * |out| holding nothing to release and means only: use the tree reader. */
int sb_a2a_int_scan(const char *buf, size_t len, sb_a2a_call *out);

/* The scanner on an agent's answer: 1 when |buf| is surely a JSON-RPC response as
 * sb_a2a_is_response means it; 0 means "not sure": ask the tree reader. */
int sb_a2a_int_scan_response(const char *buf, size_t len);

/* sb_a2a_is_response without the scanner (for the differential checks). */
int sb_a2a_int_is_response_tree(const char *buf, size_t len);

/* The tree reader: sb_a2a_parse without the scanner (exposed for the differential
 * tests and the fuzz target, which check that both read every body alike). */
int sb_a2a_int_parse_tree(const char *buf, size_t len, sb_a2a_call *out, sb_a2a_error *err);

/* 1 when |a| and |b| hold the same call (method, kind, version, ids, expiry, id value):
 * what the differential unit test and fuzz target require of the two readers. */
int sb_a2a_int_same(const sb_a2a_call *a, const sb_a2a_call *b);

/* The method table lookups, shared by both readers. */
sb_a2a_method sb_a2a_int_classify(const char *method);
sb_a2a_version sb_a2a_int_version_of(const char *method);

#endif
