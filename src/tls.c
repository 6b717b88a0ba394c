/*
 * tls.c — the server-side TLS context and accepted TLS bufferevents (see tls.h).
 *
 * Role: turn --tls-cert/--tls-key into one SSL_CTX at start, and accepted sockets of
 * --tls-listen into OpenSSL bufferevents that the codecs (http1.c, http2.c) then serve
 * exactly like plain ones. Protocol choice is ALPN's: the callback below picks "h2"
 * when the client offers it, else "http/1.1", else nothing (HTTP/1.1 then).
 *
 * Lifecycle: sb_tls_server_ctx_new once before the workers start; sb_tls_accept on a
 * worker thread per connection; sb_tls_ctx_free after every worker stopped.
 *
 * Never: negotiate below TLS 1.2, renegotiate (HTTP/2 forbids it, and it is a classic
 * DoS lever), or keep OpenSSL's error queue dirty for the next caller on the thread.
 */
#include "switchboard/tls.h"

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* TLS 1.2 suites: ECDHE with AEAD only, as RFC 9113 §9.2.2 requires for h2 (and the
 * Mozilla "intermediate" profile); TLS 1.3 keeps OpenSSL's default suites. */
static const char tls12_ciphers[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
static const char tls_groups[] = "X25519:P-256:P-384";

/* One line: |flag| |file|: |what| (OpenSSL's reason). The first error queued is the
 * root cause ("no start line"), later ones only wrap it ("PEM lib"). The queue is
 * emptied. */
static void tls_error(char *err, size_t errlen, const char *flag, const char *file,
                      const char *what)
{
    unsigned long e = ERR_peek_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (reason == NULL)
        reason = "unknown OpenSSL error";
    if (file != NULL)
        snprintf(err, errlen, "%s %s: %s (%s)", flag, file, what, reason);
    else
        snprintf(err, errlen, "%s: %s (%s)", flag, what, reason);
    ERR_clear_error();
}

/* Server preference: h2, then http/1.1. |in| is the client's wire-format list; a
 * malformed list selects nothing. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char h2[] = "h2";
    static const unsigned char h11[] = "http/1.1";
    int have_h2 = 0, have_h11 = 0;
    const unsigned char *h11_at = NULL, *h2_at = NULL;
    unsigned int i = 0;
    while (i < inlen) {
        unsigned int n = in[i];
        if (n == 0 || n > inlen - i - 1)
            return SSL_TLSEXT_ERR_NOACK;
        const unsigned char *p = in + i + 1;
        if (n == sizeof(h2) - 1 && memcmp(p, h2, n) == 0) {
            have_h2 = 1;
            h2_at = p;
        } else if (n == sizeof(h11) - 1 && memcmp(p, h11, n) == 0) {
            have_h11 = 1;
            h11_at = p;
        }
        i += n + 1;
    }
    if (have_h2) {
        *out = h2_at;
        *outlen = (unsigned char)(sizeof(h2) - 1);
        return SSL_TLSEXT_ERR_OK;
    }
    if (have_h11) {
        *out = h11_at;
        *outlen = (unsigned char)(sizeof(h11) - 1);
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK; /* no overlap: carry on without ALPN (HTTP/1.1) */
}

struct ssl_ctx_st *sb_tls_server_ctx_new(const char *cert_file, const char *key_file, char *err,
                                         size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tls_error(err, errlen, "--tls-listen", NULL, "cannot create a TLS context");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(ctx, tls12_ciphers) != 1 ||
        SSL_CTX_set1_groups_list(ctx, tls_groups) != 1) {
        tls_error(err, errlen, "--tls-listen", NULL, "cannot configure TLS");
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    static const unsigned char sid_ctx[] = "switchboard";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);

    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        tls_error(err, errlen, "--tls-cert", cert_file, "cannot load a PEM certificate chain");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        const char *what = ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH
                               ? "the key does not match --tls-cert"
                               : "cannot load a PEM private key";
        tls_error(err, errlen, "--tls-key", key_file, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_error(err, errlen, "--tls-key", key_file, "the key does not match --tls-cert");
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void sb_tls_ctx_free(struct ssl_ctx_st *ctx)
{
    SSL_CTX_free(ctx);
}

struct bufferevent *sb_tls_accept(struct event_base *base, evutil_socket_t fd,
                                  struct ssl_ctx_st *ctx)
{
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL) {
        fprintf(stderr, "switchboard: out of memory creating a TLS session\n");
        abort();
    }
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        fprintf(stderr, "switchboard: out of memory creating a TLS bufferevent\n");
        abort();
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

int sb_tls_is_tls(struct bufferevent *bev)
{
    return bufferevent_openssl_get_ssl(bev) != NULL;
}

int sb_tls_alpn_is_h2(struct bufferevent *bev)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (ssl == NULL)
        return 0;
    const unsigned char *proto = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(ssl, &proto, &len);
    return len == 2 && memcmp(proto, "h2", 2) == 0;
}
