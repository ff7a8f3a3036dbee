/* What the command-line tools say to people on errors, written once: "PROG: message", and for
 * usage errors the hint to --help (exit code 2 is the caller's to return). */
#ifndef LLEP_TOOLS_CLI_H
#define LLEP_TOOLS_CLI_H

#include <stdarg.h>

/* Prints "prog: <message>\n" to stderr; with help_hint also "Try 'prog --help'.\n". */
void llep__cli_vsay(const char *prog, int help_hint, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* The same from a variadic call; returns code, so that a failure site reads
 * `return llep__cli_fail(prog, 1, EXIT_USAGE, "...", ...)`. */
int llep__cli_fail(const char *prog, int help_hint, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
