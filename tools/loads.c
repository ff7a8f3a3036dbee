/* Parsing per-expert loads. This reads outside input, so it is strict (every token must be a
 * whole unsigned integer), bounded (max loads, token length) and fuzzed (tests/fuzz-loads.c). */
#include "loads.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse-number.h"
#include "grow.h"

/* Longer than any 64-bit decimal with leading zeros a person would write. */
#define MAX_TOKEN 64

static int failf(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int failf(char *err, size_t errlen, int r, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return r;
}

int llep__loads_add(llep_loads *l, const char *tok, char *err, size_t errlen) {
    uint64_t v;
    int r = llep__parse_u64(tok, &v);

    if (r == -ERANGE)
        return failf(err, errlen, -ERANGE, "load '%.*s' does not fit in 64 bits", MAX_TOKEN, tok);
    if (r < 0 && tok[0] == '-')
        return failf(err, errlen, -EINVAL, "load '%.*s' is negative", MAX_TOKEN, tok);
    if (r < 0)
        return failf(err, errlen, -EINVAL, "load '%.*s' is not a non-negative integer",
                     MAX_TOKEN, tok);
    if (l->max && l->n >= l->max)
        return failf(err, errlen, -E2BIG, "more than %zu loads (at most one per expert)",
                     l->max);
    if (llep__grow(&l->v, &l->cap, l->n + 1, sizeof(*l->v), 64) < 0)
        return failf(err, errlen, -ENOMEM, "out of memory");
    l->v[l->n++] = v;
    return 0;
}

static int is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int llep__loads_parse(llep_loads *l, const char *text, size_t len, char *err, size_t errlen) {
    char tok[MAX_TOKEN + 1];
    size_t line = 1;

    for (size_t i = 0; i < len;) {
        if (is_blank(text[i])) {
            line += text[i] == '\n';
            i++;
            continue;
        }
        size_t start = i;
        while (i < len && !is_blank(text[i]))
            i++;
        size_t n = i - start;
        if (memchr(text + start, '\0', n))
            return failf(err, errlen, -EINVAL, "line %zu: NUL byte in the loads", line);
        if (n > MAX_TOKEN)
            return failf(err, errlen, -EINVAL, "line %zu: '%.20s...' is too long to be a load",
                         line, text + start);
        memcpy(tok, text + start, n);
        tok[n] = '\0';
        char why[160];
        int r = llep__loads_add(l, tok, why, sizeof(why));
        if (r < 0)
            return failf(err, errlen, r, "line %zu: %s", line, why);
    }
    return 0;
}

/* Loads files are small (one number per expert), so reading one whole is fine; the limit
 * keeps a wrong path (a device, a huge log) from eating memory. */
#define MAX_FILE (64u << 20)

int llep__loads_read_file(llep_loads *l, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0;
    int r = 0;

    if (!f)
        return failf(err, errlen, -errno, "%s: %s", path, strerror(errno));
    buf = malloc(MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        return failf(err, errlen, -ENOMEM, "out of memory");
    }
    len = fread(buf, 1, MAX_FILE + 1, f);
    if (ferror(f))
        r = failf(err, errlen, -EIO, "%s: read error", path);
    else if (len > MAX_FILE)
        r = failf(err, errlen, -EFBIG, "%s: larger than %u bytes", path, MAX_FILE);
    fclose(f);
    if (r == 0) {
        char why[200];
        r = llep__loads_parse(l, buf, len, why, sizeof(why));
        if (r < 0)
            failf(err, errlen, r, "%s: %s", path, why);
    }
    free(buf);
    return r;
}

void llep__loads_free(llep_loads *l) {
    free(l->v);
    memset(l, 0, sizeof(*l));
}
