/*
 * fuzz_a2a.c — A2A / JSON-RPC 2.0 request validation and every answer built from it.
 *
 * Input: a request body, bytes as they arrive in POST /workspaces/{ws}/a2a. The target
 * runs sb_a2a_parse on it and then builds what switchboard would answer: for a refused
 * body the JSON-RPC error (its message quotes jansson's error text, the path of issue 8),
 * for an accepted send the fallback Task in both A2A shapes, and it checks that each
 * answer serializes and is recognised by sb_a2a_is_response — an answer that is not
 * valid JSON-RPC would be the "answers wrongly" SPEC §1 forbids. The body itself is
 * also judged as an agent's answer (sb_a2a_is_response), as a push's reply would be.
 * Differential: whenever the one-pass scanner (a2a_scan.c) accepts a body, the jansson
 * tree reader must accept it too and read the same call from it; likewise for the body
 * judged as an agent's answer, and the value sb_a2a_answer_member finds in it must be the
 * "result" or "error" the tree holds.
 * Corpus: tests/corpus/a2a/ (the unit suite's data-driven cases).
 */
#include "fuzz.h"

#include <jansson.h>

#include "switchboard/a2a.h"
#include "switchboard/alloc.h"
#include "switchboard/jsontext.h"
#include "switchboard/common.h"
#include "switchboard/queue.h"
#include "switchboard/task.h"
#include "switchboard/utf8.h"

#include "../../src/a2a_int.h"

/* Serializes |answer| (stolen) and checks it is a JSON-RPC response. */
static void check_answer(json_t *answer)
{
    fuzz_check(answer != NULL);
    char *text = json_dumps(answer, JSON_COMPACT);
    fuzz_check(text != NULL);
    fuzz_check(sb_a2a_is_response(text, strlen(text)));
    free(text);
    json_decref(answer);
}

/* The Task a send that fell back is answered with, from what was extracted. */
static void check_fallback_task(const sb_a2a_call *c)
{
    sb_queue_record rec;
    memset(&rec, 0, sizeof(rec));
    rec.id = (char *)(uintptr_t) "q_0000000000000001";
    rec.task_id = (char *)(uintptr_t)(c->task_id ? c->task_id : "sbt_q_0000000000000001");
    rec.message_id = (char *)(uintptr_t)c->message_id;
    rec.context_id = (char *)(uintptr_t)c->context_id;
    rec.method = (char *)(uintptr_t)c->method;
    rec.version = c->version;
    rec.reason = SB_REASON_NO_ENDPOINT;
    rec.detail = (char *)(uintptr_t) "fuzz";
    rec.enqueued_at_ms = 1;
    for (int full = 0; full <= 1; full++) {
        json_t *task = sb_task_from_record(&rec, c->version, full);
        fuzz_check(task != NULL);
        json_decref(task);
    }
    char stack[256];
    sb_jbuf b = {stack, 0, sizeof(stack), 0};
    sb_task_send_text(&b, c->id, &rec, c->version);
    json_t *answer = json_loadb(b.p, b.len, 0, NULL); /* the text is JSON */
    fuzz_check(answer != NULL);
    fuzz_check(sb_a2a_is_response(b.p, b.len));
    if (b.heap)
        sb_free(b.p);
    check_answer(answer);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    sb_a2a_call c;
    sb_a2a_error e;
    memset(&e, 0, sizeof(e));
    int rc = sb_a2a_parse(body, size, &c, &e);
    if (rc == SB_OK) {
        fuzz_check((c.root != NULL || c.id_ref != NULL) && c.method != NULL);
        if (c.kind == SB_A2A_SEND || c.kind == SB_A2A_STREAM) {
            fuzz_check(c.message_id != NULL && c.message_id[0] != '\0');
            check_fallback_task(&c);
        }
        check_answer(sb_a2a_error_response(c.id, SB_JSONRPC_UNDELIVERABLE, c.method, NULL));
    } else {
        fuzz_check(rc == SB_ERR_INVALID);
        fuzz_check(e.code == SB_JSONRPC_PARSE_ERROR || e.code == SB_JSONRPC_INVALID_REQUEST ||
                   e.code == SB_JSONRPC_INVALID_PARAMS);
        /* The message reaches callers and logs: one valid UTF-8 line. */
        fuzz_check(e.message[0] != '\0' && strchr(e.message, '\n') == NULL);
        fuzz_check(sb_utf8_valid(e.message, strlen(e.message)));
        check_answer(sb_a2a_error_response(c.id, e.code, e.message, NULL));
    }
    sb_a2a_call_clear(&c);

    sb_a2a_call fast, tree;
    if (sb_a2a_int_scan(body, size, &fast) == SB_OK) {
        fuzz_check(sb_a2a_int_parse_tree(body, size, &tree, NULL) == SB_OK);
        fuzz_check(sb_a2a_int_same(&fast, &tree));
        sb_a2a_call_clear(&tree);
    }
    sb_a2a_call_clear(&fast);
    if (sb_a2a_int_scan_response(body, size))
        fuzz_check(sb_a2a_int_is_response_tree(body, size));
    (void)sb_a2a_is_response(body, size);
    /* the drain stores an answer's result/error as the bytes sb_a2a_answer_member finds:
     * they must be the very value jansson reads there */
    sb_a2a_answer w;
    if (sb_a2a_answer_member(body, size, &w)) {
        size_t off = w.off, n = w.n;
        int is_error = w.is_error;
        fuzz_check(off + n <= size);
        json_t *whole = json_loadb(body, size, JSON_DECODE_ANY, NULL);
        json_t *part = json_loadb(body + off, n, JSON_DECODE_ANY, NULL);
        fuzz_check(part != NULL &&
                   json_equal(part, json_object_get(whole, is_error ? "error" : "result")));
        json_decref(part);
        json_decref(whole);
    }
    return 0;
}
