/*
 * procstat.c — the process_* series, the same names and meanings as the official
 * Prometheus client libraries, so dashboards and alerts written for any exporter work.
 *
 * Everything is read at scrape time from the kernel (getrusage, getrlimit, /proc): no
 * state, no thread, nothing to initialise. The start time is the kernel's (boot time
 * from /proc/stat plus the process's start tick), not the first scrape.
 *
 * Never: report a value it could not read (the series is omitted instead).
 */
#include "switchboard/procstat.h"

#include <dirent.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void gauge(struct evbuffer *out, const char *name, const char *type, const char *help,
                  double value)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name,
                        value);
}

static int read_statm(long *vm_pages, long *rss_pages)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    int n = fscanf(f, "%ld %ld", vm_pages, rss_pages);
    fclose(f);
    return n == 2 ? 0 : -1;
}

static int count_fds(long *n)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    long c = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            c++;
    closedir(d);
    *n = c - 1; /* the directory stream's own descriptor */
    return 0;
}

/* Seconds since the epoch at which this process started. */
static int start_time(double *out)
{
    long long btime = -1;
    char line[256];
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "btime %lld", &btime) == 1)
            break;
    fclose(f);
    if (btime < 0)
        return -1;
    char buf[1024];
    f = fopen("/proc/self/stat", "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Field 2 (comm) may hold spaces and parentheses: count fields after the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    unsigned long long ticks = 0;
    /* After ')': state (3) ... starttime is field 22, the 20th after the parenthesis. */
    int field = 2;
    char *save = NULL;
    for (char *tok = strtok_r(p + 1, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
        if (++field == 22) {
            if (sscanf(tok, "%llu", &ticks) != 1)
                return -1;
            long hz = sysconf(_SC_CLK_TCK);
            if (hz <= 0)
                return -1;
            *out = (double)btime + (double)ticks / (double)hz;
            return 0;
        }
    }
    return -1;
}

void sb_procstat_render(struct evbuffer *out)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        gauge(out, "process_cpu_seconds_total", "counter",
              "Total user and system CPU time spent in seconds.",
              (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                  (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    long vm, rss;
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0 && read_statm(&vm, &rss) == 0) {
        gauge(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
              (double)vm * (double)page);
        gauge(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
              (double)rss * (double)page);
    }
    long fds;
    if (count_fds(&fds) == 0)
        gauge(out, "process_open_fds", "gauge", "Number of open file descriptors.", (double)fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        gauge(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
              (double)rl.rlim_cur);
    double st;
    if (start_time(&st) == 0)
        gauge(out, "process_start_time_seconds", "gauge",
              "Start time of the process since unix epoch in seconds.", st);
}
