#!/usr/bin/env bash
# Builds the VM test's guest: a Debian 12 root filesystem (debootstrap, the packages in packages.txt) as a raw ext4
# image, plus the kernel and initramfs to boot it with qemu -kernel/-initrd. Usage (root):
#   scripts/vm/build-image.sh <output dir>
# Writes <dir>/rootfs.img, <dir>/vmlinuz, <dir>/initrd.img; nothing is left mounted (mkfs.ext4 -d, no loop devices).
# The guest has no network (qemu -nic none): everything the checks need is in the image or on the payload disk.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
mirror=${VM_MIRROR:-http://deb.debian.org/debian}
packages=$(grep -v '^#' "$here/packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')

work=$(mktemp -d "${out%/}.tmp.XXXXXX")
root=$work/root
cleanup() {
    # debootstrap mounts /proc and /sys inside the target while it runs; an interrupted run can leave them.
    for m in proc sys dev/pts dev; do mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "== debootstrap bookworm ($mirror): $packages"
start=$(date +%s)
# minbase: no recommends, no standard-priority tools; the list above is everything the guest runs.
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; echo "build-image: debootstrap failed" >&2; exit 1; }
echo "   debootstrap took $(( $(date +%s) - start )) s"

echo vmtest > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmtest\n' > "$root/etc/hosts"
# The root disk is a throwaway overlay, so no fsck; the payload disk (label vmtest) carries the checks and results.
cat > "$root/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,errors=remount-ro 0 0
LABEL=vmtest /vmtest ext4 defaults,nofail 0 0
EOF
mkdir -p "$root/vmtest"
install -m 0644 "$here/vmtest.service" "$root/etc/systemd/system/vmtest.service"
ln -sf /etc/systemd/system/vmtest.service "$root/etc/systemd/system/multi-user.target.wants/vmtest.service"
# Timers and units that only cost time in a short-lived guest (and would touch the network).
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    systemd-timesyncd.service getty@tty1.service serial-getty@ttyS0.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# Users of the non-root reader check: reader owns the model (CAID_MOUNT_OWNER), other must be refused.
chroot "$root" useradd -u 1001 -U -M -s /usr/sbin/nologin reader
chroot "$root" useradd -u 1002 -U -M -s /usr/sbin/nologin other
passwd_root=$(chroot "$root" passwd -d root 2>&1) || echo "build-image: $passwd_root" >&2
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages

cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
# 3 GiB sparse: the root takes ~700 MB, the rest is room for the .deb's install, the model cache and the journal.
size_mb=$(( $(du -sm "$root" | cut -f1) + 2300 ))
mkfs.ext4 -q -F -L vmroot -d "$root" "$work/rootfs.img" "${size_mb}M"
mkdir -p "$out"
mv "$work/rootfs.img" "$work/vmlinuz" "$work/initrd.img" "$out/"
echo "   image built in $(( $(date +%s) - start )) s: $(du -sh --apparent-size "$out/rootfs.img" | cut -f1) ($(du -sh "$out/rootfs.img" | cut -f1) used)"
