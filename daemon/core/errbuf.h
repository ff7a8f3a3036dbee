/* Error messages into a caller's buffer, the one way every module reports why a call failed
 * (the message beside the negative errno that the call returns). */
#ifndef LLEP_ERRBUF_H
#define LLEP_ERRBUF_H

#include <stdarg.h>
#include <stddef.h>

/* Formats the message into err (when err is not NULL and errlen > 0; truncated to fit) and
 * returns r, so that a failure site reads `return llep__errf(err, errlen, -EINVAL, "...")`. */
int llep__errf(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The same with a va_list, for modules that wrap it around their own buffer. */
int llep__verrf(char *err, size_t errlen, int r, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

#endif
