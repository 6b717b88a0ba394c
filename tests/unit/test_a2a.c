/*
 * test_a2a.c — unit tests for a2a.c: a data-driven request corpus plus targeted cases.
 *
 * The corpus lives in tests/corpus/a2a/ (override with SB_CORPUS_DIR), one directory per
 * expected outcome, like jansson's test/suites:
 *   valid/NAME.json           must parse; NAME.expect (required) lists what must be
 *                             extracted: "kind", "version", "method", "message_id",
 *                             "task_id", "context_id", "expires_in_s", "id" (JSON text),
 *                             one "key value" per line, "-" meaning NULL;
 *   invalid-CODE/NAME.json    must fail with JSON-RPC error CODE; an optional NAME.expect
 *                             may give "message SUBSTRING" and "id JSON" (or "-": none).
 * Every body is handed over in a buffer of exactly its size, so a read past the end
 * shows up under AddressSanitizer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "switchboard/a2a.h"
#include "../../src/a2a_int.h"
#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/notify.h"
#include "switchboard/utf8.h"

/* Failures inside one corpus case are reported and counted, so a run lists every broken
 * case at once (and frees its memory) instead of stopping at the first. */
static int case_failures;

static void case_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void case_fail(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    print_error("%s\n", buf);
    case_failures++;
}

static const char *corpus_dir(void)
{
    const char *d = getenv("SB_CORPUS_DIR");
    return d != NULL && *d != '\0' ? d : "tests/corpus/a2a";
}

/* Reads a whole file into an exact-size heap buffer (no terminator when |nul| is 0). */
static char *slurp(const char *path, size_t *len, int nul)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = sb_malloc((size_t)n + (nul ? 1 : 0));
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    assert_int_equal(got, (size_t)n);
    if (nul)
        buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted base names (without ".json") of the corpus files in |sub|. */
static char **list_cases(const char *sub, size_t *count)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", corpus_dir(), sub);
    DIR *d = opendir(path);
    if (d == NULL)
        fail_msg("corpus directory %s is missing (run from the repository root or set "
                 "SB_CORPUS_DIR)",
                 path);
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".json") == 0) {
            names = sb_realloc(names, (n + 1) * sizeof(*names));
            names[n++] = sb_strndup(e->d_name, l - 5);
        }
    }
    closedir(d);
    if (n > 0)
        qsort(names, n, sizeof(*names), cmp_names);
    *count = n;
    return names;
}

static void free_cases(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sb_free(names[i]);
    sb_free(names);
}

typedef struct expect_line {
    char key[32];
    char value[256];
} expect_line;

/* Parses NAME.expect; returns the number of lines, -1 when the file does not exist. */
static int read_expect(const char *sub, const char *name, expect_line *out, int cap)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s/%s.expect", corpus_dir(), sub, name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[400];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL && n < cap) {
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0' || line[0] == '#')
            continue;
        char *sp = strchr(line, ' ');
        if (sp == NULL)
            fail_msg("%s: malformed line \"%s\"", path, line);
        *sp = '\0';
        if (strlen(line) >= sizeof(out[n].key) || strlen(sp + 1) >= sizeof(out[n].value))
            fail_msg("%s: line too long", path);
        memcpy(out[n].key, line, strlen(line) + 1);
        memcpy(out[n].value, sp + 1, strlen(sp + 1) + 1);
        n++;
    }
    fclose(f);
    return n;
}

static const char *kind_name(sb_a2a_method k)
{
    static const char *const names[] = {"SEND",        "STREAM",      "GET_TASK",
                                        "CANCEL_TASK", "RESUBSCRIBE", "OTHER"};
    return (size_t)k < SB_ARRAY_LEN(names) ? names[k] : "?";
}

static void check_str(const char *file, const char *key, const char *want, const char *got)
{
    if (strcmp(want, "-") == 0) {
        if (got != NULL)
            case_fail("%s: %s should be NULL, got \"%s\"", file, key, got);
    } else if (got == NULL || strcmp(want, got) != 0) {
        case_fail("%s: %s should be \"%s\", got %s%s%s", file, key, want, got ? "\"" : "",
                  got ? got : "NULL", got ? "\"" : "");
    }
}

static void check_id(const char *file, const char *want, const json_t *got)
{
    if (strcmp(want, "-") == 0) {
        if (got != NULL)
            case_fail("%s: id should be absent", file);
        return;
    }
    json_error_t je;
    json_t *w = json_loads(want, JSON_DECODE_ANY, &je);
    if (w == NULL) {
        case_fail("%s: bad id in .expect: %s", file, je.text);
        return;
    }
    if (got == NULL || !json_equal(w, got)) {
        char *g = got ? json_dumps(got, JSON_ENCODE_ANY) : NULL;
        case_fail("%s: id should be %s, got %s", file, want, g ? g : "NULL");
        free(g);
    }
    json_decref(w);
}

/* Properties every error must have, whatever the case. */
static void check_error_shape(const char *file, const sb_a2a_call *c, const sb_a2a_error *e)
{
    if (e->message[0] == '\0' || strchr(e->message, '\n') != NULL)
        case_fail("%s: error message must be one non-empty line: \"%s\"", file, e->message);
    /* It quotes the input and is shown to callers and logged: it must be valid UTF-8 even
     * when the input is not, or is cut inside a character (issue 8). */
    if (!sb_utf8_valid(e->message, strlen(e->message)))
        case_fail("%s: error message is not valid UTF-8", file);
    if (c->message_id != NULL || c->task_id != NULL || c->context_id != NULL)
        case_fail("%s: a failed parse must not leave extracted ids behind", file);
    if (c->id != NULL && c->root == NULL)
        case_fail("%s: id set without a root to own it", file);
    /* The answer to a failed request must be a valid JSON-RPC response itself. */
    json_t *resp = sb_a2a_error_response(c->id, e->code, e->message, NULL);
    char *s = json_dumps(resp, 0);
    if (!sb_a2a_is_response(s, strlen(s)))
        case_fail("%s: error answer is not a JSON-RPC response: %s", file, s);
    free(s);
    json_decref(resp);
}

static void check_valid(const char *file, const sb_a2a_call *c, const expect_line *ex, int n)
{
    int seen_kind = 0, seen_mid = 0;
    for (int i = 0; i < n; i++) {
        const char *k = ex[i].key, *v = ex[i].value;
        if (strcmp(k, "kind") == 0) {
            seen_kind = 1;
            check_str(file, k, v, kind_name(c->kind));
        } else if (strcmp(k, "version") == 0) {
            check_str(file, k, v, c->version == SB_A2A_V10 ? "V10" : "V03");
        } else if (strcmp(k, "method") == 0) {
            check_str(file, k, v, c->method);
        } else if (strcmp(k, "message_id") == 0) {
            seen_mid = 1;
            check_str(file, k, v, c->message_id);
        } else if (strcmp(k, "task_id") == 0) {
            check_str(file, k, v, c->task_id);
        } else if (strcmp(k, "context_id") == 0) {
            check_str(file, k, v, c->context_id);
        } else if (strcmp(k, "expires_in_s") == 0) {
            if (strtol(v, NULL, 10) != c->expires_in_s)
                case_fail("%s: expires_in_s should be %s, got %ld", file, v, c->expires_in_s);
        } else if (strcmp(k, "id") == 0) {
            check_id(file, v, c->id);
        } else {
            case_fail("%s: unknown .expect key %s", file, k);
        }
    }
    if (!seen_kind || !seen_mid)
        case_fail("%s: .expect must give at least kind and message_id", file);
}

static size_t scanned; /* valid cases the one-pass scanner took (run_dir) */

static void run_dir(const char *sub, int want_code, size_t min_cases)
{
    size_t n;
    scanned = 0;
    case_failures = 0;
    char **names = list_cases(sub, &n);
    if (n < min_cases)
        fail_msg("%s/%s: %zu cases, expected at least %zu", corpus_dir(), sub, n, min_cases);
    for (size_t i = 0; i < n; i++) {
        char path[512], file[256];
        snprintf(file, sizeof(file), "%s/%s.json", sub, names[i]);
        snprintf(path, sizeof(path), "%s/%s", corpus_dir(), file);
        size_t len;
        char *body = slurp(path, &len, 0);
        if (body == NULL) {
            case_fail("cannot read %s", path);
            continue;
        }
        expect_line ex[16];
        int nex = read_expect(sub, names[i], ex, 16);

        sb_a2a_call c;
        sb_a2a_error e;
        int rc = sb_a2a_parse(body, len, &c, &e);
        if (want_code == 0) {
            if (rc != SB_OK)
                case_fail("%s: should be valid, got %d \"%s\"", file, e.code, e.message);
            else if (nex < 0)
                case_fail("%s: valid cases need a .expect file", file);
            else if ((c.root == NULL && c.id_ref == NULL) || c.method == NULL)
                case_fail("%s: root (or the scanner's id) and method must be set", file);
            else
                check_valid(file, &c, ex, nex);
            /* Both readers must read a valid body alike (a2a_int.h). */
            sb_a2a_call fast, tree;
            if (sb_a2a_int_scan(body, len, &fast) == SB_OK) {
                scanned++;
                if (sb_a2a_int_parse_tree(body, len, &tree, NULL) != SB_OK ||
                    !sb_a2a_int_same(&fast, &tree))
                    case_fail("%s: the scanner and the tree reader disagree", file);
                sb_a2a_call_clear(&tree);
            }
            sb_a2a_call_clear(&fast);
        } else {
            if (rc != SB_ERR_INVALID || e.code != want_code)
                case_fail("%s: should fail with %d, got rc %d code %d \"%s\"", file, want_code, rc,
                          e.code, e.message);
            else
                check_error_shape(file, &c, &e);
            sb_a2a_call fast;
            if (sb_a2a_int_scan(body, len, &fast) == SB_OK)
                case_fail("%s: the scanner accepted an invalid body", file);
            sb_a2a_call_clear(&fast);
            for (int k = 0; k < nex; k++) {
                if (strcmp(ex[k].key, "message") == 0) {
                    if (strstr(e.message, ex[k].value) == NULL)
                        case_fail("%s: message \"%s\" should contain \"%s\"", file, e.message,
                                  ex[k].value);
                } else if (strcmp(ex[k].key, "id") == 0) {
                    check_id(file, ex[k].value, c.id);
                } else {
                    case_fail("%s: unknown .expect key %s", file, ex[k].key);
                }
            }
        }
        sb_a2a_call_clear(&c);
        sb_a2a_call_clear(&c); /* twice is harmless */
        sb_free(body);
    }
    free_cases(names, n);
    if (case_failures > 0)
        fail_msg("%d corpus check(s) failed in %s", case_failures, sub);
}

static void test_corpus_valid(void **state)
{
    run_dir("valid", 0, 30);
    /* The hot path must really be taken: most valid cases are plain sends. */
    if (scanned < 10)
        fail_msg("the one-pass scanner took only %zu valid cases", scanned);
}

static void test_corpus_parse_error(void **state)
{
    run_dir("invalid-32700", SB_JSONRPC_PARSE_ERROR, 10);
}

static void test_corpus_invalid_request(void **state)
{
    run_dir("invalid-32600", SB_JSONRPC_INVALID_REQUEST, 15);
}

static void test_corpus_invalid_params(void **state)
{
    run_dir("invalid-32602", SB_JSONRPC_INVALID_PARAMS, 15);
}

/* Every strict prefix of a valid request is refused with one of the three codes, never a
 * crash or an out-of-bounds read (each prefix is its own exact-size buffer). */
static void test_corpus_valid_prefixes(void **state)
{
    size_t n;
    case_failures = 0;
    char **names = list_cases("valid", &n);
    for (size_t i = 0; i < n; i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/valid/%s.json", corpus_dir(), names[i]);
        size_t len;
        char *body = slurp(path, &len, 1); /* terminated: strspn below reads the tail */
        assert_non_null(body);
        for (size_t cut = 0; cut < len; cut++) {
            char *p = sb_malloc(cut);
            memcpy(p, body, cut);
            sb_a2a_call c;
            sb_a2a_error e;
            int rc = sb_a2a_parse(p, cut, &c, &e);
            /* Only trailing whitespace may be cut from a valid body and keep it valid. */
            int rest_blank = strspn(body + cut, " \t\r\n") == len - cut;
            if (rc == SB_OK && !rest_blank)
                case_fail("valid/%s cut at %zu still parses", names[i], cut);
            if (rc != SB_OK && e.code != SB_JSONRPC_PARSE_ERROR)
                case_fail("valid/%s cut at %zu: code %d", names[i], cut, e.code);
            sb_a2a_call_clear(&c);
            sb_free(p);
        }
        sb_free(body);
    }
    free_cases(names, n);
    if (case_failures > 0)
        fail_msg("%d prefix check(s) failed", case_failures);
}

static void parse_ok(const char *json, sb_a2a_call *c)
{
    sb_a2a_error e;
    int rc = sb_a2a_parse(json, strlen(json), c, &e);
    if (rc != SB_OK)
        fail_msg("unexpected error %d \"%s\" for %s", e.code, e.message, json);
}

static int parse_code(const char *json)
{
    sb_a2a_call c;
    sb_a2a_error e;
    int rc = sb_a2a_parse(json, strlen(json), &c, &e);
    sb_a2a_call_clear(&c);
    return rc == SB_OK ? 0 : e.code;
}

/* A few inline cases that are clearer next to the code than in files. */
static void test_inline_codes(void **state)
{
    assert_int_equal(parse_code("{}"), SB_JSONRPC_INVALID_REQUEST);
    assert_int_equal(parse_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"}"), 0);
    assert_int_equal(parse_code("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":[]}"),
                     SB_JSONRPC_INVALID_PARAMS);
    assert_int_equal(parse_code("[1,2]"), SB_JSONRPC_INVALID_REQUEST);
    assert_int_equal(parse_code("{\"a\":1,\"a\":1}"), SB_JSONRPC_INVALID_REQUEST);
    assert_int_equal(parse_code("{\"a\":"), SB_JSONRPC_PARSE_ERROR);
    /* Strings that merely look like the forbidden shapes are fine. */
    assert_int_equal(parse_code("{\"jsonrpc\":\"2.0\",\"id\":\"[1]\",\"method\":\"message/send\","
                                "\"params\":{\"message\":{\"messageId\":\"{}\"}}}"),
                     0);
}

static void test_extracted_pointers_are_borrowed(void **state)
{
    sb_a2a_call c;
    const char *body = "{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"message/send\",\"params\":{"
                       "\"message\":{\"messageId\":\"m\",\"taskId\":\"t\",\"contextId\":\"k\"}}}";
    /* The scanner takes this one (no tree); the tree reader's pointers borrow from root. */
    parse_ok(body, &c);
    assert_null(c.root);
    assert_non_null(c.id_ref);
    assert_string_equal(c.message_id, "m");
    sb_a2a_call_clear(&c);
    assert_null(c.id_ref);
    assert_null(c.strings);
    assert_int_equal(sb_a2a_int_parse_tree(body, strlen(body), &c, NULL), SB_OK);
    const json_t *msg = json_object_get(json_object_get(c.root, "params"), "message");
    assert_ptr_equal(c.message_id, json_string_value(json_object_get(msg, "messageId")));
    assert_ptr_equal(c.task_id, json_string_value(json_object_get(msg, "taskId")));
    assert_ptr_equal(c.context_id, json_string_value(json_object_get(msg, "contextId")));
    assert_ptr_equal(c.id, json_object_get(c.root, "id"));
    assert_ptr_equal(c.method, json_string_value(json_object_get(c.root, "method")));
    sb_a2a_call_clear(&c);
    assert_null(c.root);
    assert_null(c.message_id);
    assert_int_equal(c.expires_in_s, -1);
}

static void test_v10_name_points_into_string(void **state)
{
    sb_a2a_call c;
    parse_ok("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"CancelTask\","
             "\"params\":{\"name\":\"tasks/abc\"}}",
             &c);
    const char *name =
        json_string_value(json_object_get(json_object_get(c.root, "params"), "name"));
    assert_ptr_equal(c.task_id, name + 6);
    assert_string_equal(c.task_id, "abc");
    assert_int_equal(c.kind, SB_A2A_CANCEL_TASK);
    assert_int_equal(c.version, SB_A2A_V10);
    sb_a2a_call_clear(&c);

    /* "tasks/" alone names nothing. */
    parse_ok(
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"GetTask\",\"params\":{\"name\":\"tasks/\"}}",
        &c);
    assert_null(c.task_id);
    sb_a2a_call_clear(&c);
}

static void test_version_and_kind_table(void **state)
{
    static const struct {
        const char *method;
        sb_a2a_method kind;
        sb_a2a_version ver;
    } cases[] = {
        {"message/send", SB_A2A_SEND, SB_A2A_V03},
        {"message/stream", SB_A2A_STREAM, SB_A2A_V03},
        {"tasks/get", SB_A2A_GET_TASK, SB_A2A_V03},
        {"tasks/cancel", SB_A2A_CANCEL_TASK, SB_A2A_V03},
        {"tasks/resubscribe", SB_A2A_RESUBSCRIBE, SB_A2A_V03},
        {"tasks/pushNotificationConfig/set", SB_A2A_OTHER, SB_A2A_V03},
        {"tasks/pushNotificationConfig/get", SB_A2A_OTHER, SB_A2A_V03},
        {"agent/getAuthenticatedExtendedCard", SB_A2A_OTHER, SB_A2A_V03},
        {"SendMessage", SB_A2A_SEND, SB_A2A_V10},
        {"SendStreamingMessage", SB_A2A_STREAM, SB_A2A_V10},
        {"GetTask", SB_A2A_GET_TASK, SB_A2A_V10},
        {"CancelTask", SB_A2A_CANCEL_TASK, SB_A2A_V10},
        {"SubscribeToTask", SB_A2A_RESUBSCRIBE, SB_A2A_V10},
        {"ListTasks", SB_A2A_OTHER, SB_A2A_V10},
        {"SetTaskPushNotificationConfig", SB_A2A_OTHER, SB_A2A_V10},
        {"GetExtendedAgentCard", SB_A2A_OTHER, SB_A2A_V10},
        {"sendmessage", SB_A2A_OTHER, SB_A2A_V03},
        {"message/send/", SB_A2A_OTHER, SB_A2A_V03},
        {"Tasks/Get", SB_A2A_OTHER, SB_A2A_V03},
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(cases); i++) {
        json_t *req =
            json_pack("{s:s,s:i,s:s,s:{s:{s:s},s:s}}", "jsonrpc", "2.0", "id", 1, "method",
                      cases[i].method, "params", "message", "messageId", "m", "id", "t");
        char *s = json_dumps(req, 0);
        sb_a2a_call c;
        parse_ok(s, &c);
        if (c.kind != cases[i].kind || c.version != cases[i].ver)
            fail_msg("%s: kind %d version %d", cases[i].method, c.kind, c.version);
        sb_a2a_call_clear(&c);
        free(s);
        json_decref(req);
    }
}

static void test_error_fields_on_failure(void **state)
{
    sb_a2a_call c;
    sb_a2a_error e;
    const char *req = "{\"jsonrpc\":\"2.0\",\"id\":\"k\",\"method\":\"SendMessage\",\"params\":{}}";
    assert_int_equal(sb_a2a_parse(req, strlen(req), &c, &e), SB_ERR_INVALID);
    assert_int_equal(e.code, SB_JSONRPC_INVALID_PARAMS);
    assert_non_null(c.root);
    assert_string_equal(json_string_value(c.id), "k");
    assert_string_equal(c.method, "SendMessage");
    assert_int_equal(c.kind, SB_A2A_SEND);
    assert_int_equal(c.version, SB_A2A_V10);
    sb_a2a_call_clear(&c);

    /* A method that is not readable leaves kind at OTHER, never a misleading SEND. */
    req = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":5}";
    assert_int_equal(sb_a2a_parse(req, strlen(req), &c, &e), SB_ERR_INVALID);
    assert_null(c.method);
    assert_int_equal(c.kind, SB_A2A_OTHER);
    sb_a2a_call_clear(&c);

    /* |err| may be NULL. */
    assert_int_equal(sb_a2a_parse("{", 1, &c, NULL), SB_ERR_INVALID);
    assert_null(c.root);
    sb_a2a_call_clear(&c);
}

static void test_parse_error_message_has_position(void **state)
{
    sb_a2a_call c;
    sb_a2a_error e;
    const char *req = "{\"jsonrpc\":\"2.0\",\n\"id\":1,\n\"method\":}";
    assert_int_equal(sb_a2a_parse(req, strlen(req), &c, &e), SB_ERR_INVALID);
    assert_int_equal(e.code, SB_JSONRPC_PARSE_ERROR);
    assert_non_null(strstr(e.message, "line 3"));
    assert_null(c.root);
    assert_null(c.id);
    sb_a2a_call_clear(&c);
}

/* The length is honoured: bytes after |len| are never looked at. */
static void test_length_not_terminator(void **state)
{
    const char *full = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tasks/get\"}GARBAGE";
    size_t len = strlen(full) - strlen("GARBAGE");
    sb_a2a_call c;
    sb_a2a_error e;
    assert_int_equal(sb_a2a_parse(full, len, &c, &e), SB_OK);
    sb_a2a_call_clear(&c);
    assert_int_equal(sb_a2a_parse(full, strlen(full), &c, &e), SB_ERR_INVALID);
    assert_int_equal(e.code, SB_JSONRPC_PARSE_ERROR);
    sb_a2a_call_clear(&c);
}

/* A request id stays an integer even when another member forced the integers-as-reals
 * re-parse, so the answer echoes "id":31 and not 31.0. */
static void test_big_integer_keeps_integer_id(void **state)
{
    sb_a2a_call c;
    parse_ok("{\"jsonrpc\":\"2.0\",\"id\":31,\"method\":\"message/send\",\"params\":{"
             "\"message\":{\"messageId\":\"m\"},\"metadata\":{\"expires_in_s\":60,"
             "\"n\":99999999999999999999999}}}",
             &c);
    assert_true(json_is_integer(c.id));
    assert_int_equal(json_integer_value(c.id), 31);
    json_t *r = sb_a2a_result_response(c.id, NULL);
    char *s = json_dumps(r, JSON_COMPACT);
    assert_string_equal(s, "{\"jsonrpc\":\"2.0\",\"id\":31,\"result\":null}");
    free(s);
    json_decref(r);
    /* expires_in_s survives that re-parse too. */
    assert_int_equal(c.expires_in_s, 60);
    sb_a2a_call_clear(&c);
}

static void test_expires_in_s_large(void **state)
{
    sb_a2a_call c;
    parse_ok("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message/send\",\"params\":{"
             "\"message\":{\"messageId\":\"m\"},\"metadata\":{\"expires_in_s\":"
             "9223372036854775807}}}",
             &c);
    assert_true(c.expires_in_s > 0);
    sb_a2a_call_clear(&c);
    parse_ok("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message/send\",\"params\":{"
             "\"message\":{\"messageId\":\"m\"},\"metadata\":{\"expires_in_s\":1}}}",
             &c);
    assert_int_equal(c.expires_in_s, 1);
    sb_a2a_call_clear(&c);
}

static char *build_big_request(size_t target, size_t *len)
{
    /* A send with one ~|target|-byte text part and many small parts, to exercise both the
     * long-string and the many-members paths. */
    size_t cap = target + 4096;
    char *buf = sb_malloc(cap);
    size_t n = (size_t)snprintf(buf, cap,
                                "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message/send\","
                                "\"params\":{\"message\":{\"messageId\":\"m-big\",\"parts\":["
                                "{\"kind\":\"text\",\"text\":\"");
    size_t text_end = n + target / 2;
    for (; n < text_end; n++)
        buf[n] = (char)('a' + n % 26);
    n += (size_t)snprintf(buf + n, cap - n, "\"}");
    for (int k = 0; n + 64 < target; k++)
        n += (size_t)snprintf(buf + n, cap - n, ",{\"kind\":\"data\",\"data\":{\"k%d\":%d}}", k, k);
    n += (size_t)snprintf(buf + n, cap - n, "]}}}");
    *len = n;
    return buf;
}

/* 4 MiB, the default body limit: parses correctly and in linear time. A quadratic step
 * over 4 MiB takes minutes; the bound is generous for sanitizer builds. */
static void test_four_mib_body(void **state)
{
    size_t len;
    char *buf = build_big_request((size_t)4 << 20, &len);
    assert_true(len > ((size_t)4 << 20) - 4096);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sb_a2a_call c;
    sb_a2a_error e;
    int rc = sb_a2a_parse(buf, len, &c, &e);
    if (rc != SB_OK)
        fail_msg("4 MiB body: %d %s", e.code, e.message);
    assert_string_equal(c.message_id, "m-big");
    sb_a2a_call_clear(&c);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (secs > 10.0)
        fail_msg("parsing 4 MiB took %.1f s", secs);
    sb_free(buf);
}

static void test_deep_nesting_refused(void **state)
{
    size_t depth = 100000;
    char *buf = sb_malloc(2 * depth);
    memset(buf, '[', depth);
    memset(buf + depth, ']', depth);
    sb_a2a_call c;
    sb_a2a_error e;
    assert_int_equal(sb_a2a_parse(buf, 2 * depth, &c, &e), SB_ERR_INVALID);
    assert_int_equal(e.code, SB_JSONRPC_PARSE_ERROR);
    sb_a2a_call_clear(&c);
    sb_free(buf);
}

static char *dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    assert_non_null(s);
    return s;
}

static void test_error_response_shapes(void **state)
{
    json_t *sid = json_string("abc"), *iid = json_integer(-7), *rid = json_real(2.5);
    json_t *nid = json_null(), *oid = json_object(), *bid = json_true();
    static const struct {
        int which;
        const char *want;
    } cases[] = {
        {0, "{\"jsonrpc\":\"2.0\",\"id\":\"abc\",\"error\":{\"code\":-32600,\"message\":\"m\"}}"},
        {1, "{\"jsonrpc\":\"2.0\",\"id\":-7,\"error\":{\"code\":-32600,\"message\":\"m\"}}"},
        {2, "{\"jsonrpc\":\"2.0\",\"id\":2.5,\"error\":{\"code\":-32600,\"message\":\"m\"}}"},
        {3, "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32600,\"message\":\"m\"}}"},
        {4, "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32600,\"message\":\"m\"}}"},
        {5, "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32600,\"message\":\"m\"}}"},
        {6, "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32600,\"message\":\"m\"}}"},
    };
    const json_t *ids[] = {sid, iid, rid, nid, oid, bid, NULL};
    for (size_t i = 0; i < SB_ARRAY_LEN(cases); i++) {
        json_t *r =
            sb_a2a_error_response(ids[cases[i].which], SB_JSONRPC_INVALID_REQUEST, "m", NULL);
        char *s = dump(r);
        assert_string_equal(s, cases[i].want);
        assert_true(sb_a2a_is_response(s, strlen(s)));
        free(s);
        json_decref(r);
    }
    /* The id is copied, not shared: the request can go away first. */
    json_t *r = sb_a2a_error_response(sid, -32602, "x", NULL);
    assert_ptr_not_equal(json_object_get(r, "id"), sid);
    assert_int_equal(sid->refcount, 1);
    json_decref(sid);
    char *s = dump(r);
    assert_non_null(strstr(s, "\"id\":\"abc\""));
    free(s);
    json_decref(r);
    json_decref(iid);
    json_decref(rid);
    json_decref(nid);
    json_decref(oid);
    json_decref(bid);
}

static void test_error_response_data_and_defaults(void **state)
{
    json_t *data = json_pack("{s:s}", "reason", "no_endpoint");
    json_incref(data);
    json_t *id = json_integer(3);
    json_t *r = sb_a2a_error_response(id, SB_JSONRPC_UNDELIVERABLE, "down", data);
    assert_int_equal(data->refcount, 2); /* stolen: the response holds the caller's ref */
    assert_ptr_equal(json_object_get(json_object_get(r, "error"), "data"), data);
    char *s = dump(r);
    assert_string_equal(s, "{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"code\":-32050,"
                           "\"message\":\"down\",\"data\":{\"reason\":\"no_endpoint\"}}}");
    free(s);
    json_decref(r);
    assert_int_equal(data->refcount, 1);
    json_decref(data);

    static const struct {
        int code;
        const char *msg;
    } defaults[] = {{-32700, "Parse error"},      {-32600, "Invalid Request"},
                    {-32601, "Method not found"}, {-32602, "Invalid params"},
                    {-32603, "Internal error"},   {-32000, "Server error"}};
    for (size_t i = 0; i < SB_ARRAY_LEN(defaults); i++) {
        r = sb_a2a_error_response(id, defaults[i].code, NULL, NULL);
        const json_t *err = json_object_get(r, "error");
        assert_string_equal(json_string_value(json_object_get(err, "message")), defaults[i].msg);
        assert_int_equal(json_integer_value(json_object_get(err, "code")), defaults[i].code);
        assert_null(json_object_get(err, "data"));
        json_decref(r);
    }
    json_decref(id);
}

static void test_result_response(void **state)
{
    json_t *id = json_string("q");
    json_t *task = json_pack("{s:s,s:s}", "kind", "task", "id", "t-1");
    json_incref(task);
    json_t *r = sb_a2a_result_response(id, task);
    assert_ptr_equal(json_object_get(r, "result"), task);
    assert_int_equal(task->refcount, 2);
    char *s = dump(r);
    assert_string_equal(
        s, "{\"jsonrpc\":\"2.0\",\"id\":\"q\",\"result\":{\"kind\":\"task\",\"id\":\"t-1\"}}");
    assert_true(sb_a2a_is_response(s, strlen(s)));
    free(s);
    json_decref(r);
    json_decref(task);
    r = sb_a2a_result_response(NULL, NULL);
    s = dump(r);
    assert_string_equal(s, "{\"jsonrpc\":\"2.0\",\"id\":null,\"result\":null}");
    free(s);
    json_decref(r);
    json_decref(id);
}

/* sb_a2a_answer_member on |copy|: when it answers, the bytes it points at are one JSON
 * value equal to the answer's "result" or "error" as jansson reads the whole body, and it
 * answers whenever the scanner takes the body. */
static void check_member(const char *copy, size_t len)
{
    sb_a2a_answer w = {0, 0, -1};
    int got = sb_a2a_answer_member(copy, len, &w);
    size_t off = w.off, n = w.n;
    int is_error = w.is_error;
    if (got != sb_a2a_int_scan_response(copy, len))
        fail_msg("answer_member and the scanner disagree on %.*s", (int)len, copy);
    if (!got)
        return;
    json_t *whole = json_loadb(copy, len, JSON_DECODE_ANY, NULL);
    json_t *part = off + n <= len ? json_loadb(copy + off, n, JSON_DECODE_ANY, NULL) : NULL;
    const json_t *want = json_object_get(whole, is_error ? "error" : "result");
    if (part == NULL || want == NULL || !json_equal(part, want))
        fail_msg("answer_member's %s is [%.*s] in %.*s", is_error ? "error" : "result", (int)n,
                 copy + off, (int)len, copy);
    json_decref(part);
    json_decref(whole);
}

static void test_is_response(void **state)
{
    static const struct {
        const char *body;
        int want;
    } cases[] = {
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"kind\":\"task\"}}", 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":null}", 1},
        {"{\"jsonrpc\":\"2.0\",\"result\" : {\"a\":[1,{\"b\":\"}]\\\"\"}], \"c\":{}} ,\"id\":2}",
         1},
        {"{\"result\":[[],{}],\"jsonrpc\":\"2.0\"}", 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":null,\"result\":0}", 1},
        {"{\"jsonrpc\":\"2.0\",\"result\":[]}", 1}, /* id is not checked */
        {"  {\"result\":\"x\",\"jsonrpc\":\"2.0\"}\n", 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32001,\"message\":\"Task not "
         "found\"}}",
         1},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32001,\"message\":\"x\",\"data\":[1]}"
         "}",
         1},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"n\":123456789012345678901234567890}}", 1},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32000,\"message\":\"m\",\"data\":"
         "123456789012345678901234567890}}",
         1},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1,\"result\":2}", 1}, /* dups tolerated */
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"a\\u0000b\"}", 1},
        {"", 0},
        {"not json", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1", 0},
        {"[{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1}]", 0},
        {"\"2.0\"", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1,\"error\":{\"code\":1,\"message\":\"m\"}}", 0},
        {"{\"jsonrpc\":\"1.0\",\"id\":1,\"result\":1}", 0},
        {"{\"jsonrpc\":\"2.0\\u0000\",\"id\":1,\"result\":1}", 0},
        {"{\"id\":1,\"result\":1}", 0},
        {"{\"jsonrpc\":2,\"id\":1,\"result\":1}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":\"boom\"}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":null}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"message\":\"m\"}}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":\"-32000\",\"message\":\"m\"}}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32000.5,\"message\":\"m\"}}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32000}}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32000,\"message\":7}}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"message/send\",\"params\":{}}", 0},
        {"<html>502 Bad Gateway</html>", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1}\"x", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1}\f", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":1e400,\"message\":\"m\"}}", 0},
    };
    scanned = 0;
    for (size_t i = 0; i < SB_ARRAY_LEN(cases); i++) {
        const char *b = cases[i].body;
        size_t len = strlen(b);
        char *copy = sb_malloc(len ? len : 1); /* exact size: no terminator to lean on */
        memcpy(copy, b, len);
        if (sb_a2a_is_response(copy, len) != cases[i].want)
            fail_msg("case %zu: is_response(%s) should be %d", i, b, cases[i].want);
        /* Both readers: the scanner may only say "surely" where the tree reader agrees. */
        if (sb_a2a_int_is_response_tree(copy, len) != cases[i].want)
            fail_msg("case %zu: the tree reader disagrees on %s", i, b);
        int fast = sb_a2a_int_scan_response(copy, len);
        check_member(copy, len);
        if (fast && !cases[i].want)
            fail_msg("case %zu: the scanner took %s for an answer", i, b);
        scanned += (size_t)fast;
        sb_free(copy);
    }
    if (scanned < 6)
        fail_msg("the scanner recognised only %zu answers", scanned);
}

/* ---- the one-pass scanner's grammar, against the tree reader ---- */

/* |body| (|len| bytes, copied to an exact-size buffer) through both readers, as a request
 * and as an agent's answer: whenever the scanner says yes, the tree reader must agree and
 * read the same call. Returns 1 when the scanner took it as a request. */
static int differential(const char *body, size_t len)
{
    char *copy = sb_malloc(len ? len : 1);
    memcpy(copy, body, len);
    sb_a2a_call fast, tree;
    int took = sb_a2a_int_scan(copy, len, &fast) == SB_OK;
    if (took) {
        if (sb_a2a_int_parse_tree(copy, len, &tree, NULL) != SB_OK)
            fail_msg("the scanner took a body the tree reader refuses: %.*s", (int)len, body);
        if (!sb_a2a_int_same(&fast, &tree))
            fail_msg("the readers disagree on %.*s", (int)len, body);
        sb_a2a_call_clear(&tree);
    }
    sb_a2a_call_clear(&fast);
    if (sb_a2a_int_scan_response(copy, len) && !sb_a2a_int_is_response_tree(copy, len))
        fail_msg("the scanner took a non-answer: %.*s", (int)len, body);
    check_member(copy, len);
    sb_free(copy);
    return took;
}

/* Hand-picked bodies around each rule of the grammar; |scan| 1 marks the ones the scanner
 * must take itself (so escapes, white space and numbers are really read, not declined). */
static void test_scanner_grammar(void **state)
{
    static const struct {
        const char *body;
        int scan;
    } cases[] = {
#define SEND(before_mid, mid, after)                                                               \
    "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"message/"                                          \
    "send\",\"params\":{\"message\":{" before_mid "\"messageId\":" mid after "}}}"
        {SEND("", "\"m1\"", ""), 1},
        {SEND("", "\"m\\u00e9\\u20ac\\/\\\"\\\\\\n\\t\\b\\f\\r\"", ""), 1},
        {SEND("", "\"m\\u0041\"", ""), 1},
        {SEND("\"mess\\u0061geId\":\"esc\",", "\"x\"", ""), 0}, /* a duplicate, escaped */
        {SEND("\"parts\":[1,-0,0.5,-1.25,true,false,null,[],{},[[{}]],\"s\"],", "\"m\"", ""), 1},
        {SEND("\"n\":1e5,", "\"m\"", ""), 0}, /* an exponent anywhere: jansson may overflow */
        {SEND("", "\"m\"", ",\"n\":01"), 0},
        {SEND("", "\"m\"", ",\"n\":1."), 0},
        {SEND("", "\"m\"", ",\"n\":.5"), 0},
        {SEND("", "\"m\"", ",\"n\":-"), 0},
        {SEND("", "\"m\"", ",\"n\":+1"), 0},
        {SEND("", "\"m\"", ",\"n\":1e"), 0},
        {SEND("", "\"m\"", ",\"n\":tru"), 0},
        {SEND("", "\"m\"", ",\"n\":nul"), 0},
        {SEND("", "\"m\"", ",\"n\":True"), 0},
        {SEND("", "\"m\"", ",\"n\":[1,]"), 0},
        {SEND("", "\"m\"", ",\"n\":[,1]"), 0},
        {SEND("", "\"m\"", ",\"n\":{,}"), 0},
        {SEND("", "\"m\"", ",\"n\":{\"a\"}"), 0},
        {SEND("", "\"m\"", ",\"n\":{\"a\":1,}"), 0},
        {SEND("", "\"m\"", ",\"n\":[1 2]"), 0},
        {SEND("", "\"m\"", ",\"n\":\"\\x\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\\u12\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\\u12G4\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\\u0000\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\\ud83d\\ude00\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\\uDC00\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\\\\u0000\""), 1}, /* a backslash, then text */
        {SEND("", "\"m\"", ",\"n\":\"tab\there\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\x01\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\xc3\xa9\xe2\x82\xac\""), 1},
        {SEND("", "\"m\"", ",\"n\":\"\xc3\""), 0},
        {SEND("", "\"m\"", ",\"n\":\"\\n\xc3\""), 0}, /* escaped, then bad */
        {SEND("", "\"m\"", ",\"n\":\"\\n\xc3\xa9\xf0\x9f\x98\x80\""), 1},
        {SEND("", "\"m\"", ",\"\xff\":1"), 0}, /* in a key */
        {SEND("", "\"m\"", ",\"\xc3\xa9\":1"), 1},
        {SEND("", "\"m\"", " \xc3\xa9"), 0},                   /* outside strings */
        {SEND("", "\"m\"", ",\"n\":\"\xed\xa0\x80\""), 0},     /* an encoded surrogate */
        {SEND("", "\"m\"", ",\"n\":\"\xf4\x90\x80\x80\""), 0}, /* past U+10FFFF */
        {SEND("", "\"m\"", ",\"n\":\"\xc0\xaf\""), 0},         /* overlong */
        {SEND("", "\"m\"", ",\"n\":\"\xe2\x82\""), 0},         /* cut short */
        {SEND("", "\"m\\u0000\"", ""), 0},
        {" \t\r\n" SEND("", "\"m\"", "") " \n", 1},
        {"{ \"jsonrpc\" : \"2.0\" , \"id\" : \"a\" , \"method\" : \"message/send\" , \"params\" "
         ": { \"message\" : { \"messageId\" : \"m\" } } }",
         1},
        {SEND("", "\"m\"", "") "\f", 0},
        {"\f" SEND("", "\"m\"", ""), 0},
        {SEND("", "\"m\"", "") "x", 0},
        {SEND("", "\"m\"", "") "\"", 0},
        {SEND("", "\"m\"", "") "{}", 0},
        {SEND("", "\"m\"", "") "}", 0},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"message/send\",\"params\":{\"message\":{"
         "\"messageId\":\"m\"}}",
         0},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"message/send\",\"params\":{\"message\":{"
         "\"messageId\":\"m\"}}},",
         0},
        {"{\"jso\\u006erpc\":\"2.0\",\"id\":7,\"method\":\"message/send\",\"params\":{\"message\":"
         "{\"messageId\":\"m\"}}}",
         1},
        {"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"message/send\",\"params\":{\"message\":{"
         "\"messageId\":\"m\"}},\"jsonrpc\":\"2.0\"}",
         0},
        {"", 0},
        {"   ", 0},
        {"[]", 0},
        {"{", 0},
        {"{\"", 0},
        {"{\"a\":", 0},
    };
    for (size_t i = 0; i < SB_ARRAY_LEN(cases); i++) {
        int t = differential(cases[i].body, strlen(cases[i].body));
        if (cases[i].scan && !t)
            fail_msg("case %zu: the scanner should take %s", i, cases[i].body);
    }
    /* Nesting up to the scanner's limit and past it. */
    char deep[600];
    for (int depth = 1; depth < 100; depth += 7) {
        size_t len =
            (size_t)sprintf(deep, "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"message/send\","
                                  "\"params\":{\"message\":{\"messageId\":\"m\",\"d\":");
        for (int k = 0; k < depth; k++)
            deep[len++] = '[';
        for (int k = 0; k < depth; k++)
            deep[len++] = ']';
        memcpy(deep + len, "}}}", 3);
        len += 3;
        int t = differential(deep, len);
        if (depth < 60 && !t)
            fail_msg("depth %d: the scanner should take it", depth);
    }
#undef SEND
}

/* Every one-byte change of a valid send and of an answer (each byte replaced by, or
 * preceded by, one of the bytes the grammar turns on, or dropped) and every cut: the
 * scanner may decline any of them, but never take one the tree reader reads otherwise. */
static void test_scanner_mutations(void **state)
{
    static const char *const bases[] = {
        "{\"jsonrpc\":\"2.0\",\"id\":\"b-1\",\"method\":\"message/send\",\"params\":{\"message\":"
        "{\"kind\":\"message\",\"messageId\":\"m\\u00e9\",\"taskId\":\"t\",\"contextId\":null,"
        "\"parts\":[{\"kind\":\"text\",\"text\":\"hi \\\"x\\\"\"}]},\"metadata\":{\"expires_in_s\":"
        "30}}}",
        "{\"jsonrpc\":\"2.0\",\"id\":12,\"result\":{\"kind\":\"message\",\"parts\":[1.5,true,null]}"
        "}",
        "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":-32000,\"message\":\"m\"}}",
    };
    static const char alphabet[] = "\"\\{}[],:0-.e tnfu\x01\f\x80";
    char buf[512];
    size_t took = 0;
    for (size_t b = 0; b < SB_ARRAY_LEN(bases); b++) {
        const char *base = bases[b];
        size_t n = strlen(base);
        took += (size_t)differential(base, n);
        for (size_t at = 0; at <= n; at++) {
            differential(base, at); /* cut */
            for (size_t k = 0; k < sizeof(alphabet) - 1; k++) {
                memcpy(buf, base, n);
                if (at < n) { /* replaced */
                    buf[at] = alphabet[k];
                    took += (size_t)differential(buf, n);
                }
                memcpy(buf, base, at); /* inserted */
                buf[at] = alphabet[k];
                memcpy(buf + at + 1, base + at, n - at);
                took += (size_t)differential(buf, n + 1);
            }
            if (at < n) { /* dropped */
                memcpy(buf, base, at);
                memcpy(buf + at, base + at + 1, n - at - 1);
                took += (size_t)differential(buf, n - 1);
            }
        }
    }
    assert_true(took > 100); /* many changes keep a valid send the scanner reads */
}

/* ---- agent cards seen through switchboard; push-notification configs ---- */

static void test_card_rewrite_and_public_url(void **state)
{
    (void)state;
    char *url = sb_a2a_public_url("https", "sb.example:443", "127.0.0.1:8080", "alice");
    assert_string_equal(url, "https://sb.example:443/workspaces/alice/a2a");
    sb_free(url);
    url = sb_a2a_public_url("gopher", "bad host/x", "127.0.0.1:8080", "alice");
    assert_string_equal(url, "http://127.0.0.1:8080/workspaces/alice/a2a");
    json_t *card = json_loads("{\"url\":\"http://10.0.0.7:8090/\",\"additionalInterfaces\":"
                              "[{\"url\":\"http://10.0.0.7:8090/\",\"transport\":\"JSONRPC\"},"
                              "{\"transport\":\"GRPC\"}],\"supportedInterfaces\":"
                              "[{\"url\":\"http://10.0.0.7:9/\"}]}",
                              0, NULL);
    sb_a2a_card_rewrite(card, url);
    char *text = json_dumps(card, JSON_COMPACT | JSON_SORT_KEYS);
    assert_null(strstr(text, "10.0.0.7"));
    assert_non_null(strstr(text, "{\"transport\":\"GRPC\"}")); /* no url: none added */
    sb_free(text);
    json_decref(card);
    sb_a2a_card_rewrite(NULL, url); /* not an object: left alone */
    sb_free(url);
    assert_true(sb_a2a_is_card_method("agent/getAuthenticatedExtendedCard"));
    assert_true(sb_a2a_is_card_method("GetExtendedAgentCard"));
    assert_false(sb_a2a_is_card_method("message/send"));
    assert_false(sb_a2a_is_card_method(NULL));
}

static void test_notify_config_shapes(void **state)
{
    (void)state;
    json_t *v03 = json_loads(
        "{\"params\":{\"configuration\":{\"pushNotificationConfig\":{\"url\":\"http://h/cb\","
        "\"token\":\"t\",\"authentication\":{\"schemes\":[\"Bearer\"],\"credentials\":\"c\"}}}}}",
        0, NULL);
    json_t *n = sb_notify_config_of(v03, "sbtask_x");
    assert_non_null(n);
    assert_string_equal(json_string_value(json_object_get(n, "id")), "sbtask_x");
    assert_string_equal(json_string_value(json_object_get(n, "scheme")), "Bearer");
    assert_string_equal(json_string_value(json_object_get(n, "credentials")), "c");
    json_decref(n);
    json_t *v10 = json_loads("{\"params\":{\"configuration\":{\"taskPushNotificationConfig\":"
                             "{\"id\":\"c1\",\"url\":\"http://h/cb\",\"authentication\":"
                             "{\"scheme\":\"Basic\",\"credentials\":\"dXNlcg==\"}}}}}",
                             0, NULL);
    n = sb_notify_config_of(v10, "sbtask_x");
    assert_string_equal(json_string_value(json_object_get(n, "id")), "c1");
    assert_string_equal(json_string_value(json_object_get(n, "scheme")), "Basic");
    assert_null(json_object_get(n, "token"));
    json_decref(n);
    json_t *none = json_loads("{\"params\":{\"configuration\":{\"pushNotificationConfig\":"
                              "{\"token\":\"no url\"}}}}",
                              0, NULL);
    assert_null(sb_notify_config_of(none, "sbtask_x"));
    json_t *crlf = json_loads("{\"params\":{\"configuration\":{\"pushNotificationConfig\":"
                              "{\"url\":\"http://h/\",\"token\":\"a\\r\\nX-Evil: 1\"}}}}",
                              0, NULL);
    n = sb_notify_config_of(crlf, "sbtask_x");
    assert_non_null(n);
    assert_null(json_object_get(n, "token")); /* never split a header */
    json_decref(n);
    json_decref(crlf);
    assert_null(sb_notify_config_of(NULL, "sbtask_x"));
    assert_true(sb_notify_is_config_method("tasks/pushNotificationConfig/set"));
    assert_true(sb_notify_is_config_method("ListTaskPushNotificationConfigs"));
    assert_false(sb_notify_is_config_method("tasks/get"));
    json_decref(v03);
    json_decref(v10);
    json_decref(none);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus_valid),
        cmocka_unit_test(test_corpus_parse_error),
        cmocka_unit_test(test_corpus_invalid_request),
        cmocka_unit_test(test_corpus_invalid_params),
        cmocka_unit_test(test_corpus_valid_prefixes),
        cmocka_unit_test(test_inline_codes),
        cmocka_unit_test(test_extracted_pointers_are_borrowed),
        cmocka_unit_test(test_v10_name_points_into_string),
        cmocka_unit_test(test_version_and_kind_table),
        cmocka_unit_test(test_error_fields_on_failure),
        cmocka_unit_test(test_parse_error_message_has_position),
        cmocka_unit_test(test_length_not_terminator),
        cmocka_unit_test(test_big_integer_keeps_integer_id),
        cmocka_unit_test(test_expires_in_s_large),
        cmocka_unit_test(test_four_mib_body),
        cmocka_unit_test(test_deep_nesting_refused),
        cmocka_unit_test(test_error_response_shapes),
        cmocka_unit_test(test_error_response_data_and_defaults),
        cmocka_unit_test(test_result_response),
        cmocka_unit_test(test_is_response),
        cmocka_unit_test(test_scanner_grammar),
        cmocka_unit_test(test_scanner_mutations),
        cmocka_unit_test(test_card_rewrite_and_public_url),
        cmocka_unit_test(test_notify_config_shapes),
    };
    return cmocka_run_group_tests_name("a2a", tests, NULL, NULL);
}
