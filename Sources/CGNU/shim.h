#ifndef CAID_CGNU_SHIM_H
#define CAID_CGNU_SHIM_H

// GNU and Linux extensions of glibc that Swift's Glibc module does not export (they need _GNU_SOURCE or malloc.h).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>

/// Returns the heap's free pages to the kernel (glibc malloc_trim(3)); 1 when some memory was released.
static inline int caid_release_free_heap(void) {
    return malloc_trim(0);
}

/// Starts writing back the dirty pages of `length` bytes at `offset` of `fd` without waiting for them
/// (sync_file_range(2) with SYNC_FILE_RANGE_WRITE), so that a later fsync has little left to do. 0 on success.
static inline int caid_start_write_back(int fd, long long offset, long long length) {
    return sync_file_range(fd, (off64_t)offset, (off64_t)length, SYNC_FILE_RANGE_WRITE);
}

/// Names the calling thread as the kernel shows it (`top -H`, `perf`, /proc/self/task/*/comm; at most 15 bytes).
static inline int caid_set_thread_name(const char *name) {
    return pthread_setname_np(pthread_self(), name);
}

/// The calling thread's kernel name into `buffer` (at least 16 bytes). 0 on success.
static inline int caid_thread_name(char *buffer, size_t size) {
    return pthread_getname_np(pthread_self(), buffer, size);
}

#endif
