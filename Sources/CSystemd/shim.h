#ifndef CAID_CSYSTEMD_SHIM_H
#define CAID_CSYSTEMD_SHIM_H
// caid passes CODE_FILE/CODE_LINE/CODE_FUNC itself (from swift-log), so the header must not add its own.
#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#endif
