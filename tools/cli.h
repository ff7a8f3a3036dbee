/* What the command-line tools say to people on errors, written once: "PROG: message", and for
 * usage errors the hint to --help (exit code 2 is the caller's to return). */
#ifndef LLEP_TOOLS_CLI_H
#define LLEP_TOOLS_CLI_H

#include <stdarg.h>

/* Prints "prog: <message>\n" to stderr; with help_hint also "Try 'prog --help'.\n". */
void llep__cli_vsay(const char *prog, int help_hint, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#endif
