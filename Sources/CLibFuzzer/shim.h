#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver (compiler-rt FuzzerInterface.h). Only referenced when caid-fuzz is built with -DCAID_FUZZ and
// linked with -sanitize=fuzzer, which provides it.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));
