/*
 * fuzz_upstream.c — the agent-side response parsers of the upstream pool: HTTP/1.1
 * (upstream.c over libhttp-parser) and HTTP/2 (upstream_h2.c over nghttp2).
 *
 * Input: one selector byte, then what the agent sends back. The selector picks how the
 * push is made: bit 0 streams the answer through on_head/on_data (the SSE relay path)
 * instead of buffering it, bit 1 sends a GET (the agent-card probe) instead of a POST,
 * bits 2-3 pick the protocol (auto, http1, h2c prior knowledge, auto). The target is the
 * agent: a loopback listener in this process accepts the pool's connection, reads the
 * request, writes the input bytes and closes; the loop runs until the pool's final
 * callback — which must come exactly once, with a status (never 1xx) or a reason from
 * the closed list and a one-line detail. A new pool per input, so no state carries over.
 * FUZZ_DEBUG=1 in the environment prints each outcome (status, reason, detail).
 * Corpus: tests/corpus/upstream/ (answers captured from the integration suite's fake
 * agents, plus generated HTTP/1.1 and HTTP/2 shapes).
 */
#include "fuzz.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "switchboard/common.h"
#include "switchboard/netaddr.h"
#include "switchboard/reason.h"
#include "switchboard/request.h"
#include "switchboard/upstream.h"

#define MAX_CONNS 4

static struct event_base *g_base;
static int g_lfd = -1;
static sb_url g_url;
static sb_cidr g_allow;

typedef struct outcome {
    int calls, heads;
    size_t streamed;
} outcome;

static void on_done(const sb_upstream_result *res, void *arg)
{
    outcome *o = arg;
    o->calls++;
    if (getenv("FUZZ_DEBUG"))
        fprintf(stderr, "upstream: status %d reason %s detail %s\n", res->status,
                sb_reason_name(res->reason), res->detail);
    if (res->reason == SB_REASON_NONE) {
        fuzz_check(res->status >= 200 && res->status <= 999);
        fuzz_check(res->body != NULL);
    } else {
        fuzz_check(res->status == 0 && res->body == NULL);
        fuzz_check(res->detail[0] != '\0' && strchr(res->detail, '\n') == NULL);
        fuzz_check(sb_reason_name(res->reason) != NULL);
    }
}

static int on_head(int status, const sb_headers *headers, void *arg)
{
    outcome *o = arg;
    o->heads++;
    fuzz_check(status >= 200 && status <= 999);
    return 1;
}

static void on_data(struct evbuffer *data, void *arg)
{
    outcome *o = arg;
    o->streamed += evbuffer_get_length(data);
    evbuffer_drain(data, evbuffer_get_length(data));
}

static void init(void)
{
    if (g_base != NULL)
        return;
    fuzz_quiet_logs();
    g_base = event_base_new();
    g_lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    fuzz_check(g_lfd != -1);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    fuzz_check(bind(g_lfd, (struct sockaddr *)&a, sizeof(a)) == 0);
    fuzz_check(listen(g_lfd, 16) == 0);
    socklen_t alen = sizeof(a);
    fuzz_check(getsockname(g_lfd, (struct sockaddr *)&a, &alen) == 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/a2a", ntohs(a.sin_port));
    fuzz_check(sb_url_parse(url, &g_url) == SB_OK);
    fuzz_check(sb_cidr_parse("127.0.0.0/8", &g_allow) == SB_OK);
}

typedef struct agent_conn {
    int fd;
    size_t off; /* bytes of the answer written */
} agent_conn;

/* Plays the agent on every accepted connection: read what comes, write the answer, then
 * half-close. Returns 1 if anything moved. */
static int agent_step(agent_conn *c, int *n, const uint8_t *ans, size_t len)
{
    int moved = 0;
    int fd;
    while (*n < MAX_CONNS &&
           (fd = accept4(g_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) != -1) {
        c[(*n)++] = (agent_conn){fd, 0};
        moved = 1;
    }
    char buf[16384];
    for (int i = 0; i < *n; i++) {
        if (c[i].fd == -1)
            continue;
        while (recv(c[i].fd, buf, sizeof(buf), 0) > 0)
            moved = 1;
        if (c[i].off < len) {
            ssize_t k = send(c[i].fd, ans + c[i].off, len - c[i].off, MSG_NOSIGNAL);
            if (k > 0) {
                c[i].off += (size_t)k;
                moved = 1;
            } else if (k == -1 && errno != EAGAIN && errno != EWOULDBLOCK) {
                c[i].off = len;
            }
            if (c[i].off == len)
                shutdown(c[i].fd, SHUT_WR);
        }
    }
    return moved;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    init();
    unsigned sel = data[0];
    sb_upstream_opts o;
    memset(&o, 0, sizeof(o));
    o.connect_timeout_ms = 1000;
    o.response_timeout_ms = 1000;
    o.max_response_bytes = 1 << 16;
    o.allow = &g_allow;
    o.n_allow = 1;
    sb_upstream_pool *pool = sb_upstream_pool_new(g_base, NULL, &o);

    static const sb_upstream_proto protos[] = {SB_PROTO_AUTO, SB_PROTO_HTTP1, SB_PROTO_H2C,
                                               SB_PROTO_AUTO};
    sb_upstream_send_opts so;
    memset(&so, 0, sizeof(so));
    so.method = (sel & 2) ? "GET" : "POST";
    so.protocol = protos[(sel >> 2) & 3];
    if (sel & 1) {
        so.on_head = on_head;
        so.on_data = on_data;
    }
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Content-Type", "application/json");
    struct evbuffer *body = sb_evbuffer_new();
    if (!(sel & 2))
        evbuffer_add(body, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\"}", 37);
    outcome out = {0, 0, 0};
    sb_upstream_req *req = sb_upstream_submit(pool, &g_url, &h, body, &so, on_done, &out);
    evbuffer_free(body);
    sb_headers_clear(&h);

    agent_conn conns[MAX_CONNS];
    int nconns = 0, idle = 0;
    for (int round = 0; round < 4000 && out.calls == 0 && idle < 200; round++) {
        int moved = agent_step(conns, &nconns, data + 1, size - 1);
        event_base_loop(g_base, EVLOOP_NONBLOCK);
        idle = moved ? 0 : idle + 1;
        if (!moved)
            usleep(50);
    }
    if (out.calls == 0)
        sb_upstream_cancel(req); /* stuck (e.g. an h2c agent that never ends the stream) */
    fuzz_check(out.calls <= 1);
    sb_upstream_pool_free(pool);
    for (int i = 0; i < nconns; i++)
        close(conns[i].fd);
    event_base_loop(g_base, EVLOOP_NONBLOCK);
    return 0;
}
