/* Error messages into a caller's buffer (errbuf.h). */
#include "errbuf.h"

#include <stdio.h>

int llep__verrf(char *err, size_t errlen, int r, const char *fmt, va_list ap) {
    if (err && errlen)
        vsnprintf(err, errlen, fmt, ap);
    return r;
}

int llep__errf(char *err, size_t errlen, int r, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    llep__verrf(err, errlen, r, fmt, ap);
    va_end(ap);
    return r;
}
