/*
 * probe.c — fetch and compare the agent card at registration (see probe.h).
 *
 * One probe is one GET on the worker's upstream pool; its small state record carries
 * the registered URL and the card URL until the callback, so nothing here depends on
 * the registering client still being connected.
 */
#include "switchboard/probe.h"
#include "switchboard/alloc.h"
#include "switchboard/upstream.h"
#include "switchboard/utf8.h"
#include "switchboard/util.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

typedef struct probe {
    sb_probe_fn cb;
    void *arg;
    char *url_str;
    char *card_url;
} probe;

/* Appends |u| (a JSON string) to |urls| unless an equal string is there already: a v0.3
 * card usually repeats its "url" in additionalInterfaces. */
static void add_unique(json_t *urls, const json_t *u)
{
    if (!json_is_string(u))
        return;
    size_t i;
    json_t *have;
    json_array_foreach(urls, i, have)
    {
        if (json_equal(have, u))
            return;
    }
    json_array_append_new(urls, sb_json_text(json_string_value(u)));
}

json_t *sb_probe_card_urls(const json_t *card)
{
    json_t *urls = json_array();
    add_unique(urls, json_object_get(card, "url"));
    static const char *const lists[] = {"additionalInterfaces", "supportedInterfaces"};
    for (size_t l = 0; l < 2; l++) {
        const json_t *arr = json_object_get(card, lists[l]);
        size_t i;
        const json_t *item;
        json_array_foreach(arr, i, item)
        {
            add_unique(urls, json_object_get(item, "url"));
        }
    }
    return urls;
}

static size_t path_len_no_slash(const char *p)
{
    size_t n = strlen(p);
    const char *q = strchr(p, '?');
    if (q != NULL)
        return n; /* with a query, compare literally */
    while (n > 1 && p[n - 1] == '/')
        n--;
    return n;
}

int sb_probe_same_url(const char *a, const char *b)
{
    sb_url ua, ub;
    if (sb_url_parse(a, &ua) != 0)
        return 0;
    if (sb_url_parse(b, &ub) != 0) {
        sb_url_clear(&ua);
        return 0;
    }
    size_t la = path_len_no_slash(ua.path), lb = path_len_no_slash(ub.path);
    int same = ua.https == ub.https && ua.port == ub.port && strcasecmp(ua.host, ub.host) == 0 &&
               la == lb && memcmp(ua.path, ub.path, la) == 0;
    sb_url_clear(&ua);
    sb_url_clear(&ub);
    return same;
}

static json_t *result_new(const probe *pr, int reachable, int status)
{
    json_t *r = json_object();
    json_object_set_new(r, "reachable", json_boolean(reachable));
    json_object_set_new(r, "status", status > 0 ? json_integer(status) : json_null());
    json_object_set_new(r, "card_url", sb_json_text(pr->card_url));
    return r;
}

void sb_probe_judge_card(json_t *r, const json_t *card, const char *url_str, const char *where)
{
    char warning[768];
    json_t *urls = sb_probe_card_urls(card);
    int matches = 0;
    size_t i;
    json_t *u;
    json_array_foreach(urls, i, u)
    {
        if (sb_probe_same_url(json_string_value(u), url_str))
            matches = 1;
    }
    if (json_array_size(urls) == 0) {
        json_object_set_new(r, "matches", json_null());
        snprintf(warning, sizeof(warning), "the agent card %s advertises no interface URL", where);
        json_object_set_new(r, "warning", sb_json_text(warning));
    } else if (!matches) {
        json_object_set_new(r, "matches", json_false());
        snprintf(warning, sizeof(warning),
                 "the agent card %s advertises %s, not the registered %s: pushes to the "
                 "registered URL may not reach the agent's A2A handler",
                 where, json_string_value(json_array_get(urls, 0)), url_str);
        json_object_set_new(r, "warning", sb_json_text(warning));
    } else {
        json_object_set_new(r, "matches", json_true());
        json_object_set_new(r, "warning", json_null());
    }
    json_object_set_new(r, "advertised_urls", urls);
}

/* Fills "matches", "advertised_urls", "warning" and "card" from a 200 answer's body. */
static void judge_card(const probe *pr, json_t *r, struct evbuffer *body)
{
    size_t len = evbuffer_get_length(body);
    const char *bytes = (const char *)evbuffer_pullup(body, -1);
    json_t *card = bytes ? json_loadb(bytes, len, 0, NULL) : NULL;
    if (!json_is_object(card)) {
        char warning[768];
        json_object_set_new(r, "matches", json_null());
        json_object_set_new(r, "advertised_urls", json_array());
        snprintf(warning, sizeof(warning), "%s did not return a JSON agent card", pr->card_url);
        json_object_set_new(r, "warning", sb_json_text(warning));
        json_decref(card);
        return;
    }
    char where[600];
    snprintf(where, sizeof(where), "at %s", pr->card_url);
    sb_probe_judge_card(r, card, pr->url_str, where);
    /* Kept so the card route can serve it when the agent registered without one. */
    if (len <= SB_PROBE_CARD_MAX)
        json_object_set_new(r, "card", card);
    else
        json_decref(card);
}

static void on_card(const sb_upstream_result *res, void *arg)
{
    probe *pr = arg;
    char warning[768];
    json_t *r;
    if (res->reason != SB_REASON_NONE) {
        r = result_new(pr, 0, 0);
        json_object_set_new(r, "matches", json_null());
        json_object_set_new(r, "advertised_urls", json_array());
        snprintf(warning, sizeof(warning), "the agent card could not be fetched (%s: %s)",
                 sb_reason_name(res->reason), res->detail);
        json_object_set_new(r, "warning", sb_json_text(warning));
    } else {
        r = result_new(pr, 1, res->status);
        if (res->status == 200) {
            judge_card(pr, r, res->body);
        } else {
            json_object_set_new(r, "matches", json_null());
            json_object_set_new(r, "advertised_urls", json_array());
            snprintf(warning, sizeof(warning), "%s answered %d instead of an agent card",
                     pr->card_url, res->status);
            json_object_set_new(r, "warning", sb_json_text(warning));
        }
    }
    json_object_set_new(r, "probed_at", sb_json_iso8601(sb_now_wall_ms()));
    pr->cb(r, pr->arg);
    sb_free(pr->url_str);
    sb_free(pr->card_url);
    sb_free(pr);
}

void sb_probe_agent_card(struct sb_upstream_pool *pool, const sb_url *url, const char *url_str,
                         sb_upstream_proto protocol, sb_probe_fn cb, void *arg)
{
    probe *pr = sb_calloc(1, sizeof(*pr));
    pr->cb = cb;
    pr->arg = arg;
    pr->url_str = sb_strdup(url_str);
    size_t cap = strlen(url->authority) + 64;
    pr->card_url = sb_malloc(cap);
    snprintf(pr->card_url, cap, "%s://%s/.well-known/agent-card.json",
             url->https ? "https" : "http", url->authority);
    sb_url card = *url;
    card.path = (char *)"/.well-known/agent-card.json";
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Accept", "application/json");
    sb_upstream_send_opts o = {
        .method = "GET", .protocol = protocol, .response_timeout_ms = SB_PROBE_TIMEOUT_MS};
    sb_upstream_submit(pool, &card, &h, NULL, &o, on_card, pr);
    sb_headers_clear(&h);
}
