/* Growing arrays: the one way llep makes room in an array it appends to. */
#ifndef LLEP_GROW_H
#define LLEP_GROW_H

#include <stddef.h>

/* Makes room for `need` elements of `size` bytes in the array whose address is arrp (a T **
 * cast to void *) and whose capacity is *cap: when need > *cap the capacity doubles, from
 * `first` when it is 0, until it fits. Returns 0, or -ENOMEM with the array and *cap as they
 * were (or -EOVERFLOW when the bytes do not fit a size_t). */
int llep__grow(void *arrp, size_t *cap, size_t need, size_t size, size_t first);

#endif
