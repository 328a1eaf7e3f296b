#ifndef CAID_CSYSTEMD_SHIM_H
#define CAID_CSYSTEMD_SHIM_H
// caid passes CODE_FILE/CODE_LINE/CODE_FUNC itself (from swift-log), so the header must not add its own.
#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <sys/prctl.h>
#include <sys/resource.h>

// prctl is variadic, which Swift does not import; setrlimit's resource type differs with _GNU_SOURCE.
// Turns core dumps off for this process: RLIMIT_CORE 0 (soft and hard), then not dumpable.
// Sets *limited and *undumpable to 1 for each call that succeeded.
static inline void caid_disable_core_dumps(int *limited, int *undumpable) {
    struct rlimit none = { 0, 0 };
    *limited = setrlimit(RLIMIT_CORE, &none) == 0;
    *undumpable = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0;
}
#endif
