/*
 * sbctl_int.h — private to the operator CLI (sbctl.c, sbctl_http.c, sbctl_out.c): the
 * parsed command line, the answer of one request, and the helpers the commands call.
 * Not part of libswitchboard and not a module interface: nothing else includes it.
 */
#ifndef SWITCHBOARD_SBCTL_INT_H
#define SWITCHBOARD_SBCTL_INT_H

#include <jansson.h>
#include <stddef.h>

#include "switchboard/netaddr.h"
#include "switchboard/headers.h"

enum { EXIT_DONE = 0, EXIT_REFUSED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

typedef struct cli {
    const char *url_text; /* as given, for messages */
    sb_url url;
    char *token; /* NULL until a command needs it */
    const char *token_file;
    int json;
    int timeout_s; /* 0: the command's default */
    /* command options, validated against the command */
    int poll;
    long lease_s, max_concurrency, max;
    int have_lease_s, have_max_concurrency, have_max;
    const char *protocol;
    const char *user;
    const char *cacert; /* --cacert: a CA bundle for https URLs */
    int all;            /* replay --all */
} cli;

typedef struct strbuf {
    char *p;
    size_t n, cap;
} strbuf;

/* The answer to one request. */
typedef struct http_resp {
    int status;
    sb_headers headers; /* of the final response */
    strbuf body;
    int too_big; /* the body went over the limit; the request failed */
} http_resp;

/* A text table: cells are copied; columns padded to their widest cell. */
typedef struct table {
    size_t ncols, nrows;
    char **cells; /* nrows * ncols */
} table;

/* ---- sbctl_http.c ---- */

/* One request to c->url: |method| on the base URL's path joined with |path|, with the
 * admin token when c->token is set. |body| (JSON) may be NULL; |extra| is "Name: value\r\n"
 * lines or NULL. Fills |r| (release with resp_clear, also on failure). Returns EXIT_DONE
 * when an HTTP response arrived (any status), else EXIT_UNREACHABLE after printing why.
 * Every step is bounded by |timeout_s|. */
int http_call(const cli *c, const char *method, const char *path, const char *body,
              const char *extra, int timeout_s, http_resp *r);
void resp_clear(http_resp *r);

/* ---- sbctl_out.c ---- */

/* "sbctl: <message>" on stderr. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Same, with the pointer to --help; returns EXIT_USAGE. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The body as JSON (the caller's reference), or NULL when empty or not JSON. */
json_t *resp_json(const http_resp *r);
const char *str_or(const json_t *v, const char *dflt);
/* A scalar (or a compact rendering of anything else) into |out|; null is "-". */
void scalar_text(const json_t *v, char *out, size_t cap);
/* The raw body for --json; an empty body becomes |fallback| (stolen, may be NULL). */
void print_raw(const http_resp *r, json_t *fallback);
/* Reports an HTTP error answer on stderr (and the body on stdout with --json); returns
 * EXIT_REFUSED. */
int report_error(const cli *c, const char *method, const char *path, const http_resp *r);
/* 1 when |r| is the router's "no such route" 404; the report for it (EXIT_REFUSED). */
int route_missing(const http_resp *r);
int report_route_missing(const char *method, const char *path, const char *what);
/* The dead-letter commands (sbctl_dead.c): dead-letters WS [--max N], replay WS ID (or
 * --all: |id| NULL), purge WS ID. Exit codes as every command. */
int sbctl_cmd_dead_letters(const cli *c, const char *ws);
int sbctl_cmd_replay(const cli *c, const char *ws, const char *id);
int sbctl_cmd_purge(const cli *c, const char *ws, const char *id);

/* "key  value" on stdout. */
void kv(const char *key, const char *value);
/* Every scalar under |v| as "prefix.key  value", skipping |skip| keys at the top. */
void flatten(const char *prefix, const json_t *v, const char *const *skip);
void table_row(table *t, const char *const *cols);
void table_print_free(table *t);
/* Prints and frees like table_print_free, cutting the last column ("...") so that no
 * line is wider than |max_width| (0: no bound; the last column keeps at least 12). */
void table_print_fit(table *t, size_t max_width);
/* Prints |list| (an array of objects) as a table: column k headed |head|[k] holds each
 * object's |keys|[k] as scalar text (at most SBCTL_TABLE_MAX_COLS columns; cells are cut
 * at 511 bytes). Nothing when |list| is empty but the heading. */
#define SBCTL_TABLE_MAX_COLS 12
void print_list_table(const json_t *list, const char *const *head, const char *const *keys,
                      size_t ncols);
/* The list in an answer that is either an array or an object holding |key|. */
const json_t *list_of(const json_t *j, const char *key);

/* ---- sbctl_ops.c ---- */

/* `why`: the view of GET /workspaces/WS/delivery in sections (Verdict first, then
 * Endpoint, Circuit, Queue, Probe, Refused registrations, Recent attempts). */
void describe_workspace(const json_t *view, const char *ws);
/* DELETE /registry/WS. */
int cmd_deregister(const cli *c, const char *ws);
/* GET /admin/workspaces/WS/tokens: ids and creation times. */
int cmd_tokens(const cli *c, const char *ws);
/* GET /workspaces/WS/messages/ID: the delivery record and its attempts. */
int cmd_messages(const cli *c, const char *ws, const char *message_id);
/* GET /workspaces/WS/inbox (no wait; --max, --lease-s). */
int cmd_inbox_lease(const cli *c, const char *ws);
/* POST /workspaces/WS/inbox/ID/ack (|ack| 1) or .../nack. */
int cmd_inbox_settle(const cli *c, const char *ws, const char *id, int ack);

#endif
