/*
 * router.c — matching a request to a route, and the authentication gate in front of it.
 *
 * The table itself (SPEC §3) belongs to the API layer above (handlers.c) and is
 * installed once at start, so this layer never names a handler. Routes are matched
 * segment by segment against patterns whose "{name}" segments capture one path segment
 * into req->params (in order). The table is small and fixed, so a linear scan over
 * patterns split once at install (compiled_route: a segment count, then per segment a
 * length and bytes to compare) beats any fancier structure. Order of answers for a request that
 * cannot be served: 404 (no pattern matches the path), 405 (the path exists with other methods,
 * with an Allow header), 401 (the route needs a token and none or an unknown one came),
 * 403 (admin-only route, workspace token), 400 (a {ws} segment that is not a valid
 * workspace id). A HEAD request matches the GET route of its path. Before the token replica is
 * loaded (sb_sync_loaded), a token that is not the admin token gets 503 not_ready + Retry-After
 * instead of 401: it may be a valid workspace token not seen yet.
 */
#include "switchboard/router.h"
#include "switchboard/alloc.h"
#include "switchboard/auth.h"
#include "switchboard/sync.h"
#include "switchboard/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEGMENTS 8

/* A pattern split once at install: per segment a literal (its bytes and length) or a
 * "{name}" parameter. */
typedef struct compiled_route {
    int nseg;
    int has_ws;                    /* a "{ws}" segment: the first parameter is a workspace id */
    const char *lit[MAX_SEGMENTS]; /* NULL: a parameter */
    size_t len[MAX_SEGMENTS];
} compiled_route;

/* The installed table (sb_router_install); empty until then: every path is a 404. */
static const sb_route *routes;
static compiled_route *compiled;
static size_t nroutes;

/* Splits |pattern| into |cr|; 0 when it is not a path the router serves (no leading
 * '/', an empty segment, more than MAX_SEGMENTS). */
static int compile(const char *pattern, compiled_route *cr)
{
    cr->has_ws = strstr(pattern, "{ws}") != NULL;
    if (pattern[0] != '/')
        return 0;
    int n = 0;
    const char *p = pattern + 1;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || n == MAX_SEGMENTS)
            return 0;
        cr->lit[n] = p[0] == '{' ? NULL : p;
        cr->len[n] = len;
        n++;
        if (slash == NULL)
            break;
        p = slash + 1;
    }
    cr->nseg = n;
    return 1;
}

void sb_router_install(const sb_route *table, size_t n)
{
    sb_free(compiled);
    compiled = n > 0 ? sb_calloc(n, sizeof(*compiled)) : NULL;
    for (size_t i = 0; i < n; i++) {
        if (!compile(table[i].pattern, &compiled[i])) { /* a table that cannot be served */
            fprintf(stderr, "switchboard: route pattern %s is not a path of 1-%d segments\n",
                    table[i].pattern, MAX_SEGMENTS);
            abort();
        }
    }
    routes = table;
    nroutes = n;
}

static sb_handler_fn unauthorized_hook;

void sb_router_set_unauthorized_hook(sb_handler_fn fn)
{
    unauthorized_hook = fn;
}

static const char *method_name(sb_method m)
{
    switch (m) {
    case SB_METHOD_GET:
        return "GET";
    case SB_METHOD_HEAD:
        return "HEAD";
    case SB_METHOD_POST:
        return "POST";
    case SB_METHOD_PUT:
        return "PUT";
    case SB_METHOD_DELETE:
        return "DELETE";
    default:
        return "OTHER";
    }
}

/* Splits |path| (which must start with '/') into at most MAX_SEGMENTS segments of
 * |buf|, their lengths in |seglen|. Returns the count, or -1 when the path is not of that
 * shape. Empty segments ("//", trailing "/") make the path unmatched, as no route has
 * them. */
static int split(const char *path, char *buf, size_t cap, char *seg[MAX_SEGMENTS],
                 size_t seglen[MAX_SEGMENTS])
{
    size_t len = strlen(path);
    if (path[0] != '/' || len >= cap)
        return -1;
    memcpy(buf, path + 1, len); /* the NUL included */
    int n = 0;
    char *p = buf, *end = buf + len - 1;
    for (;;) {
        if (n == MAX_SEGMENTS)
            return -1;
        seg[n] = p;
        char *slash = memchr(p, '/', (size_t)(end - p));
        seglen[n] = (size_t)((slash ? slash : end) - p);
        if (seglen[n++] == 0)
            return -1;
        if (slash == NULL)
            break;
        *slash = '\0';
        p = slash + 1;
    }
    return n;
}

/* 1 if the pre-split path matches the route |cr|; fills |params| with pointers into it. */
static int match(const compiled_route *cr, char *seg[], const size_t seglen[], int nseg,
                 char *params[3])
{
    if (cr->nseg != nseg)
        return 0;
    int np = 0;
    for (int i = 0; i < nseg; i++) {
        if (cr->lit[i] == NULL) {
            if (np < 3)
                params[np++] = seg[i];
        } else if (seglen[i] != cr->len[i] || memcmp(seg[i], cr->lit[i], seglen[i]) != 0) {
            return 0;
        }
    }
    return 1;
}

int sb_router_require_workspace(sb_request *req, const char *ws)
{
    if (req->ident.kind == SB_IDENT_ADMIN)
        return 1;
    if (req->ident.kind == SB_IDENT_WORKSPACE && strcmp(req->ident.workspace_id, ws) == 0)
        return 1;
    sb_response_error(req, 403, "forbidden", "this token may not act for workspace %s", ws);
    return 0;
}

int sb_router_require_admin(sb_request *req)
{
    if (req->ident.kind == SB_IDENT_ADMIN)
        return 1;
    sb_response_error(req, 403, "forbidden", "this route needs the admin token");
    return 0;
}

static void answer_method_not_allowed(sb_request *req, const char *allow)
{
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Allow", allow);
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", "method_not_allowed", "message",
                             "this route does not accept that method");
    sb_response_json(req, 405, body, &h);
    sb_headers_clear(&h);
}

/* A token came that this instance cannot judge yet: workspace tokens live in the token
 * replica, which is not loaded before the first snapshot. 401 would be a false "unknown
 * token", so the caller is asked to come back. */
static void answer_not_ready(sb_request *req)
{
    sb_headers h;
    sb_headers_init(&h);
    sb_headers_add(&h, "Retry-After", "1");
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", "not_ready", "message",
                             "switchboard is starting: its token replica is not loaded from "
                             "Redis yet; retry shortly");
    sb_response_json(req, 503, body, &h);
    sb_headers_clear(&h);
}

void sb_router_dispatch(sb_request *req)
{
    char buf[1024];
    char *seg[MAX_SEGMENTS];
    size_t seglen[MAX_SEGMENTS];
    char *params[3] = {NULL, NULL, NULL};
    int nseg = split(req->path, buf, sizeof(buf), seg, seglen);
    const sb_route *found = NULL;
    char allow[64] = "";
    for (size_t i = 0; nseg > 0 && i < nroutes; i++) {
        char *p[3] = {NULL, NULL, NULL};
        if (!match(&compiled[i], seg, seglen, nseg, p))
            continue;
        /* HEAD is GET without the body: the codec sends GET's headers (Content-Length
         * included) and drops the bytes, so load balancers probing with HEAD see what
         * GET would answer. */
        if (routes[i].method == req->method ||
            (req->method == SB_METHOD_HEAD && routes[i].method == SB_METHOD_GET)) {
            found = &routes[i];
            memcpy(params, p, sizeof(params));
            break;
        }
        size_t used = strlen(allow);
        snprintf(allow + used, sizeof(allow) - used, "%s%s%s", used ? ", " : "",
                 method_name(routes[i].method), routes[i].method == SB_METHOD_GET ? ", HEAD" : "");
    }
    if (found == NULL) {
        if (allow[0] != '\0')
            answer_method_not_allowed(req, allow);
        else
            sb_response_error(req, 404, "not_found", "no such route");
        return;
    }
    req->route = found->pattern;

    if (found->access != SB_ACCESS_PUBLIC) {
        if (sb_auth_identify(sb_headers_get(&req->headers, "Authorization"), &req->ident) !=
            SB_OK) {
            if (!sb_sync_loaded() && sb_headers_get(&req->headers, "Authorization") != NULL) {
                answer_not_ready(req);
                return;
            }
            sb_headers h;
            sb_headers_init(&h);
            sb_headers_add(&h, "WWW-Authenticate", "Bearer");
            json_t *body =
                json_pack("{s:{s:s,s:s}}", "error", "code", "unauthorized", "message",
                          "a valid Bearer token is required (Authorization: Bearer TOKEN)");
            sb_response_json(req, 401, body, &h);
            sb_headers_clear(&h);
            if (unauthorized_hook != NULL)
                unauthorized_hook(req);
            return;
        }
        if (found->access == SB_ACCESS_ADMIN && !sb_router_require_admin(req))
            return;
    }

    /* Every {ws} segment is the first parameter of its pattern. */
    if (compiled[found - routes].has_ws && !sb_valid_workspace_id(params[0])) {
        sb_response_error(req, 400, "invalid_workspace_id",
                          "workspace ids are 1-%d characters of A-Z a-z 0-9 . _ -", SB_WS_ID_MAX);
        return;
    }
    for (int i = 0; i < 3; i++)
        req->params[i] = params[i] ? sb_strdup(params[i]) : NULL;
    found->handler(req);
}
