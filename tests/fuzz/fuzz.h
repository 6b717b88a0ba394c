/*
 * fuzz.h — what every fuzz target in tests/fuzz/ shares.
 *
 * A target is one file fuzz_<name>.c defining LLVMFuzzerTestOneInput (and, when it needs
 * one-time set-up, LLVMFuzzerInitialize). The same file is linked two ways: with
 * libFuzzer (clang -fsanitize=fuzzer,address,undefined; `make fuzz`) to search for
 * inputs, and with replay.c, a plain main() of our own, to run every corpus file once
 * under any compiler (`make fuzz-replay`, part of `make check` and `make test`).
 * A target must be deterministic, keep no state between inputs beyond one-time set-up,
 * free everything it allocates (libFuzzer's leak check runs after every input) and never
 * exit. It calls fuzz_check() for properties switchboard promises beyond "does not
 * crash" (an answer is valid JSON, a parsed URL has a port): a broken promise aborts,
 * which the fuzzer reports as a crash.
 */
#ifndef SWITCHBOARD_FUZZ_H
#define SWITCHBOARD_FUZZ_H

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "switchboard/alloc.h"
#include "switchboard/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define fuzz_check(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: fuzz property failed: %s\n", __FILE__, __LINE__, #cond);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* |size| bytes of |data| as a new NUL-terminated string (release with sb_free); a NUL in
 * the input ends the string early, as it would for a C caller. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = sb_malloc(size + 1);
    if (size > 0)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* switchboard logs every refusal; millions of inputs would flood the terminal. Logs go
 * to /dev/null, still through the real formatting code (JSON lines). */
static inline void fuzz_quiet_logs(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd != -1)
        sb_log_init(1, fd);
}

#endif
