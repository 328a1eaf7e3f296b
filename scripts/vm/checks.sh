#!/bin/bash
# The VM test's checks, run as root inside the Debian 12 guest by vmtest.service (scripts/vm/vmtest.service) from
# the payload disk mounted at /vmtest, which also holds caid.deb, Tests/peers/ and the alibabacloud_oss_v2 module.
# Stage 1 installs the package, starts the test OSS and Trustee servers on loopback, runs every check, enables caid
# and reboots; stage 2 checks that caid came up on its own and powers off. Results: /vmtest/results.txt, one line
# per check: `PASS <name> <detail>` or `FAIL <name> <detail>`, `TIME <what> <seconds>`, and `END` when complete.
set -u
export LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_PAGER=
V=/vmtest
R=$V/results.txt
stage=$(cat $V/stage 2>/dev/null || echo 1)
plain=/srv/vmtest/plain
# The layout docs/operations.md gives for containers: the mount one level below a directory of its own
# (/run/caid-model, which the package's tmpfiles.d entry makes), and containers bind that directory rslave.
mnt=/run/caid-model/model
unit=caid
# Progress goes to the unit's stdout (the serial console) through fd 3, also from inside a check's captured output.
exec 3>&1
say() { echo "vmtest: $*" >&3; }
# Seconds from kernel start until multi-user.target was reached (systemd-analyze waits for this unit to finish).
boot_target_time() { python3 -c "import sys; print('%.1f' % (int(sys.argv[1]) / 1e6))" "$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"; }
record() { echo "$*" >> $R; sync $R; say "$*"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys,time;print('%.1f' % (time.time()-float(sys.argv[1])))" "$1"; }

# check <name> <function>: the function prints its detail and returns 0 for PASS.
only=$(cat $V/only 2>/dev/null || true)   # VM_ONLY on the host: run just these checks (while developing them)
check() {
    local name=$1 fn=$2 t0 out rc
    if [ -n "$only" ] && ! echo " $only " | grep -q " $name "; then return 0; fi
    t0=$(now)
    say "-- $name"
    out=$("$fn" 2>&1); rc=$?
    out=$(printf '%s' "$out" | tr '\n\t' '  ' | tr -s ' ' | cut -c1-400)
    if [ $rc = 0 ]; then record "PASS $name ($(elapsed "$t0") s) $out"; else
        record "FAIL $name ($(elapsed "$t0") s) $out"
        # What the unit and caid said meanwhile, on the console (the host keeps the serial log).
        journalctl -u $unit --since "@${t0%.*}" -o short-monotonic --no-pager 2>&1 | grep -v ': [A-Z_]*=\|effective configuration\|thread priority' \
            | tail -15 | cut -c1-220 | sed 's/^/vmtest:   journal: /' >&3
    fi
    return $rc
}
prop() { systemctl show -P "$2" "$1"; }
healthy() { caid health >/dev/null 2>&1; }
# wait_until <seconds> <command...>: polls every 0.5 s.
wait_until() {
    local limit=$1; shift
    local end=$(( $(date +%s) + limit ))
    while [ "$(date +%s)" -lt $end ]; do "$@" && return 0; sleep 0.5; done
    return 1
}
model_readable() { cmp -s "$mnt/config.json" "$plain/config.json" && cmp -s "$mnt/model.safetensors" "$plain/model.safetensors"; }
nat_present() { iptables -w -t nat -S CAID_GATEWAY 2>/dev/null | grep -q -- '--dport 8080'; }
nat_absent() { ! iptables -w -t nat -S 2>/dev/null | grep -q CAID_GATEWAY; }
fuse_mounted() { findmnt -n -t fuse,fuse.caid,fuseblk "$mnt" >/dev/null 2>&1 || findmnt -n "$mnt" 2>/dev/null | grep -q fuse; }
journal_since() { journalctl -u $unit --since "@${1%.*}" -o cat --no-pager 2>/dev/null; }

write_env() {  # write_env [extra lines]: the cai.env for the loopback test servers
    cat > /etc/caid/cai.env <<ENV
TRUSTEE_URL="http://127.0.0.1:18002/trustee/"
TRUSTEE_POLICY="default"
MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
MODEL_ENCRYPTION_METHOD="gocryptfs"
MODEL_OSS_BUCKET_PATH="models:/qwen"
MODEL_OSS_ENDPOINT="http://127.0.0.1:18001"
MODEL_OSS_ACCESS_KEY_ID="LTAItest"
MODEL_OSS_SECRET_ACCESS_KEY="oss-secret-value"
MODEL_OSS_SESSION_TOKEN=
MODEL_SERVICE_PORT=8080
MODEL_MOUNT_POINT=$mnt
CAID_OSS_REGION=cn-test
# The guest has no TEE: the sample attester, which only the test Attestation Service accepts.
CAID_ATTESTER=sample
CAID_GATEWAY_MODE=netfilter
CAID_GATEWAY_PORT=41001
# The inference service runs as uid 1001 (reader); uid 1002 (other) must not read the model.
CAID_MOUNT_OWNER=1001:1001
CAID_MOUNT_MODE=0440
${1:-}
ENV
    chmod 600 /etc/caid/cai.env
}

finish() { record "END"; echo 3 > $V/stage; sync; systemctl poweroff --no-block; }

# ---------------------------------------------------------------- stage 1
c_install() {
    # Only the package: its dependencies must already be on a Debian host (the guest has no network).
    local t0; t0=$(now)
    local out; out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y $V/caid.deb 2>&1) || { echo "$out" | tail -4; return 1; }
    dpkg-query -W -f='${Status} ${Version}' caid | grep -q "install ok installed" || { echo "caid not installed"; return 1; }
    record "TIME install $(elapsed "$t0")"
    echo "$(dpkg-query -W -f='${Version} Depends: ${Depends}' caid)"
}
c_install_starts_nothing() {
    # Install must daemon-reload (the unit is loaded without one here) and start nothing.
    local load active; load=$(prop $unit LoadState); active=$(prop $unit ActiveState)
    echo "LoadState=$load ActiveState=$active UnitFileState=$(prop $unit UnitFileState)"
    [ "$load" = loaded ] && [ "$active" = inactive ]
}
c_binary() {
    local v missing swift
    v=$(caid --version 2>&1) || { echo "caid --version failed: $v"; return 1; }
    missing=$(ldd /usr/bin/caid | grep "not found")
    swift=$(ldd /usr/bin/caid | grep -i swift)
    echo "version=$v; needs: $(ldd /usr/bin/caid | awk '{print $1}' | tr '\n' ' ')"
    [ -z "$missing" ] || { echo "missing: $missing"; return 1; }
    [ -z "$swift" ] || { echo "links the Swift runtime dynamically: $swift"; return 1; }
}
c_package_files() {
    local bad="" doc
    doc=$(prop $unit Documentation | tr ' ' '\n' | grep '^file://' | head -1); doc=${doc#file://}
    [ -n "$doc" ] && [ -f "$doc" ] || bad="$bad Documentation=($doc) missing;"
    [ -f /etc/caid/cai.env.example ] || bad="$bad no /etc/caid/cai.env.example;"
    [ "$(stat -c %a /etc/caid/cai.env.example 2>/dev/null)" = 600 ] || bad="$bad cai.env.example mode $(stat -c %a /etc/caid/cai.env.example 2>/dev/null);"
    ls /usr/share/man/man1/caid*.1* >/dev/null 2>&1 || bad="$bad no man page;"
    grep -q "^/etc/caid/cai.env.example$" /var/lib/dpkg/info/caid.conffiles 2>/dev/null || bad="$bad cai.env.example not a conffile;"
    echo "unit $(prop $unit FragmentPath), doc $doc${bad:+; $bad}"
    [ -z "$bad" ]
}
c_start() {
    local t0 rc; t0=$(now)
    timeout 180 systemctl start $unit; rc=$?
    local took; took=$(elapsed "$t0")
    record "TIME start $took"
    # Type=notify: the start returns on READY=1, which comes once the model is mounted, so it is readable now.
    model_readable || { echo "start rc=$rc after $took s but the model is not readable: $(ls -l $mnt 2>&1)"; return 1; }
    echo "systemctl start returned $rc after $took s, model readable"
    [ $rc = 0 ]
}
c_health() { local out; out=$(caid health 2>&1); local rc=$?; echo "rc=$rc $(echo "$out" | head -3)"; [ $rc = 0 ]; }
c_journal_fields() {
    journalctl -u $unit -o json --no-pager | python3 -c '
import json, sys
entries = [json.loads(l) for l in sys.stdin if l.strip()]
native = [e for e in entries if "CAID_SERVICE" in e and "PRIORITY" in e and "CODE_FILE" in e]
services = sorted({e["CAID_SERVICE"] for e in native})
print(f"{len(native)} of {len(entries)} entries native; CAID_SERVICE values: {services}")
sys.exit(0 if native else 1)'
}
c_journal_doc_filters() {
    # Every `journalctl ... CAID_SERVICE=<x>` filter the installed docs give must match entries.
    local doc bad="" n=0 v
    doc=$(prop $unit Documentation | tr ' ' '\n' | grep '^file://' | head -1); doc=${doc#file://}
    [ -f "$doc" ] || { echo "no installed doc ($doc)"; return 1; }
    for v in $(grep -o 'journalctl[^`]*CAID_SERVICE=[a-z]*' "$doc" /usr/share/doc/caid/* 2>/dev/null | grep -o 'CAID_SERVICE=[a-z]*' | sort -u); do
        n=$((n + 1))
        [ -n "$(journalctl -u $unit "$v" -q -n 1 --no-pager 2>/dev/null)" ] || bad="$bad $v"
    done
    echo "$n documented filters${bad:+; matching nothing:$bad}"
    [ $n -gt 0 ] && [ -z "$bad" ]
}
c_journal_names() {
    # Plain `journalctl -u caid` must say which service a line is about (in the message or the identifier).
    journalctl -u $unit -o json --no-pager | python3 -c '
import json, sys
bare = []
for l in sys.stdin:
    e = json.loads(l)
    s = e.get("CAID_SERVICE")
    if not s: continue
    m = e.get("MESSAGE", "")
    if isinstance(m, list): m = bytes(m).decode(errors="replace")
    if s not in m and s not in e.get("SYSLOG_IDENTIFIER", ""): bare.append(f"{s}: {m[:60]!r}")
print(f"{len(bare)} entries without their service name" + (": " + "; ".join(bare[:4]) if bare else ""))
sys.exit(1 if bare else 0)'
}
c_no_priority_warning() {
    local n; n=$(journalctl -u $unit -o cat --no-pager | grep -c "thread priority")
    echo "$n 'thread priority' warnings"; [ "$n" = 0 ]
}
c_mount_visible() {
    fuse_mounted || { echo "no FUSE mount at $mnt: $(findmnt $mnt)"; return 1; }
    model_readable || { echo "mounted but unreadable"; return 1; }
    local ns; ns=$(unshare -m sh -c "mkdir -p /run/vmt-bind && mount --bind $mnt /run/vmt-bind && cmp $plain/config.json /run/vmt-bind/config.json && echo bind-ok" 2>&1)
    echo "$(findmnt -n -o FSTYPE,OPTIONS $mnt); fresh namespace: $ns"
    [ "$ns" = bind-ok ]
}
c_nonroot_reader() {
    local r o
    r=$(setpriv --reuid 1001 --regid 1001 --clear-groups cat $mnt/config.json 2>&1 | head -c 200)
    o=$(setpriv --reuid 1002 --regid 1002 --clear-groups cat $mnt/config.json 2>&1); local orc=$?
    echo "modes: $(stat -c '%a %u:%g' $mnt $mnt/config.json | tr '\n' ' '); other: rc=$orc $(echo "$o" | head -c 80)"
    [ "$r" = "$(head -c 200 $plain/config.json)" ] || { echo "reader (1001) could not read: $r"; return 1; }
    [ $orc != 0 ] && echo "$o" | grep -qi "permission denied"
}
c_nat_present() { nat_present && echo "$(iptables -w -t nat -S CAID_GATEWAY | tr '\n' ';')"; }
# ensure_ready: each check that needs a ready caid starts from one, so that one failure does not fail the
# checks after it (a stale mount a failed check left is cleared first, as an operator would).
ensure_ready() {
    healthy && model_readable && return 0
    systemctl stop $unit; systemctl reset-failed $unit 2>/dev/null
    mountpoint -q $mnt 2>/dev/null || findmnt $mnt >/dev/null 2>&1 && umount -l $mnt 2>/dev/null
    timeout 180 systemctl start $unit && healthy || { echo "(could not get a ready caid for this check)"; return 1; }
}
c_watchdog() {
    ensure_ready || return 1
    local p1 r1 p2 t0; p1=$(prop $unit MainPID); r1=$(prop $unit NRestarts); t0=$(now)
    kill -STOP "$p1"
    # WatchdogSec=30s: systemd aborts the stopped process and restarts it.
    wait_until 120 sh -c "p=\$(systemctl show -P MainPID $unit); [ \"\$p\" != 0 ] && [ \"\$p\" != $p1 ] && caid health >/dev/null 2>&1"
    local ok=$?; p2=$(prop $unit MainPID)
    record "TIME watchdog-replace $(elapsed "$t0")"
    echo "pid $p1 -> $p2, NRestarts $r1 -> $(prop $unit NRestarts), $(elapsed "$t0") s"
    [ $ok = 0 ] && model_readable
}
c_kill9() {
    ensure_ready || return 1
    local p1 t0 natok=no; p1=$(prop $unit MainPID); t0=$(now)
    kill -9 "$p1"
    sleep 0.3
    nat_present && natok=yes
    record "NOTE nat-survive-kill $natok"
    wait_until 60 sh -c "p=\$(systemctl show -P MainPID $unit); [ \"\$p\" != 0 ] && [ \"\$p\" != $p1 ] && caid health >/dev/null 2>&1"
    local ok=$?
    record "TIME kill9-ready $(elapsed "$t0")"
    echo "ready again after $(elapsed "$t0") s (pid $p1 -> $(prop $unit MainPID)); nat rules right after the kill: $natok; model readable: $(model_readable && echo yes || echo no)"
    [ $ok = 0 ] && model_readable
}
c_nat_survive_kill() { grep -q "^NOTE nat-survive-kill yes" $R && echo "rules present right after kill -9 (before the restart)"; }
c_stop_in_use() {
    ensure_ready || return 1
    # A container's private bind of the mount (what `docker run -v <mount>:<mount>` makes) and a host
    # process holding a file open: both keep the FUSE connection referenced after caid detaches it.
    unshare -m --propagation private sh -c "mkdir -p /run/vmt-ctr && mount --bind $mnt /run/vmt-ctr && exec 3</run/vmt-ctr/config.json && exec sleep 300" &
    local ns=$!
    sleep 300 3<$mnt/model.safetensors &
    local holder=$!
    sleep 1
    local t0 rc; t0=$(now)
    timeout 60 systemctl stop $unit; rc=$?
    local took; took=$(elapsed "$t0")
    record "TIME stop-in-use $took"
    local result; result=$(prop $unit Result)
    local leftover=""; fuse_mounted && leftover="$leftover mount;"; nat_absent || leftover="$leftover nat rules;"
    kill $ns $holder 2>/dev/null; wait $ns $holder 2>/dev/null
    echo "stop took $took s (rc=$rc, Result=$result)${leftover:+, left:$leftover}"
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 10 else 1)" "$took" && [ "$result" = success ] && [ -z "$leftover" ]
}
c_container_after_restart() {
    # A container that binds the mount point's parent with slave propagation (docs/operations.md) sees the new
    # mount after caid restarts.
    ensure_ready || return 1
    unshare -m --propagation slave sh -c "mkdir -p /run/vmt-ctr2 && mount --rbind ${mnt%/*} /run/vmt-ctr2 && mount --make-rslave /run/vmt-ctr2 && exec sleep 300" &
    local ctr=$!
    sleep 1
    local before after t0 rc
    before=$(nsenter -t $ctr -m cat /run/vmt-ctr2/${mnt##*/}/config.json 2>&1 | head -c 40)
    t0=$(now)
    timeout 120 systemctl restart $unit; rc=$?
    record "TIME restart-with-container $(elapsed "$t0")"
    after=$(nsenter -t $ctr -m cat /run/vmt-ctr2/${mnt##*/}/config.json 2>&1 | head -c 200)
    kill $ctr 2>/dev/null; wait $ctr 2>/dev/null
    echo "restart rc=$rc in $(elapsed "$t0") s; container before: ${before:0:20}; after: ${after:0:60}"
    [ $rc = 0 ] && [ "$after" = "$(head -c 200 $plain/config.json)" ]
}
bad_config() {  # bad_config <extra cai.env lines>: fails once with 78, no restart loop
    systemctl stop $unit; systemctl reset-failed $unit 2>/dev/null
    write_env "$1"
    local t0 rc; t0=$(now)
    timeout 60 systemctl start $unit 2>/dev/null; rc=$?
    sleep 25
    local state restarts status
    state=$(prop $unit ActiveState); restarts=$(prop $unit NRestarts)
    status=$(journal_since "$t0" | grep -o "status=78[^ ]*" | head -1)
    echo "start rc=$rc; after 25 s: $state, NRestarts=$restarts, ${status:-no exit status 78 in the journal}; $(journal_since "$t0" | grep -i "error\|invalid" | head -2)"
    systemctl stop $unit; systemctl reset-failed $unit 2>/dev/null
    [ $rc != 0 ] && [ "$state" = failed ] && [ "$restarts" = 0 ] && [ -n "$status" ]
}
c_bad_config_invalid() { bad_config "CAID_GATEWAY_MODE=bogus"; }
c_bad_config_no_tee() { bad_config "CAID_ATTESTER=auto"; }
c_trustee_unreachable() {
    # The operator's bound: TimeoutStartSec (here 25 s). With Trustee down, the start fails within it, and
    # health (while starting) and the journal say why.
    systemctl stop $unit vm-kbs
    write_env
    mkdir -p /run/systemd/system/$unit.service.d
    printf '[Service]\nTimeoutStartSec=25s\n' > /run/systemd/system/$unit.service.d/vmtest-timeout.conf
    systemctl daemon-reload; systemctl reset-failed $unit 2>/dev/null
    local t0 rc pid health; t0=$(now)
    timeout 45 systemctl start $unit & pid=$!
    sleep 22
    health=$(caid health 2>&1 | tr '\n' ' ' | cut -c1-160)
    wait $pid; rc=$?
    local took; took=$(elapsed "$t0")
    record "TIME trustee-unreachable-start $took"
    local result why
    result=$(prop $unit Result)
    # "Why" names the failure: a refused or unreachable connection to the Trustee address.
    why=$(journal_since "$t0" | grep -i "refused\|unreachable\|timed out\|cannot connect\|could not connect" | grep -i "trustee\|18002\|kbs" | head -1 | cut -c1-160)
    systemctl stop $unit; systemctl reset-failed $unit 2>/dev/null
    rm -f /run/systemd/system/$unit.service.d/vmtest-timeout.conf; systemctl daemon-reload
    systemctl start vm-kbs
    echo "start rc=$rc after $took s (Result=$result); health while starting: $health; journal: $why"
    [ $rc != 0 ] && [ $rc != 124 ] && python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 40 else 1)" "$took" \
        && echo "$health" | grep -qi "refused\|unreachable\|timed out\|connect\|18002" && [ -n "$why" ]
}

setup_servers() {
    # The model, its ciphertext and password were made on the host with the package's `caid encrypt`.
    mkdir -p /srv/vmtest
    cp -a $V/model/plain $V/model/bucket $V/model/password /srv/vmtest/ || return 1
    # The test servers as units of their own, so they also run after the reboot (before caid).
    cat > /etc/systemd/system/vm-oss.service <<EOF
[Unit]
Description=test OSS server (Tests/peers/oss_server.py)
Before=caid.service
RequiresMountsFor=/vmtest
[Service]
Environment=PYTHONPATH=$V/pylib
ExecStart=/usr/bin/python3 $V/peers/oss_server.py --root /srv/vmtest/bucket --bucket models --ak LTAItest --sk oss-secret-value --region cn-test --port 18001 --port-file /run/vm-oss.port
ExecStartPost=/bin/sh -c 'for i in \$(seq 100); do [ -s /run/vm-oss.port ] && exit 0; sleep 0.2; done; exit 1'
[Install]
WantedBy=multi-user.target
EOF
    cat > /etc/systemd/system/vm-kbs.service <<EOF
[Unit]
Description=test KBS and Attestation Service (Tests/peers/trustee_server.py)
Before=caid.service
RequiresMountsFor=/vmtest
[Service]
ExecStartPre=/bin/rm -f /run/vm-kbs.port
ExecStart=/usr/bin/python3 $V/peers/trustee_server.py --dialect current --prefix /trustee/ --resource default/aliyun/model-decryption-key=/srv/vmtest/password --port 18002 --port-file /run/vm-kbs.port
ExecStartPost=/bin/sh -c 'for i in \$(seq 100); do [ -s /run/vm-kbs.port ] && exit 0; sleep 0.2; done; exit 1'
[Install]
WantedBy=multi-user.target
EOF
    systemctl daemon-reload
    systemctl enable --now vm-oss vm-kbs 2>&1
    write_env
}
c_servers() { setup_servers && echo "OSS :18001, KBS/AS :18002 up"; }

stage1() {
    : > $R
    record "TIME boot-to-checks $(cut -d' ' -f1 /proc/uptime)"
    record "TIME boot-to-multi-user $(boot_target_time)"
    local keep=$only; only=""
    check install c_install || { finish; return; }
    check install-starts-nothing c_install_starts_nothing
    check binary-runs c_binary
    check package-files c_package_files
    check test-servers c_servers || { finish; return; }
    check start-ready c_start
    only=$keep
    check health c_health
    check mount-visible c_mount_visible
    check nonroot-reader c_nonroot_reader
    check nat-rules c_nat_present
    check journal-fields c_journal_fields
    check journal-doc-filters c_journal_doc_filters
    check journal-names-service c_journal_names
    check no-priority-warning c_no_priority_warning
    check watchdog-sigstop c_watchdog
    check kill9-recovers c_kill9
    check nat-survive-kill c_nat_survive_kill
    check stop-in-use c_stop_in_use
    check container-after-restart c_container_after_restart
    check bad-config-invalid c_bad_config_invalid
    check bad-config-no-tee c_bad_config_no_tee
    check trustee-unreachable c_trustee_unreachable
    journalctl -u $unit -o json --no-pager > $V/journal-caid-stage1.json 2>/dev/null
    write_env
    systemctl enable $unit 2>&1 | tail -1
    if [ -n "$only" ] && ! echo " $only " | grep -q " ready-after-reboot "; then finish; return; fi
    echo 2 > $V/stage; sync
    record "INFO stage 1 done at $(cut -d' ' -f1 /proc/uptime) s uptime; rebooting"
    systemctl reboot --no-block
}

c_after_reboot() {
    # Enabled, caid is part of multi-user.target, which this unit runs after: it should be ready now.
    local active; active=$(prop $unit ActiveState)
    wait_until 60 healthy; local rc=$?
    echo "ActiveState=$active, ready at $(cut -d' ' -f1 /proc/uptime) s uptime, multi-user.target at $(boot_target_time) s"
    [ "$active" = active ] && [ $rc = 0 ] && model_readable
}
stage2() {
    record "TIME boot2-to-checks $(cut -d' ' -f1 /proc/uptime)"
    check ready-after-reboot c_after_reboot
    journalctl -u $unit -b -o json --no-pager > $V/journal-caid-stage2.json 2>/dev/null
    systemctl stop $unit
    finish
}

case $stage in
1) stage1 ;;
2) stage2 ;;
*) say "stage $stage: nothing to do"; systemctl poweroff --no-block ;;
esac
