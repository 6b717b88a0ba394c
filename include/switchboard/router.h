/*
 * router.h — maps (method, path) to a handler, after authenticating the caller.
 *
 * The route table (installed from above: handlers.c owns SPEC §3's table, so the HTTP
 * layer never names a handler) states for each route who may call it; the router answers
 * 401 for a missing or unknown token, 404 for an unknown path and 405 for a known path
 * with the wrong method, and fills req->ident and req->params before the handler runs.
 * Per-workspace checks (403) are the handler's, through sb_router_require_workspace().
 */
#ifndef SWITCHBOARD_ROUTER_H
#define SWITCHBOARD_ROUTER_H

#include "switchboard/request.h"

typedef void (*sb_handler_fn)(sb_request *req);

typedef enum {
    SB_ACCESS_PUBLIC, /* no token */
    SB_ACCESS_ADMIN,  /* the admin token only */
    SB_ACCESS_ANY     /* admin or any workspace token; the handler narrows it */
} sb_access;

/* One route: |pattern| is a path whose "{name}" segments capture one path segment each
 * (at most 3, in order, into req->params; a "{ws}" segment must be the first and is
 * checked to be a valid workspace id). */
typedef struct sb_route {
    sb_method method;
    const char *pattern;
    sb_access access;
    sb_handler_fn handler;
} sb_route;

/* Installs the route table: |table| (|n| entries) must outlive every dispatch; the
 * first matching entry wins. Every pattern is split here once ('/' then 1-8 non-empty
 * segments; anything else aborts: a table the router cannot serve is a programming
 * error). Call once before any worker starts (not thread-safe). */
void sb_router_install(const sb_route *table, size_t n);

/* Installs |fn| (NULL: none), called after the router answered 401 (no or an unknown
 * token) on a matched route, with req->route set, req->status 401 and the body
 * complete; the refused-registration trail of SPEC §4.1 uses it. It must not answer.
 * Call once before any worker starts. */
void sb_router_set_unauthorized_hook(sb_handler_fn fn);

/* Routes |req| (called by codecs once the body is complete). The handler answers now or
 * later; the router answers itself when no handler runs. */
void sb_router_dispatch(sb_request *req);

/* 1 if req->ident may act as workspace |ws| (admin, or that workspace's token). Otherwise
 * answers 403 forbidden and returns 0. */
int sb_router_require_workspace(sb_request *req, const char *ws);

/* 1 if the caller is the admin; otherwise answers 403 and returns 0. */
int sb_router_require_admin(sb_request *req);

#endif
