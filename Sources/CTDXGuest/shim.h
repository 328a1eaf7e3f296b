// The out-of-tree TDX_CMD_EXTEND_RTMR ioctl of /dev/tdx_guest, for kernels before Linux 6.16's sysfs RTMR files.
// The request layout is the same in every tree that has it (data first, the RTMR index last, 49 bytes); the ioctl
// number is not: intel/tdx include/uapi/linux/tdx-guest.h defines it _IOW('T', 3, ...), the Anolis cloud-kernel
// fork and Intel DCAP's default tdx_attest build _IOR('T', 3, ...). Both are tried, _IOW first.
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/ioctl.h>

struct caid_tdx_extend_rtmr_req {
    uint8_t data[48];
    uint8_t index;
};

/// Extends RTMR `index` with the 48 bytes at `digest`. Returns 0, or the errno of the last attempt.
static inline int caid_tdx_extend_rtmr(int fd, const uint8_t *digest, uint8_t index) {
    struct caid_tdx_extend_rtmr_req request;
    memcpy(request.data, digest, sizeof request.data);
    request.index = index;
    if (ioctl(fd, _IOW('T', 3, struct caid_tdx_extend_rtmr_req), &request) == 0) return 0;
    if (errno != ENOTTY && errno != EINVAL) return errno;
    if (ioctl(fd, _IOR('T', 3, struct caid_tdx_extend_rtmr_req), &request) == 0) return 0;
    return errno;
}
