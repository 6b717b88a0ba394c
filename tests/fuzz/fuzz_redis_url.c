/*
 * fuzz_redis_url.c — the --redis URL parser (redis.c).
 *
 * Input: one URL string (a NUL ends it early). The target includes redis.c itself to
 * reach its static url_parse: exporting a parser only for fuzzing would widen a module
 * interface for no caller, while this keeps src/ unchanged (the archive's redis.o is
 * then not linked: every symbol it defines is defined here). What parses must be a TCP
 * address (host and a port in 1..65535) or a unix socket path, with a printable
 * "where" that names the address and not the credentials; what does not must say why in
 * one line. The public sb_redis_url_check must agree.
 * Corpus: tests/corpus/redis_url/.
 */
#include "fuzz.h"

#include "../../src/redis.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet_logs();
    char *s = fuzz_cstr(data, size);
    redis_url u;
    char err[256];
    err[0] = '\0';
    int rc = url_parse(s, &u, err, sizeof(err));
    if (rc == SB_OK) {
        fuzz_check((u.host != NULL) != (u.path != NULL));
        if (u.host != NULL)
            fuzz_check(u.port >= 1 && u.port <= 65535);
        fuzz_check(u.where[0] != '\0');
        /* "where" names the address only, never "user:password@". */
        if (strchr(u.where, '@') != NULL)
            fuzz_check((u.host != NULL && strchr(u.host, '@') != NULL) ||
                       (u.path != NULL && strchr(u.path, '@') != NULL));
        url_clear(&u);
    } else {
        fuzz_check(err[0] != '\0' && strchr(err, '\n') == NULL);
    }
    char err2[256];
    fuzz_check((sb_redis_url_check(s, err2, sizeof(err2)) == SB_OK) == (rc == SB_OK));
    sb_free(s);
    return 0;
}
