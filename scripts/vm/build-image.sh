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
packages=$(grep -v '^#' "$here/packages.txt" | tr -s ' \n' ' ')

# Built in /dev/shm when it has room: dpkg syncs every file it unpacks, which on a disk costs minutes.
base=${out%/}
if [ "$(df --output=avail -k /dev/shm 2>/dev/null | tail -1)" -gt $((3 << 20)) ] 2>/dev/null; then base=/dev/shm/caid-vm-image; fi
work=$(mktemp -d "$base.tmp.XXXXXX")
root=$work/root
cleanup() {
    for m in dev/pts dev sys proc; do mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true; done
    rm -rf "$work"
}
trap cleanup EXIT

start=$(date +%s)
echo "== debootstrap bookworm ($mirror)"
debootstrap --variant=minbase --include=systemd-sysv bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" "$root/debootstrap/debootstrap.log" >&2; echo "build-image: debootstrap failed" >&2; exit 1; }
echo "   debootstrap took $(( $(date +%s) - start )) s"

# A small initramfs (the guest's disks are virtio, its root ext4), in place before the kernel's postinst makes it.
mkdir -p "$root/etc/initramfs-tools/conf.d"
echo "MODULES=list" > "$root/etc/initramfs-tools/conf.d/vmtest.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' >> "$root/etc/initramfs-tools/modules"
echo "== apt-get install in the guest: $packages"
mount -t proc proc "$root/proc"; mount -t sysfs sys "$root/sys"; mount --bind /dev "$root/dev"; mount --bind /dev/pts "$root/dev/pts"
# apt resolves the dependencies (debootstrap --include does not handle alternatives and virtual packages).
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get -qq update
# shellcheck disable=SC2086  # the package list is split on purpose
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-unsafe-io $packages > "$work/apt.log" 2>&1 \
    || { tail -30 "$work/apt.log" >&2; echo "build-image: apt-get install failed" >&2; exit 1; }
for m in dev/pts dev sys proc; do umount "$root/$m"; done
echo "   packages installed after $(( $(date +%s) - start )) s"

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
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
# 3 GiB sparse: the root takes ~700 MB, the rest is room for the .deb's install, the model cache and the journal.
size_mb=$(( $(du -sm "$root" | cut -f1) + 2300 ))
mkdir -p "$out"
mkfs.ext4 -q -F -L vmroot -d "$root" "$out/rootfs.img.tmp" "${size_mb}M" >/dev/null
mv "$work/vmlinuz" "$work/initrd.img" "$out/"
mv "$out/rootfs.img.tmp" "$out/rootfs.img"
echo "   image built in $(( $(date +%s) - start )) s: $(du -sh --apparent-size "$out/rootfs.img" | cut -f1) ($(du -sh "$out/rootfs.img" | cut -f1) used)"
