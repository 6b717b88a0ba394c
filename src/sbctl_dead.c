/*
 * sbctl_dead.c — sbctl's dead-letter commands (SPEC §3): dead-letters WS, replay WS
 * ID|--all, purge WS ID. Each is one or a few calls of the dead-letter routes through
 * sbctl_http.c; output through sbctl_out.c (a table, or the server's JSON with --json).
 *
 * replay --all lists the dead letters (at most 1000, the routes' page) and replays each,
 * newest first — each replay goes to the front, so they end up queued oldest first, in
 * the order they were sent; it stops at the first refusal and says how far it got.
 */
#include "switchboard/common.h"
#include "switchboard/util.h"

#include <stdio.h>
#include <string.h>

#include "sbctl_int.h"

#define DEAD_TIMEOUT_S 15

static int call(const cli *c, const char *method, const char *path, http_resp *r)
{
    return http_call(c, method, path, NULL, NULL, c->timeout_s ? c->timeout_s : DEAD_TIMEOUT_S, r);
}

/* The dead letters of |ws| (the parsed answer, owned by the caller) or NULL after the
 * error was reported in |*rc|. */
static json_t *fetch_list(const cli *c, const char *ws, long max, http_resp *r, int *rc)
{
    char path[300];
    snprintf(path, sizeof(path), "/workspaces/%s/dead-letters?max=%ld", ws, max);
    *rc = call(c, "GET", path, r);
    if (*rc != EXIT_DONE)
        return NULL;
    if (r->status == 404 && route_missing(r)) {
        *rc = report_route_missing("GET", "/workspaces/{ws}/dead-letters", "dead letters");
        return NULL;
    }
    if (r->status != 200) {
        *rc = report_error(c, "GET", path, r);
        return NULL;
    }
    return resp_json(r);
}

int sbctl_cmd_dead_letters(const cli *c, const char *ws)
{
    http_resp r;
    int rc;
    json_t *j = fetch_list(c, ws, c->have_max ? c->max : 100, &r, &rc);
    if (j == NULL) {
        resp_clear(&r);
        return rc;
    }
    if (c->json) {
        print_raw(&r, NULL);
        json_decref(j);
        resp_clear(&r);
        return EXIT_DONE;
    }
    const json_t *list = list_of(j, "dead_letters");
    printf("%s: %zu dead letter%s (newest first)\n", ws, json_array_size(list),
           json_array_size(list) == 1 ? "" : "s");
    if (json_array_size(list) > 0) {
        static const char *const head[] = {"ID",      "MESSAGE_ID",  "SOURCE", "REASON",
                                           "DIED_OF", "ENQUEUED_AT", "DEAD_AT"};
        static const char *const keys[] = {"id",          "message_id",  "source", "reason",
                                           "dead_reason", "enqueued_at", "dead_at"};
        print_list_table(list, head, keys, SB_ARRAY_LEN(head));
        printf("replay one with: sbctl replay %s ID (or --all); drop one with: sbctl purge %s "
               "ID\n",
               ws, ws);
    }
    json_decref(j);
    resp_clear(&r);
    return EXIT_DONE;
}

/* POST .../replay or DELETE of one dead letter; prints one line unless |quiet|. */
static int act_one(const cli *c, const char *ws, const char *id, int replay, int quiet)
{
    char path[400];
    snprintf(path, sizeof(path), "/workspaces/%s/dead-letters/%s%s", ws, id,
             replay ? "/replay" : "");
    const char *method = replay ? "POST" : "DELETE";
    http_resp r;
    int rc = call(c, method, path, &r);
    if (rc == EXIT_DONE) {
        if (r.status == 404 && route_missing(&r))
            rc = report_route_missing(method, "/workspaces/{ws}/dead-letters/{id}", "dead letters");
        else if (r.status != 200 && r.status != 204)
            rc = report_error(c, method, path, &r);
        else if (c->json && !quiet)
            print_raw(&r, NULL);
        else if (!quiet)
            printf("%s %s: %s\n", ws, id,
                   replay ? "replayed: back at the front of the queue, redelivered like any "
                            "other message"
                          : "purged");
    }
    resp_clear(&r);
    return rc;
}

int sbctl_cmd_replay(const cli *c, const char *ws, const char *id)
{
    if (id != NULL)
        return act_one(c, ws, id, 1, 0);
    http_resp r;
    int rc;
    json_t *j = fetch_list(c, ws, 1000, &r, &rc);
    if (j == NULL) {
        resp_clear(&r);
        return rc;
    }
    const json_t *list = list_of(j, "dead_letters");
    size_t n = json_array_size(list), done = 0;
    rc = EXIT_DONE;
    /* Each replay goes to the front of the queue: walking the list newest first leaves
     * the oldest dead letter at the very front, so they queue in the order they came. */
    for (size_t i = 0; i < n && rc == EXIT_DONE; i++) {
        const char *one = str_or(json_object_get(json_array_get(list, i), "id"), "");
        rc = act_one(c, ws, one, 1, 1);
        if (rc == EXIT_DONE)
            done++;
    }
    if (c->json)
        printf("{\"replayed\":%zu,\"of\":%zu}\n", done, n);
    else
        printf("%s: %zu of %zu dead letter%s replayed%s\n", ws, done, n, n == 1 ? "" : "s",
               done == n ? "" : " (stopped at the first refusal)");
    json_decref(j);
    resp_clear(&r);
    return rc;
}

int sbctl_cmd_purge(const cli *c, const char *ws, const char *id)
{
    return act_one(c, ws, id, 0, 0);
}
