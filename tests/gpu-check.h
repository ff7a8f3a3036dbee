/* What the GPU programs (tests/gpu/, no Check) share besides fixtures.h: a failure is printed
 * and counted, and the run ends with one line saying how many there were. Include it once, in
 * the program's only source file. */
#ifndef LLEP_TEST_GPU_CHECK_H
#define LLEP_TEST_GPU_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int failures;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    fputs("FAIL: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    failures++;
}

/* "PASSED" or "FAILED" with the count; the program's exit status. */
static int finish(void) {
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}

#endif
