#ifndef CAID_CFUSE3_SHIM_H
#define CAID_CFUSE3_SHIM_H
// The libfuse 3.12 API (Debian 12 ships 3.14); must precede the include.
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#include <sys/mount.h>

// Function-like macros are not imported into Swift; these wrappers keep a libfuse upgrade from breaking the build.
static inline int caid_fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *config) {
    return fuse_session_loop_mt(se, config);
}

static inline struct fuse_session *caid_fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *ops,
                                                          size_t size, void *userdata) {
    return fuse_session_new(args, ops, size, userdata);
}

// Lazy detach of a stale mount (its daemon is gone).
static inline int caid_umount_detach(const char *target) {
    // Never through a link: a local user may have replaced the mount point with one.
    return umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW);
}

// fusectl, where a FUSE connection can be aborted (/sys/fs/fuse/connections/<dev>/abort).
static inline int caid_mount_fusectl(const char *target) {
    return mount("fusectl", target, "fusectl", 0, NULL);
}
#endif
