/*
 * h2_agent.c — an HTTP/2-only A2A agent for switchboard's integration tests.
 *
 *     build/peers/h2_agent --port 0 --record /tmp/agent.jsonl [--mode ok|sse|rst]
 *                          [--tls-cert FILE --tls-key FILE]
 *
 * Cleartext it speaks h2c with prior knowledge only; with --tls-cert/--tls-key it speaks
 * TLS and selects ALPN "h2" only (a client that does not offer h2 gets no ALPN answer and
 * a closed connection). It never speaks HTTP/1.1, so a request that reaches it proves the
 * client used HTTP/2. It listens on 127.0.0.1, prints "READY <port>" on stdout once it
 * accepts, and exits on SIGTERM/SIGINT.
 *
 * POST (any path), by --mode:
 *   ok   200 application/json, a JSON-RPC response echoing the id whose result is an A2A
 *        Message "echo: <text>" ({"message": ...} for v1.0 SendMessage)
 *   sse  200 text/event-stream: three events 300 ms apart, each a JSON-RPC response
 *   rst  RST_STREAM(INTERNAL_ERROR) once the request is complete
 * GET /.well-known/agent-card.json answers an agent card; any other GET 404.
 *
 * Every TCP connection and every complete request is appended to --record as one JSON
 * line, before the answer is sent (the same shape as tests/peers/fake_agent.py):
 *   {"event":"connect","conn":N,"tls":bool,"alpn":"h2","time":T}
 *   {"event":"request","conn":N,"stream":ID,"version":"HTTP/2","method","path",
 *    "headers":[[name,value],...],"body_b64","response_status","time"}
 *   {"event":"sse_event","conn":N,"stream":ID,"n":K,"time":T}   (mode sse, per event sent)
 *
 * A test peer: it trusts its input only as far as nghttp2 does, keeps every stream in
 * memory until it closes, and never blocks.
 */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <jansson.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

typedef enum { MODE_OK, MODE_SSE, MODE_RST } agent_mode;

typedef struct agent {
    struct event_base *base;
    SSL_CTX *ctx; /* NULL: h2c */
    agent_mode mode;
    FILE *record;
    int port;
    int n_conns;
} agent;

typedef struct stream stream;

typedef struct conn {
    agent *a;
    int id;
    struct bufferevent *bev;
    nghttp2_session *ng;
    int h2_ready;
    stream *streams; /* open streams, freed with the connection at the latest */
} conn;

struct stream {
    conn *c;
    stream *prev, *next;
    int32_t id;
    json_t *headers; /* [[name, value], ...] */
    char method[16];
    char path[512];
    struct evbuffer *body;
    struct evbuffer *resp;
    int resp_eof;
    int deferred;
    int sse_sent;
    struct event *tick;
    json_t *rpc_id;
    int v10;
    char text[256];
    char mid[128];
};

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void record(agent *a, json_t *obj)
{
    json_object_set_new(obj, "time", json_real(now_s()));
    if (a->record) {
        char *line = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
        fprintf(a->record, "%s\n", line);
        fflush(a->record);
        free(line);
    }
    json_decref(obj);
}

static char *b64(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    unsigned char *in = evbuffer_pullup(b, -1);
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, in ? in : (const unsigned char *)"", (int)n);
    return out;
}

static void stream_free(stream *st)
{
    conn *c = st->c;
    if (st->prev)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    if (st->tick)
        event_free(st->tick);
    json_decref(st->headers);
    json_decref(st->rpc_id);
    evbuffer_free(st->body);
    evbuffer_free(st->resp);
    free(st);
}

/* ---- responses ---- */

static ssize_t resp_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    stream *st = src->ptr;
    size_t n = evbuffer_get_length(st->resp);
    if (n == 0 && !st->resp_eof) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > len)
        n = len;
    evbuffer_remove(st->resp, buf, n);
    if (st->resp_eof && evbuffer_get_length(st->resp) == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void conn_flush(conn *c);

static void submit(stream *st, const char *status, const char *ctype, const char *body, int eof)
{
    nghttp2_nv nv[] = {
        {(uint8_t *)":status", (uint8_t *)(uintptr_t)status, 7, strlen(status),
         NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)(uintptr_t)ctype, 12, strlen(ctype),
         NGHTTP2_NV_FLAG_NONE},
    };
    if (body)
        evbuffer_add(st->resp, body, strlen(body));
    st->resp_eof = eof;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = resp_read};
    nghttp2_submit_response(st->c->ng, st->id, nv, 2, &prd);
}

/* The JSON-RPC response echoing the request, compact, in a new string. */
static char *echo_response(const stream *st, int n)
{
    char text[320];
    if (n > 0)
        snprintf(text, sizeof(text), "echo %d: %s", n, st->text);
    else
        snprintf(text, sizeof(text), "echo: %s", st->text);
    char mid[160];
    snprintf(mid, sizeof(mid), "echo-%s", st->mid);
    json_t *msg;
    if (st->v10)
        msg = json_pack("{s:{s:s,s:s,s:[{s:s}]}}", "message", "messageId", mid, "role",
                        "ROLE_AGENT", "parts", "text", text);
    else
        msg = json_pack("{s:s,s:s,s:s,s:[{s:s,s:s}]}", "kind", "message", "role", "agent",
                        "messageId", mid, "parts", "kind", "text", "text", text);
    json_t *r = json_pack("{s:s,s:O,s:o}", "jsonrpc", "2.0", "id",
                          st->rpc_id ? st->rpc_id : json_null(), "result", msg);
    char *s = json_dumps(r, JSON_COMPACT);
    json_decref(r);
    return s;
}

static void sse_tick(evutil_socket_t fd, short what, void *arg)
{
    stream *st = arg;
    conn *c = st->c;
    st->sse_sent++;
    char *resp = echo_response(st, st->sse_sent);
    evbuffer_add_printf(st->resp, "data: %s\n\n", resp);
    free(resp);
    json_t *ev = json_pack("{s:s,s:i,s:i,s:i}", "event", "sse_event", "conn", c->id, "stream",
                           st->id, "n", st->sse_sent);
    record(c->a, ev);
    if (st->sse_sent >= 3) {
        st->resp_eof = 1;
    } else {
        struct timeval tv = {0, 300 * 1000};
        event_add(st->tick, &tv);
    }
    if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(c->ng, st->id);
    }
    conn_flush(c);
}

static const char *first_text(json_t *msg)
{
    json_t *parts = json_object_get(msg, "parts");
    size_t i;
    json_t *p;
    json_array_foreach(parts, i, p)
    {
        const char *t = json_string_value(json_object_get(p, "text"));
        if (t)
            return t;
    }
    return "";
}

static void request_done(stream *st)
{
    conn *c = st->c;
    agent *a = c->a;
    int is_card = strcmp(st->method, "GET") == 0 &&
                  strncmp(st->path, "/.well-known/agent-card.json", 28) == 0;
    int status;
    if (strcmp(st->method, "GET") == 0)
        status = is_card ? 200 : 404;
    else
        status = a->mode == MODE_RST ? 0 : 200;

    if (strcmp(st->method, "POST") == 0) {
        json_t *req = json_loadb((const char *)evbuffer_pullup(st->body, -1),
                                 evbuffer_get_length(st->body), 0, NULL);
        if (req) {
            st->rpc_id = json_incref(json_object_get(req, "id"));
            const char *m = json_string_value(json_object_get(req, "method"));
            st->v10 = m && strchr(m, '/') == NULL;
            json_t *msg = json_object_get(json_object_get(req, "params"), "message");
            snprintf(st->text, sizeof(st->text), "%s", first_text(msg));
            const char *mid = json_string_value(json_object_get(msg, "messageId"));
            snprintf(st->mid, sizeof(st->mid), "%s", mid ? mid : "");
            json_decref(req);
        }
    }

    char *body = b64(st->body);
    json_t *rec = json_pack("{s:s,s:i,s:i,s:s,s:s,s:s,s:O,s:s}", "event", "request", "conn", c->id,
                            "stream", st->id, "version", "HTTP/2", "method", st->method, "path",
                            st->path, "headers", st->headers, "body_b64", body);
    json_object_set_new(rec, "response_status", status ? json_integer(status) : json_null());
    free(body);
    record(a, rec);

    if (status == 0) {
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (strcmp(st->method, "GET") == 0) {
        if (!is_card) {
            submit(st, "404", "application/json", "{\"error\":\"not found\"}", 1);
            return;
        }
        const char *scheme = a->ctx ? "https" : "http";
        char url[128];
        snprintf(url, sizeof(url), "%s://127.0.0.1:%d/", scheme, a->port);
        json_t *card =
            json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:{s:b},s:[s],s:[s],s:[]}", "name", "h2-agent",
                      "description", "switchboard HTTP/2 test peer", "url", url, "version", "1.0.0",
                      "protocolVersion", "0.3.0", "preferredTransport", "JSONRPC", "capabilities",
                      "streaming", a->mode == MODE_SSE, "defaultInputModes", "text/plain",
                      "defaultOutputModes", "text/plain", "skills");
        char *s = json_dumps(card, JSON_COMPACT);
        json_decref(card);
        submit(st, "200", "application/json", s, 1);
        free(s);
        return;
    }
    if (a->mode == MODE_SSE) {
        submit(st, "200", "text/event-stream", NULL, 0);
        st->tick = event_new(a->base, -1, 0, sse_tick, st);
        event_active(st->tick, EV_TIMEOUT, 1);
        return;
    }
    char *resp = echo_response(st, 0);
    submit(st, "200", "application/json", resp, 1);
    free(resp);
}

/* ---- nghttp2 server callbacks ---- */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    conn *c = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    stream *st = calloc(1, sizeof(*st));
    st->c = c;
    st->id = frame->hd.stream_id;
    st->headers = json_array();
    st->body = evbuffer_new();
    st->resp = evbuffer_new();
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0)
        snprintf(st->method, sizeof(st->method), "%.*s", (int)valuelen, (const char *)value);
    else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
        snprintf(st->path, sizeof(st->path), "%.*s", (int)valuelen, (const char *)value);
    json_array_append_new(st->headers, json_pack("[s%,s%]", (const char *)name, namelen,
                                                 (const char *)value, valuelen));
    return 0;
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st)
        evbuffer_add(st->body, data, len);
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (st)
            request_done(st);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st) {
        nghttp2_session_set_stream_user_data(ng, id, NULL);
        stream_free(st); /* nghttp2 is done with its data provider too */
    }
    return 0;
}

/* ---- connections ---- */

static void conn_free(conn *c)
{
    /* nghttp2_session_del closes streams without callbacks: free ours here. */
    while (c->streams)
        stream_free(c->streams);
    if (c->ng)
        nghttp2_session_del(c->ng);
    bufferevent_free(c->bev);
    free(c);
}

static void conn_flush(conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        if (n <= 0)
            break;
        evbuffer_add(out, data, (size_t)n);
    }
}

static void start_h2(conn *c)
{
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_server_new(&c->ng, cb, c);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100}};
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, 1);
    c->h2_ready = 1;
    conn_flush(c);
}

static void readcb(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    if (!c->h2_ready)
        return;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    ssize_t r = nghttp2_session_mem_recv(c->ng, evbuffer_pullup(in, -1), len);
    evbuffer_drain(in, len);
    if (r < 0) {
        conn_free(c);
        return;
    }
    conn_flush(c);
    if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng) &&
        evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_free(c);
}

static void writecb(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    if (!c->h2_ready)
        return;
    conn_flush(c);
    if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng) &&
        evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_free(c);
}

static void eventcb(struct bufferevent *bev, short what, void *arg)
{
    conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        const unsigned char *p = NULL;
        unsigned int n = 0;
        SSL_get0_alpn_selected(ssl, &p, &n);
        if (n != 2 || memcmp(p, "h2", 2) != 0) {
            conn_free(c); /* HTTP/2 only */
            return;
        }
        start_h2(c);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        conn_free(c);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    for (unsigned int i = 0; i < inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen)
            break;
        if (l == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    agent *a = arg;
    conn *c = calloc(1, sizeof(*c));
    c->a = a;
    c->id = ++a->n_conns;
    if (a->ctx)
        c->bev = bufferevent_openssl_socket_new(a->base, fd, SSL_new(a->ctx),
                                                BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    else
        c->bev = bufferevent_socket_new(a->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, readcb, writecb, eventcb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    record(a, json_pack("{s:s,s:i,s:b}", "event", "connect", "conn", c->id, "tls", a->ctx != NULL));
    if (a->ctx == NULL)
        start_h2(c);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static void usage(void)
{
    fprintf(stderr, "usage: h2_agent --port N [--record FILE] [--mode ok|sse|rst] "
                    "[--tls-cert FILE --tls-key FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    agent a;
    memset(&a, 0, sizeof(a));
    const char *cert = NULL, *key = NULL, *rec = NULL, *mode = "ok";
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--record") == 0)
            rec = argv[++i];
        else if (strcmp(argv[i], "--mode") == 0)
            mode = argv[++i];
        else if (strcmp(argv[i], "--tls-cert") == 0)
            cert = argv[++i];
        else if (strcmp(argv[i], "--tls-key") == 0)
            key = argv[++i];
        else
            usage();
    }
    if (strcmp(mode, "ok") == 0)
        a.mode = MODE_OK;
    else if (strcmp(mode, "sse") == 0)
        a.mode = MODE_SSE;
    else if (strcmp(mode, "rst") == 0)
        a.mode = MODE_RST;
    else
        usage();
    if ((cert == NULL) != (key == NULL))
        usage();
    signal(SIGPIPE, SIG_IGN);
    if (rec && (a.record = fopen(rec, "a")) == NULL) {
        perror(rec);
        return 1;
    }
    if (cert) {
        a.ctx = SSL_CTX_new(TLS_server_method());
        if (SSL_CTX_use_certificate_chain_file(a.ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(a.ctx, key, SSL_FILETYPE_PEM) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        SSL_CTX_set_alpn_select_cb(a.ctx, alpn_select, NULL);
    }
    a.base = event_base_new();
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t)port);
    struct evconnlistener *l =
        evconnlistener_new_bind(a.base, on_accept, &a, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                64, (struct sockaddr *)&sin, sizeof(sin));
    if (l == NULL) {
        perror("listen");
        return 1;
    }
    socklen_t slen = sizeof(sin);
    getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &slen);
    a.port = ntohs(sin.sin_port);
    struct event *s1 = evsignal_new(a.base, SIGTERM, on_signal, a.base);
    struct event *s2 = evsignal_new(a.base, SIGINT, on_signal, a.base);
    event_add(s1, NULL);
    event_add(s2, NULL);
    printf("READY %d\n", a.port);
    fflush(stdout);
    event_base_dispatch(a.base);
    event_free(s1);
    event_free(s2);
    evconnlistener_free(l);
    event_base_free(a.base);
    if (a.ctx)
        SSL_CTX_free(a.ctx);
    if (a.record)
        fclose(a.record);
    return 0;
}
