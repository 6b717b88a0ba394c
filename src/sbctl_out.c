/*
 * sbctl_out.c — what sbctl prints: its own messages on stderr, the reading of the
 * server's answers (JSON bodies, SPEC §2 and JSON-RPC errors, the "no such route" 404 of
 * an older switchboard) and the helpers that render them for people (key-value lines,
 * flattened objects, aligned tables). The commands in sbctl.c decide what to print.
 *
 * Never: print the admin token; write to stdout anything but the answer (messages and
 * errors go to stderr, so --json output stays parseable).
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "switchboard/alloc.h"
#include "switchboard/common.h"
#include "switchboard/headers.h"

#include "sbctl_int.h"

/* ---- messages ---- */

void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("sbctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("sbctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n(sbctl --help shows the usage)\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

/* ---- reading answers ---- */

/* The body as JSON, or NULL when it is empty or not JSON. */
json_t *resp_json(const http_resp *r)
{
    if (r->body.n == 0)
        return NULL;
    return json_loadb(r->body.p, r->body.n, 0, NULL);
}

const char *str_or(const json_t *v, const char *dflt)
{
    return json_is_string(v) ? json_string_value(v) : dflt;
}

/* Writes a scalar (or a compact rendering of anything else) into |out|. */
void scalar_text(const json_t *v, char *out, size_t cap)
{
    if (v == NULL || json_is_null(v)) {
        snprintf(out, cap, "-");
    } else if (json_is_string(v)) {
        snprintf(out, cap, "%s", json_string_value(v));
    } else if (json_is_integer(v)) {
        snprintf(out, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_real(v)) {
        snprintf(out, cap, "%.10g", json_real_value(v));
    } else if (json_is_boolean(v)) {
        snprintf(out, cap, "%s", json_is_true(v) ? "yes" : "no");
    } else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(out, cap, "%s", s ? s : "?");
        sb_free(s);
    }
}

/* Prints the raw body for --json; an empty body becomes |fallback| (stolen, may be NULL). */
void print_raw(const http_resp *r, json_t *fallback)
{
    if (r->body.n > 0) {
        fwrite(r->body.p, 1, r->body.n, stdout);
        if (r->body.p[r->body.n - 1] != '\n')
            fputc('\n', stdout);
    } else if (fallback != NULL) {
        json_dumpf(fallback, stdout, JSON_COMPACT);
        fputc('\n', stdout);
    }
    json_decref(fallback);
}

/* Reports an HTTP error answer: the SPEC §2 error body, a JSON-RPC error, or the status
 * alone. With --json the body also goes to stdout. Returns EXIT_REFUSED. */
int report_error(const cli *c, const char *method, const char *path, const http_resp *r)
{
    if (c->json)
        print_raw(r, NULL);
    json_t *j = resp_json(r);
    const json_t *e = json_object_get(j, "error");
    const char *hint = "";
    if (r->status == 401)
        hint = " (check SWITCHBOARD_ADMIN_TOKEN or --token-file)";
    if (json_is_object(e) && json_is_string(json_object_get(e, "code"))) {
        say("%s %s: HTTP %d %s: %s%s", method, path, r->status,
            json_string_value(json_object_get(e, "code")),
            str_or(json_object_get(e, "message"), ""), hint);
    } else if (json_is_object(e) && json_is_integer(json_object_get(e, "code"))) {
        const json_t *data = json_object_get(e, "data");
        say("%s %s: HTTP %d, JSON-RPC error %" JSON_INTEGER_FORMAT ": %s%s%s", method, path,
            r->status, json_integer_value(json_object_get(e, "code")),
            str_or(json_object_get(e, "message"), ""),
            json_is_string(json_object_get(data, "detail")) ? " — " : "",
            str_or(json_object_get(data, "detail"), ""));
    } else {
        say("%s %s: HTTP %d %s%s", method, path, r->status, sb_http_reason_phrase(r->status), hint);
    }
    json_decref(j);
    return EXIT_REFUSED;
}

/* 1 when |r| is the router's "no such route" 404: this switchboard predates the route. */
int route_missing(const http_resp *r)
{
    if (r->status != 404)
        return 0;
    json_t *j = resp_json(r);
    const json_t *e = json_object_get(j, "error");
    int missing = json_is_object(e) &&
                  strcmp(str_or(json_object_get(e, "code"), ""), "not_found") == 0 &&
                  strcmp(str_or(json_object_get(e, "message"), ""), "no such route") == 0;
    json_decref(j);
    return missing;
}

int report_route_missing(const char *method, const char *path, const char *what)
{
    say("this switchboard does not serve %s %s yet (HTTP 404: no such route); %s arrives "
        "with the workspace delivery view — upgrade switchboard to use this command",
        method, path, what);
    return EXIT_REFUSED;
}

/* ---- output helpers ---- */

void kv(const char *key, const char *value)
{
    printf("%-18s %s\n", key, value);
}

/* Prints every scalar under |v| as "prefix.key  value", depth first, skipping |skip|
 * keys at the top level. Arrays of scalars print compactly on one line. */
void flatten(const char *prefix, const json_t *v, const char *const *skip)
{
    if (json_is_object(v)) {
        const char *k;
        const json_t *child;
        json_object_foreach((json_t *)(uintptr_t)v, k, child)
        {
            int skipped = 0;
            for (size_t i = 0; skip != NULL && skip[i] != NULL; i++)
                skipped |= strcmp(k, skip[i]) == 0;
            if (skipped)
                continue;
            char key[256];
            snprintf(key, sizeof(key), "%s%s%s", prefix, prefix[0] ? "." : "", k);
            flatten(key, child, NULL);
        }
        return;
    }
    char text[1024];
    scalar_text(v, text, sizeof(text));
    kv(prefix, text);
}

void table_row(table *t, const char *const *cols)
{
    t->cells = sb_realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(char *));
    for (size_t i = 0; i < t->ncols; i++)
        t->cells[t->nrows * t->ncols + i] = sb_strdup(cols[i] ? cols[i] : "-");
    t->nrows++;
}

void table_print_fit(table *t, size_t max_width)
{
    size_t width[16] = {0};
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t i = 0; i < t->ncols && i < 16; i++) {
            size_t n = strlen(t->cells[r * t->ncols + i]);
            width[i] = n > width[i] ? n : width[i];
        }
    /* Room left for the last column once the others and their gaps are printed. */
    size_t used = 0;
    for (size_t i = 0; i + 1 < t->ncols && i < 16; i++)
        used += width[i] + 2;
    size_t room = max_width > used + 12 ? max_width - used : 12;
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t i = 0; i < t->ncols; i++) {
            const char *s = t->cells[r * t->ncols + i];
            if (i + 1 < t->ncols)
                printf("%-*s  ", (int)width[i], s);
            else if (max_width > 0 && strlen(s) > room)
                printf("%.*s...\n", (int)(room - 3), s);
            else
                printf("%s\n", s);
            sb_free(t->cells[r * t->ncols + i]);
        }
    }
    sb_free(t->cells);
    t->cells = NULL;
    t->nrows = 0;
}

void table_print_free(table *t)
{
    table_print_fit(t, 0);
}

/* The list in an answer that is either an array or an object holding |key|. */
const json_t *list_of(const json_t *j, const char *key)
{
    if (json_is_array(j))
        return j;
    const json_t *a = json_object_get(j, key);
    return json_is_array(a) ? a : NULL;
}

void print_list_table(const json_t *list, const char *const *head, const char *const *keys,
                      size_t ncols)
{
    if (ncols > SBCTL_TABLE_MAX_COLS)
        ncols = SBCTL_TABLE_MAX_COLS;
    table t = {ncols, 0, NULL};
    table_row(&t, head);
    size_t i;
    const json_t *m;
    json_array_foreach(list, i, m)
    {
        char cell[SBCTL_TABLE_MAX_COLS][512];
        const char *row[SBCTL_TABLE_MAX_COLS];
        for (size_t k = 0; k < ncols; k++) {
            scalar_text(json_object_get(m, keys[k]), cell[k], sizeof(cell[k]));
            row[k] = cell[k];
        }
        table_row(&t, row);
    }
    table_print_free(&t);
}
