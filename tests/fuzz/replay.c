/*
 * replay.c — a standalone main() for the fuzz targets: runs each file given (or every
 * regular file below each directory given, recursively, in sorted order) once through
 * LLVMFuzzerTestOneInput and reports how many ran.
 *
 * It lets the corpus be a regression suite without libFuzzer: `make fuzz-replay` links
 * every target with this file using the normal compiler and flags, and replays all of
 * tests/corpus/ through each of them. A crash, an abort from fuzz_check() or a sanitizer
 * report (in a sanitizer build) ends the run with a non-zero status and names the file
 * being replayed (REPLAY_VERBOSE=1 also lists every file as it starts). Files are read into buffers
 * of exactly their size so an over-read shows up under AddressSanitizer. Exits 0 when every file
 * ran, 2 on a usage or I/O error.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Under AddressSanitizer its own handlers must stay: they print the report. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static unsigned long g_files;
static const char *g_current; /* the file being replayed, for the crash handler */
static int g_verbose;

/* Names the culprit, then lets the signal do what it would have done. Sanitizers install
 * their own handlers and report the stack; this one serves plain builds. */
static void on_fatal(int sig)
{
    if (g_current != NULL) {
        static const char pre[] = "replay: crashed while replaying ";
        ssize_t w = write(2, pre, sizeof(pre) - 1);
        w = write(2, g_current, strlen(g_current));
        w = write(2, "\n", 1);
        (void)w;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = sb_malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            buf = sb_realloc(buf, cap);
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        sb_free(buf);
        fprintf(stderr, "replay: cannot read %s\n", path);
        return -1;
    }
    uint8_t *exact = sb_malloc(len ? len : 1);
    memcpy(exact, buf, len);
    sb_free(buf);
    if (g_verbose)
        fprintf(stderr, "replay: %s\n", path);
    g_current = path;
    LLVMFuzzerTestOneInput(exact, len);
    g_current = NULL;
    sb_free(exact);
    g_files++;
    return 0;
}

static int run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) == -1) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return S_ISREG(st.st_mode) ? run_file(path) : 0;
    DIR *d = opendir(path);
    if (d == NULL) {
        fprintf(stderr, "replay: cannot list %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = 0, cap = 64;
    char **names = sb_malloc(cap * sizeof(*names));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap *= 2;
            names = sb_realloc(names, cap * sizeof(*names));
        }
        size_t l = strlen(path) + strlen(e->d_name) + 2;
        names[n] = sb_malloc(l);
        snprintf(names[n], l, "%s/%s", path, e->d_name);
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_names);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = run_path(names[i]);
        sb_free(names[i]);
    }
    sb_free(names);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize != NULL)
        LLVMFuzzerInitialize(&argc, &argv);
    g_verbose = getenv("REPLAY_VERBOSE") != NULL;
    if (!SANITIZED) {
        static const int fatal[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL};
        for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
            signal(fatal[i], on_fatal);
    }
    int rc = 0;
    for (int i = 1; i < argc && rc == 0; i++)
        rc = run_path(argv[i]);
    fprintf(stderr, "%s: %lu file(s) replayed%s\n", argv[0], g_files, rc ? ", I/O error" : "");
    return rc ? 2 : 0;
}
