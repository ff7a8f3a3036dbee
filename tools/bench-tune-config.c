/* llep-bench --tune --write-config (bench-tune-config.h). */
#include "bench-tune-config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "config.h"

static const char *const tuned_keys[] = { "alpha", "lambda", "min-tokens", "replica-cache" };
#define NKEYS (sizeof(tuned_keys) / sizeof(tuned_keys[0]))

/* The tuned key a config line sets (as llepd reads it: blanks, '_' for '-'), or -1. */
static int line_key(const char *line, size_t len) {
    size_t i = 0, k0, k1;

    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == len || line[i] == '#')
        return -1;
    k0 = i;
    while (i < len && line[i] != '=' && line[i] != ' ' && line[i] != '\t')
        i++;
    k1 = i;
    for (size_t k = 0; k < NKEYS; k++) {
        const char *name = tuned_keys[k];
        size_t n = strlen(name), j = 0;
        if (k1 - k0 != n)
            continue;
        while (j < n && (line[k0 + j] == name[j] || (name[j] == '-' && line[k0 + j] == '_')))
            j++;
        if (j == n)
            return (int)k;
    }
    return -1;
}

/* Reads the whole file into a malloc()ed, NUL-terminated buffer; a missing file is empty. */
static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = llep__bench_calloc(LLEP_CONFIG_FILE_MAX + 1, 1);

    *len = 0;
    if (!f && errno == ENOENT)
        return buf;
    if (!f)
        llep__bench_die("--write-config: cannot read %s: %s", path, strerror(errno));
    *len = fread(buf, 1, LLEP_CONFIG_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        llep__bench_die("--write-config: cannot read %s", path);
    if (*len > LLEP_CONFIG_FILE_MAX)
        llep__bench_die("--write-config: %s is larger than a config file can be", path);
    buf[*len] = '\0';
    return buf;
}

/* The old text with each tuned key's first line replaced by its new value and later lines of
 * the same key dropped (llepd takes the last, which would undo the tuning); keys the file
 * lacks are appended. */
static void merge(FILE *out, const char *text, size_t len, char values[NKEYS][64]) {
    int done[NKEYS] = { 0 };

    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (text + i)) : len - i;
        int k = line_key(text + i, n);
        if (k < 0)
            fprintf(out, "%.*s\n", (int)n, text + i);
        else if (!done[k])
            fprintf(out, "%s = %s\n", tuned_keys[k], values[k]);
        if (k >= 0)
            done[k] = 1;
        i += n + 1;
    }
    for (size_t k = 0; k < NKEYS; k++)
        if (!done[k])
            fprintf(out, "%s = %s\n", tuned_keys[k], values[k]);
}

/* A new file beside path, checked with llepd's own parser, then renamed over it, so that a
 * crash leaves the old file or the new one and a file llepd would refuse is never
 * installed. */
void llep__bench_write_config(const char *path, double alpha, double lambda,
                              uint32_t min_tokens, bool cache) {
    char values[NKEYS][64], tmp[4096], err[512];
    size_t len;
    char *old = read_all(path, &len);
    struct stat st;
    mode_t mode = 0644;

    /* Shortest forms that read back the same. */
    for (int k = 0; k < 2; k++) {
        double v = k ? lambda : alpha;
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(values[k], sizeof(values[k]), "%.*g", prec, v);
            if (strtod(values[k], NULL) == v)
                break;
        }
    }
    snprintf(values[2], sizeof(values[2]), "%u", min_tokens);
    snprintf(values[3], sizeof(values[3]), "%s", cache ? "auto" : "off");
    if (stat(path, &st) == 0)
        mode = st.st_mode & 07777;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp))
        llep__bench_die("--write-config: the path is too long");
    int fd = mkstemp(tmp);
    if (fd < 0)
        llep__bench_die("--write-config: cannot create a file beside %s: %s", path,
                        strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f)
        llep__bench_die("--write-config: %s", strerror(errno));
    merge(f, old, len, values);
    int bad = fflush(f) != 0 || fchmod(fd, mode) != 0 || fsync(fd) != 0;
    bad |= fclose(f) != 0;
    free(old);
    llep_config c;
    llep__config_init(&c);
    int r = bad ? -EIO : llep__config_load_file(&c, tmp, err, sizeof(err));
    llep__config_fini(&c);
    if (r < 0) {
        unlink(tmp);
        llep__bench_die("--write-config: %s not changed: %s", path,
                        bad ? "cannot write the new file" : err);
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        llep__bench_die("--write-config: cannot replace %s: %s", path, strerror(e));
    }
    fprintf(stderr, "llep-bench: wrote alpha = %s, lambda = %s, min-tokens = %s, "
            "replica-cache = %s into %s\n", values[0], values[1], values[2], values[3], path);
}
