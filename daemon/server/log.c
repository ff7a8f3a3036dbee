/* Logging to stderr, journal-aware. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static _Atomic int max_level = LLEP_LOG_NOTICE;
static int journal;

/* $JOURNAL_STREAM is "device:inode" of the stream systemd connected; it only means the
 * journal if stderr is still that stream (a shell started from a unit inherits the variable). */
static int stderr_is_journal(void) {
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;

    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void llep__log_init(enum llep_log_level level) {
    journal = stderr_is_journal();
    llep__log_set_level(level);
}

void llep__log_set_level(enum llep_log_level level) {
    atomic_store(&max_level, (int)level);
}

enum llep_log_level llep__log_get_level(void) {
    return (enum llep_log_level)atomic_load(&max_level);
}

void llep__log(enum llep_log_level level, const char *fmt, ...) {
    char line[1024];
    int n;
    va_list ap;

    if ((int)level > atomic_load(&max_level))
        return;
    if (journal)
        n = snprintf(line, sizeof(line), "<%d>", (int)level);
    else
        n = snprintf(line, sizeof(line), "llepd: %s: ", llep__log_level_name(level));
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = m < 0 ? n : n + m;
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    /* One write(2) per line, so lines from several threads never interleave. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
