/* Fuzz target: llepd's config file parser, its command-line parser and the strict number
 * parsers, all of which read text from outside.
 *
 * The input is parsed as a config file; then its lines become argv for the command-line
 * parser (without --config, which would read files named by the input); then each line goes
 * through every number parser, and each KEY=VALUE line through the llepctl setting parser. Crashes, sanitizer reports, leaks, or an error without a
 * message are bugs. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "parse-number.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_ARGS 64

static void check_message(int r, const char *err) {
    if (r < 0 && err[0] == '\0')
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512] = "", *text, *argv[MAX_ARGS + 2];
    llep_config c;
    int argc = 1, r;

    llep__config_init(&c);
    r = llep__config_parse_text(&c, "fuzz.conf", (const char *)data, size, err, sizeof(err));
    check_message(r, err);
    llep__config_fini(&c);

    /* Lines as arguments; a NUL ends an argument early, as it would in a real argv. */
    text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    argv[0] = (char *)"llepd";
    for (char *line = text, *next; line && argc <= MAX_ARGS; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        argv[argc++] = line;
    }
    argv[argc] = NULL;
    for (int i = 1; i < argc; i++)
        if (strstr(argv[i], "config"))
            goto numbers;
    llep__config_init(&c);
    err[0] = '\0';
    r = llep__config_parse_args(&c, argc, argv, err, sizeof(err));
    check_message(r, err);
    llep__config_fini(&c);

numbers:
    for (int i = 1; i < argc; i++) {
        uint64_t u64;
        uint32_t u32;
        double d;

        if (llep__parse_u64(argv[i], &u64) == 0 && llep__parse_u32(argv[i], &u32) == 0 &&
            u64 != u32)
            abort();
        if (llep__parse_double(argv[i], &d) == 0 && !isfinite(d))
            abort();   /* NaN or infinity got through */
        (void)llep__parse_size(argv[i], &u64);
    }
    /* llepctl set KEY=VALUE, split at the first '='. */
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '='), buf[64];
        llep_setting st;

        if (!eq)
            continue;
        *eq = '\0';
        err[0] = '\0';
        r = llep__setting_parse(argv[i], eq + 1, &st, err, sizeof(err));
        check_message(r, err);
        if (r == 0)
            llep__setting_format(&st, buf, sizeof(buf));
    }
    free(text);
    return 0;
}
