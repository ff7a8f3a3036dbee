/* Error lines of the command-line tools (cli.h). */
#include "cli.h"

#include <stdio.h>

void llep__cli_vsay(const char *prog, int help_hint, const char *fmt, va_list ap) {
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    if (help_hint)
        fprintf(stderr, "Try '%s --help'.\n", prog);
}

int llep__cli_fail(const char *prog, int help_hint, int code, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    llep__cli_vsay(prog, help_hint, fmt, ap);
    va_end(ap);
    return code;
}
