#ifndef CAID_CMALLOC_SHIM_H
#define CAID_CMALLOC_SHIM_H

// glibc's allocator controls, which the Glibc module does not export (malloc.h).
#include <malloc.h>

/// Returns the heap's free pages to the kernel (glibc malloc_trim(3)); 1 when some memory was released.
static inline int caid_release_free_heap(void) {
    return malloc_trim(0);
}

#endif
