/*
 * upstream_tls.c — https for the upstream pool (see upstream.c for the overview): the
 * client SSL_CTX, made on the first https push; the handshake on a connected socket
 * (SNI and hostname verification for names, IP verification for literals, ALPN "h2"
 * and "http/1.1" where HTTP/2 may be spoken); the ALPN verdict that makes a connection
 * an HTTP/2 session or an HTTP/1.1 one; and the one-line texts of TLS failures.
 *
 * Failures decided here: anything that stops the handshake (certificate not trusted,
 * name or IP mismatch, protocol error such as a plain HTTP port, EOF) → tls_error, with
 * OpenSSL's verdict in the detail. (No handshake within the connect timeout is decided
 * by the request timer in upstream.c, with the same wording.)
 *
 * Never: connect without verifying the peer, or leave errors on OpenSSL's queue for the
 * next connection to misreport.
 */
#include "switchboard/upstream.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/strmap.h"
#include "switchboard/upstream_h2.h"
#include "switchboard/util.h"

#include "upstream_int.h"

/* The pool's client context, made on first use: system CA store plus tls_ca_file, TLS
 * 1.2 at least, peer verification on, ALPN http/1.1 (per connection h2 is added). NULL
 * with p->tls_ctx_err set when it cannot be made (every https push then fails with that
 * text). */
SSL_CTX *up_tls_ctx_get(sb_upstream_pool *p)
{
    if (p->tls_ctx || p->tls_ctx_err[0])
        return p->tls_ctx;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(p->tls_ctx_err, sizeof(p->tls_ctx_err), "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* idle pooled connections stay small */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    /* The system store always; --upstream-ca adds a private CA next to it. A missing
     * system store is not an error (a container may only trust --upstream-ca). */
    SSL_CTX_set_default_verify_paths(ctx);
    ERR_clear_error();
    if (p->tls_ca_file && SSL_CTX_load_verify_locations(ctx, p->tls_ca_file, NULL) != 1) {
        char e[120];
        ERR_error_string_n(ERR_get_error(), e, sizeof(e));
        ERR_clear_error();
        snprintf(p->tls_ctx_err, sizeof(p->tls_ctx_err), "cannot load CA certificates from %s: %s",
                 p->tls_ca_file, e);
        SSL_CTX_free(ctx);
        return NULL;
    }
    p->tls_ctx = ctx;
    return ctx;
}

/* " (name)" after a peer address when the URL named the host, "" for IP literals. */
const char *up_tls_name_note(const sb_upstream_req *req, char *buf, size_t len)
{
    if (req->literal)
        return "";
    snprintf(buf, len, " (%s)", req->host);
    return buf;
}

/* One line on why a handshake failed: the certificate verdict when verification failed,
 * else OpenSSL's reason, else the socket error or EOF. */
static void tls_failure_text(up_conn *c, short what, int err, char *out, size_t len)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = bufferevent_get_openssl_error(c->bev);
    char ebuf[128];
    if (v != X509_V_OK) {
        snprintf(out, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    } else if (e != 0) {
        const char *r = ERR_reason_error_string(e);
        snprintf(out, len, "%s", r ? r : "TLS error");
    } else if (what & BEV_EVENT_EOF) {
        snprintf(out, len, "connection closed by the peer");
    } else {
        snprintf(out, len, "%s", up_errno_text(err ? err : ECONNRESET, ebuf, sizeof(ebuf)));
    }
    while (bufferevent_get_openssl_error(c->bev) != 0)
        ;
    ERR_clear_error();
}

/* Gives up on |req|'s new connection |c| after a TLS failure: |c| closes and |req|
 * completes with "<stage> with <peer>[ (<name>)]: <why>". */
void up_conn_fail_tls(up_conn *c, sb_upstream_req *req, const char *stage, const char *why)
{
    char peer[PEER_MAX], note[HOST_MAX + 4];
    memcpy(peer, c->peer, sizeof(peer)); /* c is dead (awaiting the reaper) after up_conn_close */
    c->req = NULL;
    req->conn = NULL;
    up_conn_close(c);
    up_req_complete(req, SB_REASON_TLS_ERROR, "%s with %s%s: %s", stage, peer,
                    up_tls_name_note(req, note, sizeof(note)), why);
}

/* One line on why an established connection failed (BEV_EVENT_ERROR |what|, socket
 * error |err|). A TLS record error leaves errno alone; OpenSSL has the reason then. */
void up_conn_error_text(up_conn *c, short what, int err, char *out, size_t len)
{
    unsigned long tls_err = c->origin->https ? bufferevent_get_openssl_error(c->bev) : 0;
    const char *tls_why = tls_err ? ERR_reason_error_string(tls_err) : NULL;
    char ebuf[128];
    snprintf(out, len, "connection %s (%s)",
             (what & BEV_EVENT_WRITING) ? "failed while sending" : "reset",
             tls_err ? (tls_why ? tls_why : "TLS error")
                     : up_errno_text(err ? err : ECONNRESET, ebuf, sizeof(ebuf)));
    if (tls_err)
        ERR_clear_error();
}

/* Starts the TLS handshake on the connected c->fd: SNI and hostname verification for
 * names, IP-address verification for literals, ALPN as c->want says. Returns 0, or -1
 * with |why| set (c->fd is still c's then). */
int up_conn_start_tls(up_conn *c, sb_upstream_req *req, char *why, size_t len)
{
    sb_upstream_pool *p = c->pool;
    SSL *ssl = SSL_new(p->tls_ctx);
    if (ssl == NULL) {
        snprintf(why, len, "cannot create a TLS session");
        return -1;
    }
    int ok;
    if (req->literal) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), req->host);
    } else {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = SSL_set_tlsext_host_name(ssl, req->host) == 1 && SSL_set1_host(ssl, req->host) == 1;
    }
    if (ok == 1 && c->want == WANT_ALPN) {
        static const unsigned char alpn[] = "\x02h2\x08http/1.1";
        ok = SSL_set_alpn_protos(ssl, alpn, sizeof(alpn) - 1) == 0;
    }
    if (ok != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        snprintf(why, len, "cannot set the expected peer name");
        return -1;
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        p->base, c->fd, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        /* Only allocation fails here, and libevent's cleanup may already have closed the
         * socket and freed |ssl|: treat it like any out-of-memory (alloc.h). */
        fprintf(stderr, "switchboard: bufferevent_openssl_socket_new failed\n");
        abort();
    }
    /* EOF without close_notify is how many servers end a connection; the HTTP framing,
     * not the TLS alert, says whether the response was complete. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    c->bev = bev;
    c->fd = -1; /* the bufferevent owns it now */
    c->state = CONN_HANDSHAKE;
    bufferevent_setcb(bev, up_conn_readcb, up_conn_writecb, up_conn_eventcb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return 0;
}

/* 1 when the finished handshake of |c| chose HTTP/2. */
static int conn_alpn_h2(up_conn *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    const unsigned char *proto = NULL;
    unsigned int len = 0;
    if (ssl)
        SSL_get0_alpn_selected(ssl, &proto, &len);
    return len == 2 && memcmp(proto, "h2", 2) == 0;
}

/* The handshake of |c| ended (BEV_EVENT_CONNECTED in |what|) or failed (socket error
 * |err|): the connection becomes an HTTP/2 session or carries its request over HTTP/1.1,
 * or it closes and the request fails with tls_error. */
void up_tls_on_event(up_conn *c, short what, int err)
{
    sb_upstream_req *req = c->req;
    if (what & BEV_EVENT_CONNECTED) {
        if (conn_alpn_h2(c)) {
            up_conn_become_h2(c, req);
            return;
        }
        if (c->want == WANT_ALPN)
            c->origin->alpn_h1 = 1;
        up_conn_send(c, req);
        up_opener_release(req, SB_REASON_NONE, NULL);
        return;
    }
    char why[200];
    tls_failure_text(c, what, err, why, sizeof(why));
    up_conn_fail_tls(c, req, "TLS handshake", why);
}
