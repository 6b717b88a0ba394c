/*
 * fuzz_config.c — command-line flag and environment parsing (config.c).
 *
 * Input: NUL-separated arguments, as argv after the program name. Values of flags that
 * open files (--admin-token-file, --tls-cert, --tls-key, --upstream-ca) are replaced by
 * one of three fixtures chosen by the value's first byte — a readable token file, a
 * directory, a path that does not exist — so the fuzzer explores the parser rather than
 * the file system (it would find /dev/zero). Inputs holding --help, -h or --version are
 * skipped: those exit the process by contract. Checks: SB_OK leaves a configuration with an
 * admin token and sane limits; a failure leaves one message line; sb_config_clear
 * releases either.
 * Corpus: tests/corpus/config/.
 */
#include "fuzz.h"

#include <sys/stat.h>
#include <unistd.h>

#include "switchboard/common.h"
#include "switchboard/config.h"

#define MAX_ARGS 64

static char g_token_file[64] = "";

/* The fixture goes when the run ends (libFuzzer and the corpus replay both exit through
 * exit()): a run that crashes leaves its one file behind, as its crash input. */
static void remove_token_file(void)
{
    if (g_token_file[0] != '\0')
        unlink(g_token_file);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    snprintf(g_token_file, sizeof(g_token_file), "/tmp/sb-fuzz-token-%d", (int)getpid());
    atexit(remove_token_file);
    FILE *f = fopen(g_token_file, "w");
    if (f != NULL) {
        fputs("fuzz-admin-token-0123456789\n", f);
        fclose(f);
    }
    /* The parser reads SWITCHBOARD_* variables: none may leak in from the shell. */
    unsetenv("SWITCHBOARD_ADMIN_TOKEN");
    return 0;
}

static int is_file_flag(const char *a)
{
    static const char *const flags[] = {"--admin-token-file", "--tls-cert", "--tls-key",
                                        "--upstream-ca"};
    for (size_t i = 0; i < SB_ARRAY_LEN(flags); i++) {
        size_t n = strlen(flags[i]);
        if (strncmp(a, flags[i], n) == 0 && (a[n] == '\0' || a[n] == '='))
            return 1;
    }
    return 0;
}

static const char *fixture(char pick)
{
    switch ((unsigned char)pick % 3) {
    case 0:
        return g_token_file;
    case 1:
        return "/tmp";
    default:
        return "/nonexistent/sb-fuzz";
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_token_file[0] == '\0')
        LLVMFuzzerInitialize(NULL, NULL);
    char *buf = sb_malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *argv[MAX_ARGS + 2];
    char *owned[MAX_ARGS + 2];
    int argc = 0, nowned = 0;
    argv[argc++] = (char *)(uintptr_t) "switchboard";
    for (size_t off = 0; off < size && argc < MAX_ARGS;) {
        char *a = buf + off;
        size_t len = strlen(a);
        off += len + 1;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0 || strcmp(a, "--version") == 0)
            goto out;
        if (is_file_flag(a)) {
            char *eq = strchr(a, '=');
            if (eq != NULL) {
                const char *fx = fixture(eq[1]);
                size_t n = (size_t)(eq - a) + 1 + strlen(fx) + 1;
                char *joined = sb_malloc(n);
                snprintf(joined, n, "%.*s=%s", (int)(eq - a), a, fx);
                owned[nowned++] = joined;
                argv[argc++] = joined;
            } else {
                argv[argc++] = a;
                if (off < size && argc < MAX_ARGS) {
                    char *v = buf + off;
                    off += strlen(v) + 1;
                    argv[argc++] = (char *)(uintptr_t)fixture(v[0]);
                }
            }
            continue;
        }
        argv[argc++] = a;
    }
    argv[argc] = NULL;

    sb_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    char err[512];
    int rc = sb_config_parse(&cfg, argc, argv, err, sizeof(err));
    if (rc == SB_OK) {
        fuzz_check(cfg.admin_token != NULL && cfg.admin_token[0] != '\0');
        fuzz_check(cfg.threads >= 1);
        fuzz_check(cfg.max_body_bytes > 0);
    } else {
        fuzz_check(rc == SB_ERR_INVALID);
        fuzz_check(err[0] != '\0' && strchr(err, '\n') == NULL);
    }
    sb_config_clear(&cfg);
    sb_config_clear(&cfg);
out:
    for (int i = 0; i < nowned; i++)
        sb_free(owned[i]);
    sb_free(buf);
    return 0;
}
