/* Growing arrays (grow.h). */
#include "grow.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int llep__grow(void *arrp, size_t *cap, size_t need, size_t size, size_t first) {
    void *p;
    size_t n = *cap ? *cap : (first ? first : 1);

    if (need <= *cap)
        return 0;
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return -EOVERFLOW;
        n *= 2;
    }
    if (size && n > SIZE_MAX / size)
        return -EOVERFLOW;
    /* The pointer is read and written through memcpy: arrp is a T ** of any object type. */
    memcpy(&p, arrp, sizeof(p));
    p = realloc(p, n * size);
    if (!p)
        return -ENOMEM;
    memcpy(arrp, &p, sizeof(p));
    *cap = n;
    return 0;
}
