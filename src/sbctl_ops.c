/*
 * sbctl_ops.c — the operator CLI's day-to-day commands beside sbctl.c's: `why` laid out in
 * sections like `kubectl describe`, `deregister`, `messages WS ID`, `inbox lease|ack|nack`,
 * `tokens WS`, and the width-bounded table `status` prints.
 *
 * Each command is one request through http_call (sbctl_http.c); --json prints the
 * server's answer unchanged, so scripts see exactly what the API says. Exit codes as in
 * sbctl.c: 0 done, 1 the server said no, 3 unreachable.
 *
 * Never: print a token (the token list has ids and times only), or send an unchecked
 * message id (it is percent-encoded into the path).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"

#include "sbctl_int.h"

#define DEFAULT_TIMEOUT_S 15

static int timeout_of(const cli *c)
{
    return c->timeout_s ? c->timeout_s : DEFAULT_TIMEOUT_S;
}

/* GET/POST/DELETE |path|; on a non-|ok| status reports it. Returns EXIT_DONE with |r|
 * holding the answer, or the exit code (|r| already cleared). */
static int call(const cli *c, const char *method, const char *path, const char *body, int ok,
                http_resp *r)
{
    int rc = http_call(c, method, path, body, NULL, timeout_of(c), r);
    if (rc != EXIT_DONE) {
        resp_clear(r);
        return rc;
    }
    if (r->status != ok) {
        rc = route_missing(r) ? report_route_missing(method, path, "this command")
                              : report_error(c, method, path, r);
        resp_clear(r);
        return rc;
    }
    return EXIT_DONE;
}

/* ---- describe: sections of aligned "Key:  value" lines ---- */

static void section(const char *title)
{
    printf("\n%s:\n", title);
}

static void field(const char *key, const char *value)
{
    char k[64];
    snprintf(k, sizeof(k), "%s:", key);
    printf("  %-22s %s\n", k, value);
}

static void field_json(const char *key, const json_t *v)
{
    char text[1024];
    scalar_text(v, text, sizeof(text));
    field(key, text);
}

static const char *yes_no(const json_t *v)
{
    return json_is_true(v) ? "yes" : json_is_false(v) ? "no" : "-";
}

static void describe_endpoint(const json_t *j)
{
    section("Endpoint");
    field("Registered", yes_no(json_object_get(j, "registered")));
    field_json("Mode", json_object_get(j, "delivery_mode"));
    field_json("URL", json_object_get(j, "url"));
    const json_t *lease = json_object_get(j, "lease");
    if (json_is_object(lease)) {
        char text[256], at[64];
        scalar_text(json_object_get(lease, "expires_at"), at, sizeof(at));
        snprintf(text, sizeof(text), "%lld s, expires %s%s",
                 (long long)json_integer_value(json_object_get(lease, "lease_s")), at,
                 json_is_true(json_object_get(lease, "expired")) ? " (expired)" : "");
        field("Lease", text);
        field_json("Last heartbeat", json_object_get(lease, "heartbeat_at"));
    } else {
        field("Lease", "none (no heartbeat needed)");
    }
}

static void describe_circuit(const json_t *j)
{
    const json_t *c = json_object_get(j, "circuit");
    section("Circuit (this instance)");
    field_json("State", json_object_get(c, "state"));
    field_json("Consecutive failures", json_object_get(c, "consecutive_failures"));
    field_json("Last failure", json_object_get(c, "last_failure_reason"));
    field_json("Retry at", json_object_get(c, "retry_at"));
    field_json("In flight", json_object_get(c, "inflight"));
}

static void describe_queue(const json_t *j)
{
    const json_t *q = json_object_get(j, "queue");
    section("Queue");
    field_json("Depth", json_object_get(q, "depth"));
    field_json("Oldest age (s)", json_object_get(q, "oldest_age_s"));
    field_json("Leased", json_object_get(q, "leased"));
    field_json("Dead letters", json_object_get(q, "dead_letters"));
}

static void describe_probe(const json_t *j)
{
    const json_t *p = json_object_get(j, "probe");
    section("Probe");
    if (!json_is_object(p)) {
        field("Result", "none (poll mode, or not probed)");
        return;
    }
    field("Reachable", yes_no(json_object_get(p, "reachable")));
    field_json("Status", json_object_get(p, "status"));
    field_json("Card URL", json_object_get(p, "card_url"));
    field("Card matches URL", yes_no(json_object_get(p, "matches")));
    field_json("Advertised", json_object_get(p, "advertised_urls"));
    field_json("Probed at", json_object_get(p, "probed_at"));
    field("Stale", yes_no(json_object_get(p, "stale")));
    if (json_object_get(p, "note") != NULL)
        field_json("Note", json_object_get(p, "note"));
    if (json_object_get(p, "warning") != NULL && !json_is_null(json_object_get(p, "warning")))
        field_json("Warning", json_object_get(p, "warning"));
}

static void describe_refusals(const json_t *j)
{
    const json_t *list = json_object_get(j, "refused_registrations");
    section("Refused registrations");
    if (json_array_size(list) == 0) {
        printf("  none\n");
        return;
    }
    static const char *const head[] = {"  AT", "ROUTE",           "STATUS",
                                       "CODE", "TOKEN_WORKSPACE", "PEER"};
    static const char *const keys[] = {"at", "route", "status", "code", "token_workspace", "peer"};
    table t = {SB_ARRAY_LEN(head), 0, NULL};
    table_row(&t, head);
    size_t i;
    const json_t *r;
    json_array_foreach(list, i, r)
    {
        char cell[SB_ARRAY_LEN(keys)][256];
        const char *row[SB_ARRAY_LEN(keys)];
        for (size_t k = 0; k < SB_ARRAY_LEN(keys); k++) {
            scalar_text(json_object_get(r, keys[k]), cell[k] + (k == 0 ? 2 : 0),
                        sizeof(cell[k]) - 2);
            if (k == 0)
                memcpy(cell[k], "  ", 2);
            row[k] = cell[k];
        }
        table_row(&t, row);
    }
    table_print_free(&t);
}

static void describe_attempts(const json_t *j)
{
    const json_t *lp = json_object_get(j, "last_push");
    const json_t *c = json_object_get(j, "counters");
    section("Recent attempts");
    if (json_is_object(lp)) {
        char text[1024], at[64], outcome[64], st[32], ms[32];
        scalar_text(json_object_get(lp, "at"), at, sizeof(at));
        scalar_text(json_object_get(lp, "outcome"), outcome, sizeof(outcome));
        scalar_text(json_object_get(lp, "http_status"), st, sizeof(st));
        scalar_text(json_object_get(lp, "duration_ms"), ms, sizeof(ms));
        snprintf(text, sizeof(text), "%s %s (HTTP %s, %s ms)", at, outcome, st, ms);
        field("Last push", text);
        field_json("Detail", json_object_get(lp, "detail"));
    } else {
        field("Last push", "none");
    }
    const json_t *fp = json_object_get(c, "failing_pushes");
    if (json_is_object(fp)) {
        char text[256], reason[64], since[64];
        scalar_text(json_object_get(fp, "reason"), reason, sizeof(reason));
        scalar_text(json_object_get(fp, "since"), since, sizeof(since));
        snprintf(text, sizeof(text), "%s x%lld since %s", reason,
                 (long long)json_integer_value(json_object_get(fp, "count")), since);
        field("Failing pushes", text);
    }
    field_json("Pushes", json_object_get(c, "pushes"));
    field_json("Fallbacks", json_object_get(c, "fallbacks"));
    field_json("Fallbacks by reason", json_object_get(c, "fallbacks_by_reason"));
    field_json("Last fallback", json_object_get(c, "last_fallback_at"));
    field_json("Last detail", json_object_get(c, "last_detail"));
    field_json("Last lease", json_object_get(c, "last_lease_at"));
}

void describe_workspace(const json_t *j, const char *ws)
{
    printf("%-24s %s\n", "Workspace:", str_or(json_object_get(j, "workspace_id"), ws));
    printf("%-24s %s\n", "Verdict:", str_or(json_object_get(j, "verdict"), "(no verdict)"));
    describe_endpoint(j);
    describe_circuit(j);
    describe_queue(j);
    describe_probe(j);
    describe_refusals(j);
    describe_attempts(j);
}

/* ---- deregister, tokens, messages ---- */

int cmd_deregister(const cli *c, const char *ws)
{
    char path[256];
    snprintf(path, sizeof(path), "/registry/%s", ws);
    http_resp r;
    int rc = call(c, "DELETE", path, NULL, 204, &r);
    if (rc != EXIT_DONE)
        return rc;
    if (c->json)
        printf("{\"status\":\"deregistered\",\"workspace_id\":\"%s\"}\n", ws);
    else
        printf("deregistered %s: its messages now fall back with no_endpoint\n", ws);
    resp_clear(&r);
    return EXIT_DONE;
}

int cmd_tokens(const cli *c, const char *ws)
{
    char path[256];
    snprintf(path, sizeof(path), "/admin/workspaces/%s/tokens", ws);
    http_resp r;
    int rc = call(c, "GET", path, NULL, 200, &r);
    if (rc != EXIT_DONE)
        return rc;
    if (c->json) {
        print_raw(&r, NULL);
    } else {
        json_t *j = resp_json(&r);
        const json_t *list = list_of(j, "tokens");
        if (json_array_size(list) == 0) {
            printf("%s has no tokens\n", ws);
        } else {
            static const char *const head[] = {"TOKEN_ID", "CREATED_AT"};
            table t = {2, 0, NULL};
            table_row(&t, head);
            size_t i;
            const json_t *tk;
            json_array_foreach(list, i, tk)
            {
                char id[64], at[64];
                scalar_text(json_object_get(tk, "token_id"), id, sizeof(id));
                scalar_text(json_object_get(tk, "created_at"), at, sizeof(at));
                const char *row[] = {id, at};
                table_row(&t, row);
            }
            table_print_free(&t);
        }
        json_decref(j);
    }
    resp_clear(&r);
    return EXIT_DONE;
}

/* |s| percent-encoded (everything but unreserved characters) into |out|. */
static void encode_segment(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0' && n + 4 < cap; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = '\0';
}

int cmd_messages(const cli *c, const char *ws, const char *message_id)
{
    char id[1600], path[2000];
    encode_segment(message_id, id, sizeof(id));
    snprintf(path, sizeof(path), "/workspaces/%s/messages/%s", ws, id);
    http_resp r;
    int rc = call(c, "GET", path, NULL, 200, &r);
    if (rc != EXIT_DONE)
        return rc;
    if (c->json) {
        print_raw(&r, NULL);
        resp_clear(&r);
        return EXIT_DONE;
    }
    json_t *j = resp_json(&r);
    static const char *const keys[] = {"message_id", "task_id",    "workspace_id",   "kind",
                                       "source",     "mode",       "reason",         "detail",
                                       "state",      "created_at", "delivery_count", "expires_at",
                                       "dead_reason"};
    for (size_t k = 0; k < SB_ARRAY_LEN(keys); k++) {
        const json_t *v = json_object_get(j, keys[k]);
        if (v == NULL)
            continue;
        char text[1024];
        scalar_text(v, text, sizeof(text));
        kv(keys[k], text);
    }
    const json_t *attempts = json_object_get(j, "attempts");
    if (json_array_size(attempts) > 0) {
        printf("\n");
        static const char *const head[] = {"AT", "OUTCOME", "REASON", "HTTP", "MS", "DETAIL"};
        static const char *const akeys[] = {"at",          "outcome",     "reason",
                                            "http_status", "duration_ms", "detail"};
        print_list_table(attempts, head, akeys, SB_ARRAY_LEN(head));
    }
    json_decref(j);
    resp_clear(&r);
    return EXIT_DONE;
}

/* ---- inbox lease | ack | nack ---- */

int cmd_inbox_lease(const cli *c, const char *ws)
{
    char path[300];
    snprintf(path, sizeof(path), "/workspaces/%s/inbox?max=%ld&wait_s=0", ws,
             c->have_max ? c->max : 1);
    if (c->have_lease_s) {
        size_t n = strlen(path);
        snprintf(path + n, sizeof(path) - n, "&lease_s=%ld", c->lease_s);
    }
    http_resp r;
    int rc = call(c, "GET", path, NULL, 200, &r);
    if (rc != EXIT_DONE)
        return rc;
    if (c->json) {
        print_raw(&r, NULL);
        resp_clear(&r);
        return EXIT_DONE;
    }
    json_t *j = resp_json(&r);
    const json_t *msgs = list_of(j, "messages");
    char until[64];
    scalar_text(json_object_get(j, "lease_expires_at"), until, sizeof(until));
    if (json_array_size(msgs) == 0) {
        printf("%s: nothing to lease\n", ws);
    } else {
        printf("%s: %zu leased until %s (ack or nack each by ID)\n", ws, json_array_size(msgs),
               until);
        static const char *const head[] = {"ID",     "MESSAGE_ID", "TASK_ID",   "KIND",
                                           "SOURCE", "REASON",     "DELIVERIES"};
        static const char *const keys[] = {"id",     "message_id", "task_id",       "kind",
                                           "source", "reason",     "delivery_count"};
        print_list_table(msgs, head, keys, SB_ARRAY_LEN(head));
    }
    json_decref(j);
    resp_clear(&r);
    return EXIT_DONE;
}

int cmd_inbox_settle(const cli *c, const char *ws, const char *id, int ack)
{
    for (const char *p = id; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return usage_error("'%s' is not a queue entry id (q_ + hex, from inbox lease)", id);
    char path[300];
    snprintf(path, sizeof(path), "/workspaces/%s/inbox/%s/%s", ws, id, ack ? "ack" : "nack");
    http_resp r;
    int rc = call(c, "POST", path, ack ? "{}" : NULL, 200, &r);
    if (rc != EXIT_DONE)
        return rc;
    if (c->json) {
        print_raw(&r, NULL);
    } else {
        json_t *j = resp_json(&r);
        char st[64];
        scalar_text(json_object_get(j, "status"), st, sizeof(st));
        printf("%s %s: %s\n", id, ack ? "acked" : "released", st);
        json_decref(j);
    }
    resp_clear(&r);
    return EXIT_DONE;
}
