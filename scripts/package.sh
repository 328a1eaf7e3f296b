#!/usr/bin/env bash
# Builds the caid packages: dist/caid_<version>_amd64.deb (dpkg-deb) and dist/caid-<version>-1.x86_64.rpm
# (rpmbuild, from Debian's rpm package), and prints their paths, one a line, last.
#
# Usage: scripts/package.sh [--debug]
#   (default)  a release build (swift build -c release), 10-16 minutes from cold on 2 cores.
#   --debug    the debug build, for CI's VM test: it reuses the objects `swift build --build-tests` compiled and
#              only links them again, with the Swift runtime statically (see docs/operations.md, "Building the
#              packages").
#
# Either way the Swift runtime is linked statically (-static-stdlib, what --static-swift-stdlib passes; see below
# why not that flag itself), so the binary needs only the C
# libraries the packages declare. Each package holds the binary (/usr/bin/caid), the unit
# (/usr/lib/systemd/system/caid.service), /usr/lib/tmpfiles.d/caid.conf (/run/caid-model, the parent to bind into
# containers: docs/operations.md), /etc/caid/cai.env.example (a conffile, mode 0600), the docs the unit's
# Documentation= names (/usr/share/doc/caid), man pages made by ArgumentParser's generate-manual plugin, and bash,
# zsh and fish completions. Installing runs `systemctl daemon-reload` and starts nothing.
#
# Every swift command holds /tmp/swift-build.lock, as everything that builds on this machine must.
set -euo pipefail
trap 'echo "package.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

configuration=release
case "${1:-}" in
    "") ;;
    --debug) configuration=debug ;;
    *) echo "usage: $0 [--debug]" >&2; exit 2 ;;
esac

lock=/tmp/swift-build.lock
version=$(sed -n 's/.*static let current = "\(.*\)".*/\1/p' Sources/CaidCore/CaidVersion.swift)
[ -n "$version" ] || { echo "cannot read the version from Sources/CaidCore/CaidVersion.swift" >&2; exit 1; }
for tool in dpkg-deb rpmbuild objdump gzip; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

start=$(date +%s)
# The objects are built as usual, then linked again into a binary of our own with -static-stdlib, using SwiftPM's
# own link command for caid (from .build/<configuration>.yaml). Why not `swift build --static-swift-stdlib`:
# - after a normal build it re-runs every swiftc command, since SwiftPM adds -static-stdlib to each compile and
#   llbuild sees new commands, and the next `swift build --build-tests` re-runs them all once more (measured:
#   docs/operations.md, "Building the packages"); -static-stdlib only matters to the link;
# - with Swift 6.3.1 its link fails: libFoundation.a and libFoundationInternationalization.a need CoreFoundation
#   and _FoundationICU, which come earlier on the command line than they are needed, so they are named again last.
echo "== building caid $version ($configuration objects, linked with the Swift runtime statically)" >&2
flock "$lock" swift build -c "$configuration" --product caid >&2
binary="$stage/caid"
python3 - "$binary" "$configuration" > "$stage/link-args" <<'PY'
import json, re, sys
binary, configuration = sys.argv[1], sys.argv[2]
text = open(f".build/{configuration}.yaml").read()
# The product caid's own: "C.caid-<triple>-<configuration>.exe", not caid-fuzz's ("C.caid-fuzz-…").
block = re.search(r'^  "C\.caid-[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+-' + configuration + r'\.exe":\n(?:    .*\n)*?    args: (\[.*\])$', text, re.M)
if not block:
    sys.exit(f"no link command for caid in .build/{configuration}.yaml")
args = [a for a in json.loads(block.group(1)) if a != "-static-stdlib"]
out = args.index("-o")
args[out + 1] = binary
args.insert(out, "-static-stdlib")
args += ["-lFoundation", "-lFoundationInternationalization", "-lFoundationEssentials", "-lCoreFoundation",
         "-l_FoundationICU", "-l_FoundationCShims", "-l_FoundationCollections"]
print("\0".join(args), end="")
PY
# NUL-separated: no argument can hold a NUL, and some hold $ORIGIN.
mapfile -d '' -t link_args < "$stage/link-args"
flock "$lock" "${link_args[@]}" >&2
echo "== built in $(( $(date +%s) - start )) s: $binary" >&2

# The binary must not need the toolchain: no libswift*, no libFoundation*, no lib_FoundationICU.
if objdump -p "$binary" | awk '$1 == "NEEDED" {print $2}' | grep -E '^(libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime)'; then
    echo "$binary still needs the Swift runtime (above); -static-stdlib did not take" >&2
    exit 1
fi
needed=$(objdump -p "$binary" | awk '$1 == "NEEDED" {print $2}' | sort)
# The glibc floor: the highest GLIBC_x.y symbol version the binary asks for.
glibc_floor=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
# Likewise libfuse3: the fuse_loop_cfg_* API caid uses came with 3.12 (FUSE_3.12).
fuse_floor=$(objdump -T "$binary" | grep -o 'FUSE_[0-9][0-9.]*' | sed 's/FUSE_//' | sort -V | tail -1)
echo "== needs: $(echo $needed); glibc >= $glibc_floor, libfuse3 >= $fuse_floor" >&2

root="$stage/root"
install -D -m 0755 "$binary" "$root/usr/bin/caid"
install -D -m 0644 systemd/caid.service "$root/usr/lib/systemd/system/caid.service"
install -D -m 0600 etc/caid/cai.env.example "$root/etc/caid/cai.env.example"
install -D -m 0644 systemd/caid-tmpfiles.conf "$root/usr/lib/tmpfiles.d/caid.conf"
for doc in README.md docs/operations.md docs/architecture.md docs/security.md docs/benchmarks.md; do
    install -D -m 0644 "$doc" "$root/usr/share/doc/caid/$(basename "$doc")"
done

# Man pages: ArgumentParser's generate-manual plugin, built with the same configuration (so --debug reuses the
# debug objects); its output directory is the plugin's own under .build.
echo "== man pages (swift package plugin generate-manual)" >&2
flock "$lock" swift package plugin --allow-writing-to-package-directory generate-manual --configuration "$configuration" >&2
manual_dir=.build/plugins/GenerateManual/outputs/caid
[ -f "$manual_dir/caid.1" ] || { echo "generate-manual made no $manual_dir/caid.1" >&2; exit 1; }
for page in "$manual_dir"/*.1; do
    install -D -m 0644 "$page" "$root/usr/share/man/man1/$(basename "$page")"
    gzip -9n "$root/usr/share/man/man1/$(basename "$page")"
done

# Shell completions, from the binary itself.
"$binary" --generate-completion-script bash > "$stage/caid.bash"
"$binary" --generate-completion-script zsh > "$stage/_caid"
"$binary" --generate-completion-script fish > "$stage/caid.fish"
install -D -m 0644 "$stage/caid.bash" "$root/usr/share/bash-completion/completions/caid"
install -D -m 0644 "$stage/caid.fish" "$root/usr/share/fish/vendor_completions.d/caid.fish"

mkdir -p dist
deb="dist/caid_${version}_amd64.deb"
rpm="dist/caid-${version}-1.x86_64.rpm"

# ---- .deb ----
# Dependencies: the Debian package of each library the binary links (as this Debian build host resolves it);
# libc6 at the glibc floor.
deb_depends="libc6 (>= $glibc_floor)"
for lib in $needed; do
    case "$lib" in libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) continue ;; esac
    # awk reads to the end (no early exit): an exit would make ldconfig die of SIGPIPE, and pipefail fail the build.
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !found {print $NF; found = 1}')
    [ -n "$path" ] || { echo "cannot find $lib on this host to name its package" >&2; exit 1; }
    pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -1 | cut -d: -f1) || true
    [ -n "$pkg" ] || pkg=$(dpkg -S "$path" | head -1 | cut -d: -f1)
    case "$lib" in libfuse3.so.*) pkg="$pkg (>= $fuse_floor)" ;; esac
    deb_depends="$deb_depends, $pkg"
done
deb_root="$stage/deb"
cp -a "$root" "$deb_root"
install -D -m 0644 "$stage/_caid" "$deb_root/usr/share/zsh/vendor-completions/_caid"
mkdir -p "$deb_root/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$deb_root" | cut -f1)
cat > "$deb_root/DEBIAN/control" <<EOF
Package: caid
Version: $version
Architecture: amd64
Maintainer: caid maintainers <caid@localhost>
Installed-Size: $installed_size
Depends: $deb_depends
Recommends: fuse3, iptables
Section: admin
Priority: optional
Homepage: https://github.com/caid/caid
Description: Confidential AI daemon: attestation, model key, model mount, attested gateway
 caid replaces the five containers of Alibaba Cloud's Confidential AI stack with one systemd service that reads
 the same cai.env: it attests the host to Trustee, fetches the model key, downloads the encrypted model from OSS,
 mounts it decrypted and read-only with FUSE, and serves it behind an attested gateway TNG clients can reach.
 .
 Installing starts nothing: copy /etc/caid/cai.env.example to /etc/caid/cai.env (mode 0600), fill it in,
 run caid check-config, then systemctl enable --now caid.
EOF
echo "/etc/caid/cai.env.example" > "$deb_root/DEBIAN/conffiles"
cat > "$deb_root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# Makes systemd read the new unit and creates /run/caid-model (tmpfiles.d); starts, enables and restarts nothing
# (the operator does, once cai.env is filled in).
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    systemd-tmpfiles --create caid.conf || true
fi
exit 0
EOF
cat > "$deb_root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# On removal (not on upgrade) stop caid first, so its mount and nat rules go before its binary does.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now caid.service >/dev/null 2>&1 || true
fi
exit 0
EOF
cat > "$deb_root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
exit 0
EOF
chmod 0755 "$deb_root/DEBIAN/postinst" "$deb_root/DEBIAN/prerm" "$deb_root/DEBIAN/postrm"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$deb_root" "$deb" >&2

# ---- .rpm ----
# Dependencies by soname, as RPM distributions (Alibaba Cloud Linux 3, its RHEL 8 base) provide them, and glibc
# by the GLIBC_ symbol version the floor needs: the same names rpm's own dependency generator would write.
rpm_requires="libc.so.6(GLIBC_${glibc_floor})(64bit), libfuse3.so.3(FUSE_${fuse_floor})(64bit)"
for lib in $needed; do rpm_requires="$rpm_requires, ${lib}()(64bit)"; done
rpm_top="$stage/rpm"
mkdir -p "$rpm_top"/{BUILD,RPMS,SPECS,BUILDROOT}
rpm_root="$stage/rpm-root"
cp -a "$root" "$rpm_root"
install -D -m 0644 "$stage/_caid" "$rpm_root/usr/share/zsh/site-functions/_caid"
files=$(cd "$rpm_root" && find . -type f | sed 's|^\.||' | sort | grep -v '^/etc/caid/cai.env.example$')
cat > "$rpm_top/SPECS/caid.spec" <<EOF
Name: caid
Version: $version
Release: 1
Summary: Confidential AI daemon: attestation, model key, model mount, attested gateway
License: Apache-2.0
BuildArch: x86_64
AutoReqProv: no
Requires: $rpm_requires
Recommends: fuse3, iptables
%define _build_id_links none
%define __os_install_post %{nil}
%define __strip /bin/true
# gzip: xz takes minutes over a 200 MB binary; CI packages the debug build every run.
%define _binary_payload w6.gzdio

%description
caid replaces the five containers of Alibaba Cloud's Confidential AI stack with one systemd service that reads the
same cai.env. Installing starts nothing: copy /etc/caid/cai.env.example to /etc/caid/cai.env (mode 0600), fill it
in, run caid check-config, then systemctl enable --now caid.

%install
mkdir -p %{buildroot}
cp -a $rpm_root/. %{buildroot}/

%post
# Makes systemd read the new unit and creates /run/caid-model (tmpfiles.d); starts, enables and restarts nothing.
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; systemd-tmpfiles --create caid.conf || true; fi

%preun
# On removal (not on upgrade) stop caid first, so its mount and nat rules go before its binary does.
if [ \$1 -eq 0 ] && [ -d /run/systemd/system ]; then systemctl disable --now caid.service >/dev/null 2>&1 || true; fi

%postun
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi

%files
%dir /etc/caid
%config(noreplace) %attr(0600, root, root) /etc/caid/cai.env.example
$files
EOF
rpmbuild --quiet -bb --define "_topdir $rpm_top" --define "_rpmdir $rpm_top/RPMS" "$rpm_top/SPECS/caid.spec" >&2
mv "$rpm_top/RPMS/x86_64/caid-${version}-1.x86_64.rpm" "$rpm"

echo "== packages (binary needs $(echo $needed), glibc >= $glibc_floor, libfuse3 >= $fuse_floor)" >&2
echo "$deb"
echo "$rpm"
