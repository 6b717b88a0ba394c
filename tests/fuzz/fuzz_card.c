/*
 * fuzz_card.c — endpoint records and the agent-card rewrite
 * (GET /workspaces/{ws}/.well-known/agent-card.json).
 *
 * Input: a Host header value, a newline, then an endpoint record as the registry keeps
 * it in Redis (JSON: workspace_id, delivery_mode, url, agent_card, ...). The record goes
 * through sb_endpoint_from_record and back (sb_endpoint_to_json), then into the registry
 * replica, and the card handler serves it to a request carrying that Host (and an
 * X-Forwarded-Proto taken from the record's "proto" member when it is a string), so the
 * rewrite of "url", "additionalInterfaces" and "supportedInterfaces" runs on whatever the
 * agent advertised. The answer must be HTTP 200 or 404 with a body that is valid JSON;
 * for a 200 every rewritten URL names switchboard's own A2A route. The card's advertised
 * URLs are also compared with the registered one (probe.c), as registration does.
 * Corpus: tests/corpus/card/.
 */
#include "fuzz.h"

#include <event2/buffer.h>
#include <jansson.h>

#include "switchboard/common.h"
#include "switchboard/handlers.h"
#include "switchboard/probe.h"
#include "switchboard/registry.h"
#include "switchboard/request.h"
#include "switchboard/server.h"
#include "switchboard/util.h"

typedef struct answer {
    int status, ends;
    struct evbuffer *body;
} answer;

static void a_head(void *stream, int status, const sb_headers *h, long long body_len)
{
    ((answer *)stream)->status = status;
}

static void a_data(void *stream, struct evbuffer *data)
{
    evbuffer_add_buffer(((answer *)stream)->body, data);
}

static void a_end(void *stream)
{
    ((answer *)stream)->ends++;
}

static size_t a_pending(void *stream)
{
    return 0;
}

static const sb_codec_ops answer_ops = {a_head, a_data, a_end, a_pending, NULL};

static sb_config g_cfg;
static sb_worker g_w;
static long long g_rev;

static void check_url(const json_t *u, const char *ws)
{
    if (!json_is_string(u))
        return;
    char tail[SB_WS_ID_MAX + 32];
    snprintf(tail, sizeof(tail), "/workspaces/%s/a2a", ws);
    const char *s = json_string_value(u);
    size_t n = strlen(s), t = strlen(tail);
    fuzz_check(n >= t && strcmp(s + n - t, tail) == 0);
}

static void serve_card(const char *ws, const char *host, const char *proto)
{
    answer a = {0, 0, sb_evbuffer_new()};
    sb_request *req = sb_request_new(&g_w, &answer_ops, &a);
    req->params[0] = sb_strdup(ws);
    req->path = sb_strdup("/workspaces/x/.well-known/agent-card.json");
    sb_headers_add(&req->headers, "Host", host);
    if (proto != NULL)
        sb_headers_add(&req->headers, "X-Forwarded-Proto", proto);
    sb_handle_agent_card(req);
    fuzz_check(a.ends == 1 && (a.status == 200 || a.status == 404));
    json_error_t je;
    json_t *doc =
        json_loadb((const char *)evbuffer_pullup(a.body, -1), evbuffer_get_length(a.body), 0, &je);
    fuzz_check(doc != NULL);
    if (a.status == 200) {
        check_url(json_object_get(doc, "url"), ws);
        const char *lists[] = {"additionalInterfaces", "supportedInterfaces"};
        for (size_t l = 0; l < 2; l++) {
            size_t i;
            json_t *it;
            json_array_foreach(json_object_get(doc, lists[l]), i, it)
            {
                if (json_is_object(it))
                    check_url(json_object_get(it, "url"), ws);
            }
        }
    }
    json_decref(doc);
    sb_request_detach(req);
    sb_request_unref(req);
    evbuffer_free(a.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet_logs();
    if (g_w.cfg == NULL) {
        g_cfg.listen = (char *)(uintptr_t) "127.0.0.1:8080";
        g_w.cfg = &g_cfg;
        sb_registry_init();
    }
    const uint8_t *nl = memchr(data, '\n', size);
    if (nl == NULL)
        return 0;
    char *host = fuzz_cstr(data, (size_t)(nl - data));
    json_error_t je;
    json_t *rec =
        json_loadb((const char *)nl + 1, size - (size_t)(nl - data) - 1, JSON_ALLOW_NUL, &je);
    if (rec == NULL)
        goto out;

    sb_endpoint *ep = sb_endpoint_from_record(rec, 1);
    if (ep != NULL) {
        json_t *back = sb_endpoint_to_json(ep);
        char *text = json_dumps(back, JSON_COMPACT);
        fuzz_check(text != NULL);
        free(text);
        json_decref(back);
        if (ep->agent_card != NULL) {
            json_t *urls = sb_probe_card_urls(ep->agent_card);
            size_t i;
            json_t *u;
            json_array_foreach(urls, i, u)
            {
                if (ep->url_str != NULL)
                    (void)sb_probe_same_url(json_string_value(u), ep->url_str);
            }
            json_decref(urls);
        }
        sb_endpoint_release(ep);
    }

    const char *ws = json_string_value(json_object_get(rec, "workspace_id"));
    if (ws != NULL && sb_valid_workspace_id(ws)) {
        char *wsc = sb_strdup(ws);
        sb_registry_apply_set(rec, ++g_rev);
        serve_card(wsc, host, json_string_value(json_object_get(rec, "proto")));
        sb_registry_apply_del(wsc, ++g_rev);
        sb_free(wsc);
    }
    json_decref(rec);
out:
    sb_free(host);
    return 0;
}
