/*
 * sbctl.c — the operator CLI: asks a running switchboard over its HTTP API and prints
 * the answer for people (aligned tables) or for scripts (--json: the server's JSON).
 *
 *   sbctl [--url URL] [--token-file FILE] [--json] [--timeout S] COMMAND ...
 *     status                 GET /delivery: workspaces with a backlog, fallbacks or an
 *                            open circuit, worst first
 *     why WS                 GET /workspaces/WS/delivery: the verdict and its facts
 *     inbox WS [--max N]     GET /workspaces/WS/inbox/peek: queued messages (not leased)
 *     send WS TEXT [--user U]  POST a message/send chat; prints mode, reason and answer
 *     register WS [URL] [--poll] [--lease-s N] [--max-concurrency N] [--protocol P]
 *     token mint WS | token revoke WS TOKEN_ID | tokens WS
 *     deregister WS | messages WS ID | inbox lease|ack|nack ... (sbctl_ops.c)
 *     health                 GET /healthz and /readyz
 *     help
 *
 * Lifecycle: one process, one command, one blocking HTTP/1.1 request per call on a fresh
 * TCP connection ("Connection: close"), every step bounded by --timeout; https:// URLs
 * are verified against the system CAs or --cacert. Requests go
 * through libcurl (sbctl_http.c), JSON through jansson, printing through sbctl_out.c;
 * nothing else is linked in but libswitchboard's helpers (URL parsing, workspace id
 * check, header lists, allocation). This file holds the commands and the set-up.
 *
 * Exit codes: 0 done; 1 the server said no (HTTP error, JSON-RPC error, not ready);
 * 2 usage (bad flags or arguments, no admin token); 3 switchboard unreachable (resolve,
 * connect, timeout, reset, an answer that is not HTTP).
 *
 * Never: print the admin token, put anything unvalidated into a request line or header
 * (workspace ids, token ids and the token are checked first), or wait without a bound.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/metrics.h" /* SB_VERSION */
#include "switchboard/netaddr.h"
#include "switchboard/headers.h"
#include "switchboard/util.h"

#include "sbctl_int.h"

#define DEFAULT_URL "http://127.0.0.1:8080"
#define DEFAULT_TIMEOUT_S 15
#define SEND_TIMEOUT_S 330 /* --push-timeout-s defaults to 300: agents answer with LLMs */

static const char usage_text[] =
    "usage: sbctl [--url URL] [--token-file FILE] [--json] [--timeout S] COMMAND ...\n"
    "\n"
    "commands:\n"
    "  status                      workspaces with a backlog, fallbacks or an open circuit\n"
    "  why WS                      why WS gets push or poll: the verdict and its facts\n"
    "  inbox WS [--max N]          messages queued for WS (peek, nothing is leased)\n"
    "  send WS TEXT [--user U]     send a chat message/send to WS and show what happened\n"
    "  register WS [URL] [--poll] [--lease-s N] [--max-concurrency N] [--protocol P]\n"
    "                              register (or replace) WS's endpoint\n"
    "  deregister WS               remove WS's endpoint (its messages fall back no_endpoint)\n"
    "  messages WS ID              the delivery record of message ID sent to WS\n"
    "  inbox lease WS [--max N] [--lease-s N]   lease queued messages (no wait)\n"
    "  inbox ack WS ID | inbox nack WS ID       settle a leased message\n"
    "  dead-letters WS [--max N]   WS's dead letters, newest first, and why they died\n"
    "  replay WS ID|--all          put dead letters back at the front of WS's queue\n"
    "  purge WS ID                 drop a dead letter for good\n"
    "  token mint WS               mint a workspace token (shown once)\n"
    "  token revoke WS TOKEN_ID    revoke a workspace token\n"
    "  tokens WS                   WS's token ids and creation times (never the tokens)\n"
    "  health                      liveness and readiness\n"
    "  help                        this text\n"
    "\n"
    "options:\n"
    "  --url URL          switchboard's address, http:// or https:// (env SWITCHBOARD_URL;\n"
    "                     default " DEFAULT_URL ")\n"
    "  --cacert FILE      CA certificates (PEM) to verify an https:// switchboard with\n"
    "  --token-file FILE  read the admin token from FILE (default: env SWITCHBOARD_ADMIN_TOKEN,\n"
    "                     then the file named by SWITCHBOARD_ADMIN_TOKEN_FILE)\n"
    "  --json             print the server's JSON instead of a table\n"
    "  --timeout S        give up after S seconds (default 15; send: 330)\n"
    "\n"
    "exit status: 0 done, 1 the server said no, 2 usage, 3 switchboard unreachable\n";

/* ---- commands ---- */

static int check_ws(const char *ws)
{
    if (!sb_valid_workspace_id(ws))
        return usage_error("'%s' is not a workspace id (1-%d characters of A-Z a-z 0-9 . _ -)", ws,
                           SB_WS_ID_MAX);
    return EXIT_DONE;
}

static int cmd_health(const cli *c)
{
    int t = c->timeout_s ? c->timeout_s : DEFAULT_TIMEOUT_S;
    http_resp h, r;
    int rc = http_call(c, "GET", "/healthz", NULL, NULL, t, &h);
    if (rc != EXIT_DONE) {
        resp_clear(&h);
        return rc;
    }
    rc = http_call(c, "GET", "/readyz", NULL, NULL, t, &r);
    if (rc != EXIT_DONE) {
        resp_clear(&h);
        resp_clear(&r);
        return rc;
    }
    int alive = h.status == 200, ready = r.status == 200;
    json_t *hj = resp_json(&h), *rj = resp_json(&r);
    if (c->json) {
        json_t *o = json_pack("{s:b,s:b,s:o,s:o}", "alive", alive, "ready", ready, "healthz",
                              hj ? hj : json_null(), "readyz", rj ? rj : json_null());
        json_dumpf(o, stdout, JSON_COMPACT);
        fputc('\n', stdout);
        json_decref(o);
    } else {
        char why[600];
        kv("alive", alive ? "yes" : "no");
        const json_t *e = json_object_get(rj, "error");
        snprintf(why, sizeof(why), "no — %s", str_or(json_object_get(e, "message"), "not ready"));
        kv("ready", ready ? "yes" : why);
        json_decref(hj);
        json_decref(rj);
    }
    resp_clear(&h);
    resp_clear(&r);
    return alive && ready ? EXIT_DONE : EXIT_REFUSED;
}

static int cmd_token_mint(const cli *c, const char *ws)
{
    char path[256];
    snprintf(path, sizeof(path), "/admin/workspaces/%s/tokens", ws);
    http_resp r;
    int rc =
        http_call(c, "POST", path, "{}", NULL, c->timeout_s ? c->timeout_s : DEFAULT_TIMEOUT_S, &r);
    if (rc == EXIT_DONE && r.status != 201)
        rc = report_error(c, "POST", path, &r);
    else if (rc == EXIT_DONE && c->json)
        print_raw(&r, NULL);
    else if (rc == EXIT_DONE) {
        json_t *j = resp_json(&r);
        kv("workspace_id", str_or(json_object_get(j, "workspace_id"), ws));
        kv("token_id", str_or(json_object_get(j, "token_id"), "-"));
        kv("token", str_or(json_object_get(j, "token"), "-"));
        fprintf(stderr, "The token is shown only this once: store it now.\n");
        json_decref(j);
    }
    resp_clear(&r);
    return rc;
}

static int valid_token_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (; *s != '\0'; s++)
        if (!(('a' <= *s && *s <= 'z') || ('A' <= *s && *s <= 'Z') || ('0' <= *s && *s <= '9') ||
              *s == '_' || *s == '-' || *s == '.'))
            return 0;
    return 1;
}

static int cmd_token_revoke(const cli *c, const char *ws, const char *token_id)
{
    if (!valid_token_id(token_id))
        return usage_error("'%s' is not a token id", token_id);
    char path[320];
    snprintf(path, sizeof(path), "/admin/workspaces/%s/tokens/%s", ws, token_id);
    http_resp r;
    int rc = http_call(c, "DELETE", path, NULL, NULL,
                       c->timeout_s ? c->timeout_s : DEFAULT_TIMEOUT_S, &r);
    if (rc == EXIT_DONE && (r.status < 200 || r.status > 299))
        rc = report_error(c, "DELETE", path, &r);
    else if (rc == EXIT_DONE && c->json)
        print_raw(&r, json_pack("{s:s,s:s,s:s}", "status", "revoked", "workspace_id", ws,
                                "token_id", token_id));
    else if (rc == EXIT_DONE)
        printf("revoked token %s of workspace %s\n", token_id, ws);
    resp_clear(&r);
    return rc;
}

static void print_probe(const json_t *probe)
{
    if (!json_is_object(probe))
        return;
    char line[1200], status[32];
    scalar_text(json_object_get(probe, "status"), status, sizeof(status));
    const json_t *m = json_object_get(probe, "matches");
    snprintf(line, sizeof(line), "%s, HTTP %s, card %s, %s",
             json_is_true(json_object_get(probe, "reachable")) ? "reachable" : "NOT reachable",
             status, str_or(json_object_get(probe, "card_url"), "-"),
             json_is_true(m)    ? "advertises the registered URL"
             : json_is_false(m) ? "advertises ANOTHER URL"
                                : "advertised URL unknown");
    kv("probe", line);
    const char *warning = str_or(json_object_get(probe, "warning"), NULL);
    if (warning != NULL)
        fprintf(stderr, "warning: %s\n", warning);
}

static int cmd_register(const cli *c, const char *ws, const char *url)
{
    if (url == NULL && !c->poll)
        return usage_error("register needs a URL (or --poll for an inbox-only workspace)");
    json_t *b =
        json_pack("{s:s,s:s}", "workspace_id", ws, "delivery_mode", c->poll ? "poll" : "push");
    if (url != NULL)
        json_object_set_new(b, "url", json_string(url));
    if (c->have_lease_s)
        json_object_set_new(b, "lease_s", json_integer(c->lease_s));
    if (c->have_max_concurrency)
        json_object_set_new(b, "max_concurrency", json_integer(c->max_concurrency));
    if (c->protocol != NULL)
        json_object_set_new(b, "protocol", json_string(c->protocol));
    char *body = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    if (body == NULL) {
        say("the URL is not valid UTF-8");
        return EXIT_USAGE;
    }
    http_resp r;
    int rc = http_call(c, "POST", "/registry/register", body, NULL,
                       c->timeout_s ? c->timeout_s : DEFAULT_TIMEOUT_S, &r);
    sb_free(body);
    if (rc == EXIT_DONE && r.status != 200)
        rc = report_error(c, "POST", "/registry/register", &r);
    else if (rc == EXIT_DONE && c->json)
        print_raw(&r, NULL);
    else if (rc == EXIT_DONE) {
        json_t *j = resp_json(&r);
        kv("registered", str_or(json_object_get(j, "workspace_id"), ws));
        kv("delivery_mode", str_or(json_object_get(j, "delivery_mode"), "-"));
        kv("lease_expires_at", str_or(json_object_get(j, "lease_expires_at"), "never"));
        kv("inbound_secret", str_or(json_object_get(j, "inbound_secret"), "-"));
        print_probe(json_object_get(j, "probe"));
        json_decref(j);
    }
    resp_clear(&r);
    return rc;
}

/* Prints the text parts of an A2A message (v0.3 {"kind":"text","text"}, v1.0 {"text"}). */
static int print_message_text(const json_t *msg)
{
    const json_t *parts = json_object_get(msg, "parts");
    size_t i;
    const json_t *part;
    int printed = 0;
    json_array_foreach(parts, i, part)
    {
        const char *text = str_or(json_object_get(part, "text"), NULL);
        if (text != NULL) {
            kv(printed ? "" : "answer", text);
            printed = 1;
        }
    }
    return printed;
}

static void print_task(const json_t *task)
{
    const json_t *status = json_object_get(task, "status");
    char line[512];
    snprintf(line, sizeof(line), "%s (%s)", str_or(json_object_get(task, "id"), "-"),
             str_or(json_object_get(status, "state"), "?"));
    kv("task", line);
    const json_t *sb = json_object_get(json_object_get(task, "metadata"), "switchboard");
    if (json_is_object(sb)) {
        kv("detail", str_or(json_object_get(sb, "detail"), "-"));
        kv("queued_at", str_or(json_object_get(sb, "queued_at"), "-"));
    }
}

/* Prints what a JSON-RPC answer holds. Returns 1 when it is a JSON-RPC error. */
static int print_rpc_answer(const json_t *j)
{
    const json_t *err = json_object_get(j, "error");
    if (json_is_object(err)) {
        char code[32];
        scalar_text(json_object_get(err, "code"), code, sizeof(code));
        char line[1200];
        snprintf(line, sizeof(line), "%s: %s", code, str_or(json_object_get(err, "message"), ""));
        kv("error", line);
        const json_t *data = json_object_get(err, "data");
        if (json_is_object(data))
            flatten("error.data", data, NULL);
        return 1;
    }
    const json_t *res = json_object_get(j, "result");
    const json_t *msg = json_object_get(res, "message"); /* v1.0 {"message": ...} */
    const json_t *task = json_object_get(res, "task");   /* v1.0 {"task": ...} */
    if (json_is_object(msg) && print_message_text(msg))
        return 0;
    if (json_is_object(task)) {
        print_task(task);
        return 0;
    }
    if (strcmp(str_or(json_object_get(res, "kind"), ""), "task") == 0) {
        print_task(res);
        return 0;
    }
    if (print_message_text(res))
        return 0;
    char text[2048];
    scalar_text(res, text, sizeof(text));
    kv("result", text);
    return 0;
}

static int cmd_send(const cli *c, const char *ws, const char *text)
{
    unsigned char rnd[8];
    char hex[17], id[32];
    sb_random_bytes(rnd, sizeof(rnd));
    sb_hex_encode(rnd, sizeof(rnd), hex);
    snprintf(id, sizeof(id), "sbctl-%s", hex);
    json_t *b = json_pack("{s:s,s:s,s:s,s:{s:{s:s,s:s,s:s,s:[{s:s,s:s}]}}}", "jsonrpc", "2.0", "id",
                          id, "method", "message/send", "params", "message", "kind", "message",
                          "role", "user", "messageId", id, "parts", "kind", "text", "text", text);
    char *body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    if (body == NULL)
        return usage_error("the message text is not valid UTF-8");
    char extra[300] = "";
    if (c->user != NULL)
        snprintf(extra, sizeof(extra), "X-Switchboard-User: %s\r\n", c->user);
    char path[256];
    snprintf(path, sizeof(path), "/workspaces/%s/a2a", ws);
    http_resp r;
    int rc = http_call(c, "POST", path, body, extra[0] ? extra : NULL,
                       c->timeout_s ? c->timeout_s : SEND_TIMEOUT_S, &r);
    sb_free(body);
    if (rc != EXIT_DONE) {
        resp_clear(&r);
        return rc;
    }
    json_t *j = resp_json(&r);
    const char *mode = sb_headers_get(&r.headers, "X-Delivery-Mode");
    const char *reason = sb_headers_get(&r.headers, "X-Delivery-Reason");
    int failed = r.status < 200 || r.status > 299;
    if (c->json) {
        print_raw(&r, NULL);
        failed |= json_is_object(json_object_get(j, "error"));
    } else if (j == NULL) {
        rc = report_error(c, "POST", path, &r);
    } else {
        char status[64];
        snprintf(status, sizeof(status), "%d %s", r.status, sb_http_reason_phrase(r.status));
        kv("message_id", id);
        kv("http", status);
        kv("mode", mode ? mode : "-");
        kv("reason", reason ? reason : "-");
        failed |= print_rpc_answer(j);
    }
    json_decref(j);
    resp_clear(&r);
    return rc != EXIT_DONE ? rc : failed ? EXIT_REFUSED : EXIT_DONE;
}

static int cmd_inbox(const cli *c, const char *ws)
{
    char path[300];
    snprintf(path, sizeof(path), "/workspaces/%s/inbox/peek?max=%ld", ws,
             c->have_max ? c->max : 20);
    http_resp r;
    int rc =
        http_call(c, "GET", path, NULL, NULL, c->timeout_s ? c->timeout_s : DEFAULT_TIMEOUT_S, &r);
    if (rc != EXIT_DONE) {
        resp_clear(&r);
        return rc;
    }
    if (r.status == 404 && route_missing(&r)) {
        resp_clear(&r);
        say("this switchboard does not serve GET /workspaces/{ws}/inbox/peek (HTTP 404: no "
            "such route); upgrade switchboard to a version with the poll queue");
        return EXIT_REFUSED;
    }
    if (r.status != 200) {
        rc = report_error(c, "GET", path, &r);
        resp_clear(&r);
        return rc;
    }
    if (c->json) {
        print_raw(&r, NULL);
        resp_clear(&r);
        return EXIT_DONE;
    }
    json_t *j = resp_json(&r);
    const json_t *msgs = list_of(j, "messages");
    char ready[32], leased[32];
    scalar_text(json_object_get(j, "ready"), ready, sizeof(ready));
    scalar_text(json_object_get(j, "leased"), leased, sizeof(leased));
    printf("%s: %s ready, %s leased\n", ws, ready, leased);
    if (json_array_size(msgs) > 0) {
        static const char *const head[] = {"ID",     "MESSAGE_ID", "KIND",        "SOURCE",
                                           "REASON", "DELIVERIES", "ENQUEUED_AT", "EXPIRES_AT"};
        static const char *const keys[] = {"id",     "message_id",     "kind",        "source",
                                           "reason", "delivery_count", "enqueued_at", "expires_at"};
        print_list_table(msgs, head, keys, SB_ARRAY_LEN(head));
    }
    json_decref(j);
    resp_clear(&r);
    return EXIT_DONE;
}

static int cmd_why(const cli *c, const char *ws)
{
    char path[256];
    snprintf(path, sizeof(path), "/workspaces/%s/delivery", ws);
    http_resp r;
    int rc =
        http_call(c, "GET", path, NULL, NULL, c->timeout_s ? c->timeout_s : DEFAULT_TIMEOUT_S, &r);
    if (rc == EXIT_DONE && route_missing(&r))
        rc = report_route_missing("GET", "/workspaces/{ws}/delivery", "the verdict");
    else if (rc == EXIT_DONE && r.status != 200)
        rc = report_error(c, "GET", path, &r);
    else if (rc == EXIT_DONE && c->json)
        print_raw(&r, NULL);
    else if (rc == EXIT_DONE) {
        json_t *j = resp_json(&r);
        if (!json_is_object(j)) {
            say("GET %s: the answer is not a JSON object", path);
            rc = EXIT_REFUSED;
        } else {
            describe_workspace(j, ws);
        }
        json_decref(j);
    }
    resp_clear(&r);
    return rc;
}

static int cmd_status(const cli *c)
{
    http_resp r;
    int rc = http_call(c, "GET", "/delivery", NULL, NULL,
                       c->timeout_s ? c->timeout_s : DEFAULT_TIMEOUT_S, &r);
    if (rc == EXIT_DONE && route_missing(&r))
        rc = report_route_missing("GET", "/delivery", "the delivery overview");
    else if (rc == EXIT_DONE && r.status != 200)
        rc = report_error(c, "GET", "/delivery", &r);
    else if (rc == EXIT_DONE && c->json)
        print_raw(&r, NULL);
    else if (rc == EXIT_DONE) {
        json_t *j = resp_json(&r);
        const json_t *list = list_of(j, "workspaces");
        if (list == NULL) {
            say("GET /delivery: expected a list of workspaces");
            rc = EXIT_REFUSED;
        } else if (json_array_size(list) == 0) {
            printf("no workspace has a backlog, fallbacks or an open circuit\n");
        } else {
            static const char *const head[] = {"WORKSPACE", "MODE",   "DEPTH",     "OLDEST_S",
                                               "LEASED",    "DEAD",   "FALLBACKS", "LAST_REASON",
                                               "CIRCUIT",   "VERDICT"};
            table t = {SB_ARRAY_LEN(head), 0, NULL};
            table_row(&t, head);
            size_t i;
            const json_t *w;
            json_array_foreach(list, i, w)
            {
                const json_t *circuit = json_object_get(w, "circuit");
                const json_t *vals[] = {json_object_get(w, "workspace_id"),
                                        json_object_get(w, "delivery_mode"),
                                        json_object_get(w, "queue_depth"),
                                        json_object_get(w, "oldest_age_s"),
                                        json_object_get(w, "leased"),
                                        json_object_get(w, "dead_letters"),
                                        json_object_get(w, "fallbacks"),
                                        json_object_get(w, "last_reason"),
                                        json_is_object(circuit) ? json_object_get(circuit, "state")
                                                                : circuit,
                                        json_object_get(w, "verdict")};
                char cell[SB_ARRAY_LEN(vals)][512];
                const char *row[SB_ARRAY_LEN(vals)];
                for (size_t k = 0; k < SB_ARRAY_LEN(vals); k++) {
                    scalar_text(vals[k], cell[k], sizeof(cell[k]));
                    row[k] = cell[k];
                }
                table_row(&t, row);
            }
            table_print_fit(&t, 120); /* the verdict is cut to fit a 120-column terminal */
        }
        json_decref(j);
    }
    resp_clear(&r);
    return rc;
}

/* ---- set-up ---- */

/* Strips trailing whitespace (a token file usually ends with a newline). */
static void rstrip(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
}

static int read_token_file(const char *path, char **out)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return usage_error("cannot read the token file %s: %s", path, strerror(errno));
    char buf[1024];
    if (fgets(buf, sizeof(buf), f) == NULL)
        buf[0] = '\0';
    fclose(f);
    rstrip(buf);
    if (buf[0] == '\0')
        return usage_error("the token file %s is empty", path);
    *out = sb_strdup(buf);
    OPENSSL_cleanse(buf, sizeof(buf));
    return EXIT_DONE;
}

/* Finds the admin token: --token-file, else SWITCHBOARD_ADMIN_TOKEN, else the file named
 * by SWITCHBOARD_ADMIN_TOKEN_FILE. Only printable ASCII may go into the header. */
static int load_token(cli *c)
{
    int rc = EXIT_DONE;
    const char *env = getenv("SWITCHBOARD_ADMIN_TOKEN");
    const char *env_file = getenv("SWITCHBOARD_ADMIN_TOKEN_FILE");
    if (c->token_file != NULL)
        rc = read_token_file(c->token_file, &c->token);
    else if (env != NULL && env[0] != '\0')
        c->token = sb_strdup(env);
    else if (env_file != NULL && env_file[0] != '\0')
        rc = read_token_file(env_file, &c->token);
    else
        return usage_error("no admin token: set SWITCHBOARD_ADMIN_TOKEN or pass --token-file FILE");
    if (rc != EXIT_DONE)
        return rc;
    for (const char *p = c->token; *p != '\0'; p++)
        if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e)
            return usage_error("the admin token holds a space or a control character");
    return EXIT_DONE;
}

static int parse_url(cli *c)
{
    const char *env = getenv("SWITCHBOARD_URL");
    if (c->url_text == NULL)
        c->url_text = env != NULL && env[0] != '\0' ? env : DEFAULT_URL;
    if (sb_url_parse(c->url_text, &c->url) != SB_OK || strchr(c->url.path, '?') != NULL)
        return usage_error("--url %s: expected http(s)://HOST[:PORT][/PREFIX]", c->url_text);
    if (c->cacert != NULL && !c->url.https)
        return usage_error("--cacert belongs to an https:// --url");
    return EXIT_DONE;
}

static int parse_num(const char *flag, const char *s, long min, long max, long *out)
{
    if (sb_parse_long(s, min, max, out) != SB_OK)
        return usage_error("%s %s: expected a whole number from %ld to %ld", flag, s, min, max);
    return EXIT_DONE;
}

enum {
    OPT_URL = 256,
    OPT_TOKEN_FILE,
    OPT_JSON,
    OPT_TIMEOUT,
    OPT_POLL,
    OPT_LEASE_S,
    OPT_MAX_CONCURRENCY,
    OPT_PROTOCOL,
    OPT_MAX,
    OPT_USER,
    OPT_VERSION,
    OPT_CACERT,
    OPT_ALL
};

static const struct option long_opts[] = {
    {"url", required_argument, NULL, OPT_URL},
    {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
    {"json", no_argument, NULL, OPT_JSON},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"poll", no_argument, NULL, OPT_POLL},
    {"lease-s", required_argument, NULL, OPT_LEASE_S},
    {"max-concurrency", required_argument, NULL, OPT_MAX_CONCURRENCY},
    {"protocol", required_argument, NULL, OPT_PROTOCOL},
    {"max", required_argument, NULL, OPT_MAX},
    {"user", required_argument, NULL, OPT_USER},
    {"all", no_argument, NULL, OPT_ALL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {"cacert", required_argument, NULL, OPT_CACERT},
    {NULL, 0, NULL, 0},
};

static int parse_flags(cli *c, int argc, char **argv, int *done)
{
    int opt;
    long v;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1) {
        int rc = EXIT_DONE;
        switch (opt) {
        case OPT_URL:
            c->url_text = optarg;
            break;
        case OPT_TOKEN_FILE:
            c->token_file = optarg;
            break;
        case OPT_JSON:
            c->json = 1;
            break;
        case OPT_TIMEOUT:
            rc = parse_num("--timeout", optarg, 1, 3600, &v);
            c->timeout_s = (int)v;
            break;
        case OPT_POLL:
            c->poll = 1;
            break;
        case OPT_LEASE_S:
            rc = parse_num("--lease-s", optarg, 1, 31536000, &c->lease_s);
            c->have_lease_s = 1;
            break;
        case OPT_MAX_CONCURRENCY:
            rc = parse_num("--max-concurrency", optarg, 1, 1000000, &c->max_concurrency);
            c->have_max_concurrency = 1;
            break;
        case OPT_PROTOCOL:
            if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "http1") != 0 &&
                strcmp(optarg, "h2c") != 0)
                rc = usage_error("--protocol %s: expected auto, http1 or h2c", optarg);
            c->protocol = optarg;
            break;
        case OPT_MAX:
            rc = parse_num("--max", optarg, 1, 100, &c->max);
            c->have_max = 1;
            break;
        case OPT_ALL:
            c->all = 1;
            break;
        case OPT_USER:
            for (const char *p = optarg; *p != '\0' && rc == EXIT_DONE; p++)
                if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
                    rc = usage_error("--user: control characters are not allowed");
            c->user = optarg;
            break;
        case 'h':
            fputs(usage_text, stdout);
            *done = 1;
            return EXIT_DONE;
        case OPT_CACERT:
            c->cacert = optarg;
            break;
        case OPT_VERSION:
            printf("sbctl %s\n", SB_VERSION);
            *done = 1;
            return EXIT_DONE;
        case ':':
            return usage_error("%s needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option %s", argv[optind - 1]);
        }
        if (rc != EXIT_DONE)
            return rc;
    }
    return EXIT_DONE;
}

/* Refuses command options given to a command that does not take them. */
static int check_options(const cli *c, const char *cmd, const char *sub)
{
    int is_register = strcmp(cmd, "register") == 0;
    int is_lease = strcmp(cmd, "inbox") == 0 && sub != NULL && strcmp(sub, "lease") == 0;
    if (!is_register && (c->poll || c->have_max_concurrency || c->protocol))
        return usage_error("--poll, --max-concurrency and --protocol belong to register");
    if (!is_register && !is_lease && c->have_lease_s)
        return usage_error("--lease-s belongs to register and inbox lease");
    if (c->have_max && strcmp(cmd, "inbox") != 0 && strcmp(cmd, "dead-letters") != 0)
        return usage_error("--max belongs to inbox and dead-letters");
    if (c->user != NULL && strcmp(cmd, "send") != 0)
        return usage_error("--user belongs to send");
    if (c->all && strcmp(cmd, "replay") != 0)
        return usage_error("--all belongs to replay");
    return EXIT_DONE;
}

static int need(int have, int min, int max, const char *what)
{
    if (have < min || have > max)
        return usage_error("usage: sbctl %s", what);
    return EXIT_DONE;
}

#define EXIT_UNKNOWN_COMMAND (-1)

/* The argument count of the dead-letter commands, or EXIT_UNKNOWN_COMMAND. */
static int dead_letter_args(const char *cmd, int n, int all)
{
    if (strcmp(cmd, "dead-letters") == 0)
        return need(n, 2, 2, "dead-letters WS [--max N]");
    if (strcmp(cmd, "replay") == 0)
        return all ? need(n, 2, 2, "replay WS --all") : need(n, 3, 3, "replay WS ID|--all");
    if (strcmp(cmd, "purge") == 0)
        return need(n, 3, 3, "purge WS ID");
    return EXIT_UNKNOWN_COMMAND;
}

static int run(cli *c, int argc, char **argv)
{
    int done = 0;
    int rc = parse_flags(c, argc, argv, &done);
    if (rc != EXIT_DONE || done)
        return rc;
    char **args = argv + optind;
    int n = argc - optind;
    if (n == 0)
        return usage_error("no command given");
    const char *cmd = args[0];
    if (strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return EXIT_DONE;
    }
    if ((rc = check_options(c, cmd, n > 1 ? args[1] : NULL)) != EXIT_DONE ||
        (rc = parse_url(c)) != EXIT_DONE)
        return rc;
    if (strcmp(cmd, "health") == 0) {
        if ((rc = need(n, 1, 1, "health")) != EXIT_DONE)
            return rc;
        return cmd_health(c);
    }
    /* Every other command needs the admin token; check arguments before looking for it. */
    int inbox_sub = strcmp(cmd, "inbox") == 0 && n >= 2 &&
                    (strcmp(args[1], "lease") == 0 || strcmp(args[1], "ack") == 0 ||
                     strcmp(args[1], "nack") == 0 || strcmp(args[1], "peek") == 0);
    if (strcmp(cmd, "status") == 0)
        rc = need(n, 1, 1, "status");
    else if (inbox_sub && (strcmp(args[1], "lease") == 0 || strcmp(args[1], "peek") == 0))
        rc = need(n, 3, 3, "inbox lease WS [--max N] [--lease-s N] | inbox peek WS");
    else if (inbox_sub)
        rc = need(n, 4, 4, "inbox ack WS ID | inbox nack WS ID");
    else if (strcmp(cmd, "deregister") == 0 || strcmp(cmd, "tokens") == 0)
        rc = need(n, 2, 2, strcmp(cmd, "tokens") == 0 ? "tokens WS" : "deregister WS");
    else if (strcmp(cmd, "messages") == 0)
        rc = need(n, 3, 3, "messages WS MESSAGE_ID");
    else if (strcmp(cmd, "why") == 0 || strcmp(cmd, "inbox") == 0)
        rc = need(n, 2, 2, strcmp(cmd, "why") == 0 ? "why WS" : "inbox WS [--max N]");
    else if (strcmp(cmd, "send") == 0)
        rc = need(n, 3, 3, "send WS TEXT");
    else if (strcmp(cmd, "register") == 0)
        rc = need(n, 2, 3, "register WS [URL] [--poll] [--lease-s N] [--max-concurrency N]");
    else if (strcmp(cmd, "token") == 0 && n >= 2 && strcmp(args[1], "mint") == 0)
        rc = need(n, 3, 3, "token mint WS");
    else if (strcmp(cmd, "token") == 0 && n >= 2 && strcmp(args[1], "revoke") == 0)
        rc = need(n, 4, 4, "token revoke WS TOKEN_ID");
    else if (strcmp(cmd, "token") == 0)
        return usage_error("usage: sbctl token mint WS | sbctl token revoke WS TOKEN_ID");
    else if ((rc = dead_letter_args(cmd, n, c->all)) != EXIT_UNKNOWN_COMMAND)
        ; /* checked */
    else
        return usage_error("unknown command '%s'", cmd);
    if (rc != EXIT_DONE)
        return rc;
    const char *ws = strcmp(cmd, "token") == 0 || inbox_sub ? args[2] : n > 1 ? args[1] : NULL;
    if (ws != NULL && (rc = check_ws(ws)) != EXIT_DONE)
        return rc;
    if ((rc = load_token(c)) != EXIT_DONE)
        return rc;

    if (inbox_sub && strcmp(args[1], "lease") == 0)
        return cmd_inbox_lease(c, ws);
    if (inbox_sub && strcmp(args[1], "peek") == 0)
        return cmd_inbox(c, ws);
    if (inbox_sub)
        return cmd_inbox_settle(c, ws, args[3], strcmp(args[1], "ack") == 0);
    if (strcmp(cmd, "deregister") == 0)
        return cmd_deregister(c, ws);
    if (strcmp(cmd, "tokens") == 0)
        return cmd_tokens(c, ws);
    if (strcmp(cmd, "messages") == 0)
        return cmd_messages(c, ws, args[2]);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(c);
    if (strcmp(cmd, "why") == 0)
        return cmd_why(c, ws);
    if (strcmp(cmd, "inbox") == 0)
        return cmd_inbox(c, ws);
    if (strcmp(cmd, "send") == 0)
        return cmd_send(c, ws, args[2]);
    if (strcmp(cmd, "register") == 0)
        return cmd_register(c, ws, n == 3 ? args[2] : NULL);
    if (strcmp(cmd, "dead-letters") == 0)
        return sbctl_cmd_dead_letters(c, ws);
    if (strcmp(cmd, "replay") == 0)
        return sbctl_cmd_replay(c, ws, c->all ? NULL : args[2]);
    if (strcmp(cmd, "purge") == 0)
        return sbctl_cmd_purge(c, ws, args[2]);
    if (strcmp(args[1], "mint") == 0)
        return cmd_token_mint(c, ws);
    return cmd_token_revoke(c, ws, args[3]);
}

int main(int argc, char **argv)
{
    cli c;
    memset(&c, 0, sizeof(c));
    json_set_alloc_funcs(sb_malloc, sb_free); /* one OOM policy, jansson included */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "sbctl: cannot initialize libcurl\n");
        return EXIT_UNREACHABLE;
    }
    int rc = run(&c, argc, argv);
    fflush(stdout);
    if (c.token != NULL) {
        OPENSSL_cleanse(c.token, strlen(c.token));
        sb_free(c.token);
    }
    sb_url_clear(&c.url);
    curl_global_cleanup();
    return rc;
}
