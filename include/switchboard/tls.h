/*
 * tls.h — the server side of TLS: one SSL_CTX for --tls-listen, and accepted TLS
 * connections as OpenSSL bufferevents.
 *
 * The context is built once in sb_server_init, before any worker thread exists, from
 * --tls-cert and --tls-key: TLS 1.2 and 1.3 only, forward-secret AEAD ciphers (the
 * HTTP/2 profile of RFC 9113 §9.2), no compression, no renegotiation, ALPN "h2" then
 * "http/1.1" in the server's order of preference. Workers then share it read-only
 * (OpenSSL 3 makes SSL_new on a shared context thread-safe) until sb_server_clear.
 *
 * After the handshake the codec asks sb_tls_alpn_is_h2() which protocol was agreed:
 * "h2" goes to the HTTP/2 codec, "http/1.1" or no ALPN at all to HTTP/1.1.
 *
 * Never: accept a client without a certificate and key that were loaded and checked to
 * match at start, or log key material.
 */
#ifndef SWITCHBOARD_TLS_H
#define SWITCHBOARD_TLS_H

#include <event2/util.h>
#include <stddef.h>

struct bufferevent;
struct event_base;
struct ssl_ctx_st;

/* Builds the server context from the PEM certificate chain |cert_file| and the PEM
 * private key |key_file|. Returns the context (owned by the caller, released with
 * sb_tls_ctx_free), or NULL with one line in |err| (capacity |errlen|) naming the file
 * and OpenSSL's reason: unreadable or malformed PEM, a key that does not match the
 * certificate, or an OpenSSL failure. */
struct ssl_ctx_st *sb_tls_server_ctx_new(const char *cert_file, const char *key_file, char *err,
                                         size_t errlen);

/* Releases a context from sb_tls_server_ctx_new. NULL is accepted. Connections still
 * using it keep their own reference (OpenSSL counts them). */
void sb_tls_ctx_free(struct ssl_ctx_st *ctx);

/* Wraps the accepted, non-blocking socket |fd| in a server-side OpenSSL bufferevent on
 * |base| in the accepting state, with BEV_OPT_CLOSE_ON_FREE: the bufferevent owns |fd|
 * and the SSL object from now on, and freeing it frees both. The handshake runs as soon
 * as the bufferevent is enabled; BEV_EVENT_CONNECTED reports its end. A client that
 * closes without close_notify is reported as an ordinary EOF. Never NULL: the only way
 * OpenSSL or libevent can fail here is out of memory, which aborts (alloc.h). */
struct bufferevent *sb_tls_accept(struct event_base *base, evutil_socket_t fd,
                                  struct ssl_ctx_st *ctx);

/* 1 if |bev| is a TLS bufferevent whose handshake agreed on ALPN "h2"; 0 for plain
 * bufferevents, for "http/1.1", for no ALPN, or while the handshake is not done. */
int sb_tls_alpn_is_h2(struct bufferevent *bev);

/* 1 if |bev| is a TLS (OpenSSL) bufferevent, 0 otherwise. */
int sb_tls_is_tls(struct bufferevent *bev);

#endif
