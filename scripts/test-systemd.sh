#!/usr/bin/env bash
# dockd under the real thing: systemd 252 as PID 1 in a systemd-nspawn container of
# Debian 12, the .deb installed with dpkg, and an exFAT loop-device camera tagged by
# the container's udevd. Checks what an administrator relies on (see check lines).
#
#   ./scripts/test-systemd.sh                 build dist/*.deb, boot, check
#   DOCKD_DEB=dist/dockd_0.1.0_amd64.deb ./scripts/test-systemd.sh   reuse a .deb
#   ./scripts/test-systemd.sh --update-docs   also write the measured exposure into the docs
#
# Root, on a Debian host (./scripts/setup.sh --deb installs what it needs). The
# debootstrapped tree is cached in $DOCKD_SYSTEMD_CACHE (/var/cache/dockd-systemd-test):
# each run boots a fresh copy of it.
#
# What it takes on a host whose PID 1 is not systemd, with hybrid cgroups:
# - the nspawn process in its own cgroup in both the name=systemd and the unified
#   hierarchy, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 and --keep-unit (no systemd to ask
#   for a scope) and --register=no (no machined);
# - --system-call-filter=bpf: without bpf(2) the container's systemd cannot attach
#   device programs, and DevicePolicy= silently does nothing;
# - --bind=/dev/fuse --bind=/dev/loop-control; the container's /dev is private, so a
#   loop device's node is made with mknod and a "change" uevent re-sent;
# - --private-network: the kernel's uevents reach every network namespace, but the
#   host udevd's own (untagged) announcements stay outside;
# - udevd's ConditionPathIsReadWrite=/sys emptied, systemd-udev-trigger masked
#   (the kernel is shared: a trigger would replay every host device).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
t_start=$(date +%s)

update_docs=0
[ "${1:-}" = "--update-docs" ] && update_docs=1

CACHE=${DOCKD_SYSTEMD_CACHE:-/var/cache/dockd-systemd-test}
MIRROR=${DOCKD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# the container: systemd, udevd, python3 for dockd's venv, exFAT for the camera
INCLUDE=systemd,systemd-sysv,udev,dbus,python3,procps
EXTRA="fuse3 exfat-fuse exfatprogs"
LABEL=DOCKDNSPAWN

passed=0
say() { echo "test-systemd: $*" >&2; }
# the last line is CI's count: "test-systemd: N passed, N failed"
fail() { say "FAIL: $*"; say "$passed passed, 1 failed"; exit 1; }
ok() { passed=$((passed + 1)); say "ok: $*"; }

[ "$(id -u)" = 0 ] || fail "needs root"
for tool in systemd-nspawn debootstrap losetup mkfs.exfat mount.exfat-fuse; do
  command -v "$tool" >/dev/null || fail "$tool missing: run ./scripts/setup.sh --deb"
done

# -- the package ---------------------------------------------------------------------
deb=${DOCKD_DEB:-}
if [ -z "$deb" ]; then
  ./scripts/build-deb.sh
  deb=$(ls -t dist/dockd_*.deb | head -1)
fi
[ -f "$deb" ] || fail "no package at $deb"

# -- the cached Debian 12 tree -------------------------------------------------------
key="bookworm $INCLUDE $EXTRA"
if [ "$(cat "$CACHE/bookworm/.dockd-cache-key" 2>/dev/null)" != "$key" ]; then
  say "debootstrap bookworm into $CACHE (once)"
  mkdir -p "$CACHE"
  rm -rf "$CACHE/bookworm.tmp" "$CACHE/bookworm"
  debootstrap --variant=minbase --include="$INCLUDE" bookworm "$CACHE/bookworm.tmp" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; fail "debootstrap"; }
  # exfat-fuse after debootstrap: its resolver takes the first of "fuse3 | fuse" badly
  chroot "$CACHE/bookworm.tmp" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $EXTRA >>"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; fail "apt-get install $EXTRA"; }
  chroot "$CACHE/bookworm.tmp" apt-get clean
  echo "$key" >"$CACHE/bookworm.tmp/.dockd-cache-key"
  mv "$CACHE/bookworm.tmp" "$CACHE/bookworm"
fi

# -- a fresh copy, prepared for booting in a container --------------------------------
work=$(mktemp -d /var/tmp/dockd-systemd.XXXXXX)
root=$work/root
machine=dockd-test-$$
cg_names=("/sys/fs/cgroup/systemd/$machine" "/sys/fs/cgroup/unified/$machine")
nspawn_pid=""
loopdev=""
cleanup() {
  set +e
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid"          # nspawn asks the container's systemd to halt
    for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$nspawn_pid" 2>/dev/null
    wait "$nspawn_pid" 2>/dev/null
  fi
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null
  for cg in "${cg_names[@]}"; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \;    # the container's systemd made sub-cgroups
  done 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
cp -a "$CACHE/bookworm" "$root"
cp "$deb" "$root/root/dockd.deb"
mkdir -p "$root/etc/systemd/system/systemd-udevd.service.d"
printf '[Unit]\n# /sys is read-only in a container; the device events are real\nConditionPathIsReadWrite=\n' \
  >"$root/etc/systemd/system/systemd-udevd.service.d/nspawn.conf"
ln -sf /dev/null "$root/etc/systemd/system/systemd-udev-trigger.service"
# the test camera: a loop device whose exFAT label is ours, as the shipped rules tag a model
mkdir -p "$root/etc/udev/rules.d"
cat >"$root/etc/udev/rules.d/89-dockd-test.rules" <<EOF
ACTION=="remove", GOTO="dockd_test_end"
SUBSYSTEM=="block", KERNEL=="loop*", ENV{ID_FS_LABEL}=="$LABEL", TAG+="dockd", ENV{DOCKD_PROFILE}="generic", ENV{UDISKS_IGNORE}="1"
LABEL="dockd_test_end"
EOF
echo "$machine" >"$root/etc/hostname"

# -- boot -------------------------------------------------------------------------
for cg in "${cg_names[@]}"; do mkdir -p "$cg"; done
(
  for cg in "${cg_names[@]}"; do echo $BASHPID >"$cg/cgroup.procs"; done
  exec env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --keep-unit --register=no \
    --machine="$machine" -D "$root" --boot --private-network --console=read-only \
    --system-call-filter=bpf --bind=/dev/fuse --bind=/dev/loop-control
) </dev/null >"$work/console.log" 2>&1 &
nspawn_pid=$!
leader=""
for _ in $(seq 150); do
  leader=$(pgrep -P "$nspawn_pid" -x systemd || true)
  [ -n "$leader" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log" >&2; fail "nspawn exited"; }
  sleep 0.2
done
[ -n "$leader" ] || fail "no systemd in the container"
c() { nsenter -t "$leader" -m -u -i -n -p -C -- "$@"; }
state=""
for _ in $(seq 120); do     # until systemd listens on its private socket, systemctl cannot ask
  state=$(c timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
  case $state in running|degraded|maintenance|stopping) break ;; esac
  sleep 0.5
done
[ "$state" = running ] || { c systemctl --failed --no-pager >&2 || true; fail "system '$state', not running"; }
ok "systemd $(c systemctl --version | head -1 | cut -d' ' -f2) is PID 1 in the container, udevd $(c systemctl is-active systemd-udevd)"

show() { c systemctl show -P "$1" dockd.service; }
journal_since() { c journalctl -u dockd.service -o cat --no-pager --since "@$1"; }

# -- install ----------------------------------------------------------------------
c env DEBIAN_FRONTEND=noninteractive dpkg -i /root/dockd.deb >"$work/dpkg.log" 2>&1 \
  || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
[ -L "$root/usr/bin/dockd" ] && c dockd --version >/dev/null || fail "/usr/bin/dockd"
c getent group dockd >/dev/null || fail "sysusers: no group dockd"
[ "$(stat -c %a "$root/etc/dockd/credentials")" = 700 ] || fail "tmpfiles: /etc/dockd/credentials"
c test -f /usr/share/man/man8/dockd.8.gz -a -f /usr/share/bash-completion/completions/dockd \
  || fail "man page or completion missing"
[ "$(show UnitFileState)" = disabled ] && [ "$(show ActiveState)" = inactive ] \
  || fail "installed enabled or started before it is configured"
ok "dpkg -i: /usr/bin/dockd, group dockd, credentials 0700, dockd(8), completion; unit installed, not started"

# -- the shipped configuration refuses, in one line, and is not restarted ----------
t=$(c date +%s)
c systemctl start dockd.service 2>/dev/null && fail "started with no recipients"
lines=$(journal_since "$t" | grep -c 'encryption.recipients' || true)
[ "$(show ExecMainStatus)" = 2 ] && [ "$lines" = 1 ] && [ "$(show NRestarts)" = 0 ] \
  || { journal_since "$t" >&2; fail "default config: want exit 2, one line, no restart"; }
ok "default config: $(journal_since "$t" | grep encryption.recipients)"

# -- configure: recipients, a store, the metrics textfile --------------------------
recipient=$(c dockd keygen -o /root/identity.txt)
mkdir -p "$root/var/lib/prometheus/node-exporter"
cat >"$root/etc/dockd/dockd.toml" <<EOF
[station]
id = "nspawn-01"
[devices]
source = "udev"
[encryption]
recipients = ["$recipient"]
[store]
url = "file:///var/lib/dockd/store"
[spool]
min_free = "16MiB"
[metrics]
textfile = "/var/lib/prometheus/node-exporter/dockd.prom"
interval = 1
EOF
c systemctl enable --now dockd.service >/dev/null 2>&1 || { c journalctl -u dockd -o cat --no-pager | tail >&2; fail "start"; }
t_active=$(date +%s)
pid=$(show MainPID)
[ "$(show ActiveState)/$(show SubState)" = active/running ] || fail "not active after start"
ok "start: active (running), Type=notify (READY=1 received), pid $pid"

# -- the sandbox: /etc/dockd read-only, metrics written -----------------------------
if c nsenter -t "$pid" -m touch /etc/dockd/.probe 2>/dev/null; then
  fail "/etc/dockd is writable inside the sandbox"
fi
for _ in $(seq 100); do [ -s "$root/var/lib/prometheus/node-exporter/dockd.prom" ] && break; sleep 0.1; done
grep -qx 'dockd_up 1' "$root/var/lib/prometheus/node-exporter/dockd.prom" 2>/dev/null \
  || { journal_since "$t_active" | grep metrics >&2; fail "metrics textfile not written"; }
ok "sandbox: /etc/dockd read-only; metrics textfile written at the documented path"

# -- dockd status: root, an operator in group dockd, anyone else --------------------
c useradd -m -G dockd dockop; c useradd -m outsider
c dockd status --json | grep -q '"running": true' || fail "status as root"
c runuser -u dockop -- dockd status --json | grep -q '"running": true' || fail "status as operator"
if out=$(c runuser -u outsider -- dockd status 2>&1); then fail "status as outsider: $out"; fi
echo "$out" | grep -q "permission denied" || fail "outsider refused without saying why: $out"
ok "status: root and group dockd see the daemon; outsider refused: $out"

# -- a camera: exFAT on a loop device, tagged by udev, under the full hardening --------
python3 - "$work/cam.img" "$LABEL" <<'EOF'
import sys
sys.path.insert(0, "tests")
import loopcam
loopcam.make_camera_image(__import__("pathlib").Path(sys.argv[1]),
                          {"DCIM/100BWC/A0001.MP4": 3_000_000, "DCIM/100BWC/A0002.MP4": 1_000_000},
                          label=sys.argv[2])
EOF
t=$(c date +%s)
loopdev=$(losetup --find --show "$work/cam.img")
name=${loopdev#/dev/}
c mknod -m 0660 "$loopdev" b "$(cut -d: -f1 "/sys/block/$name/dev")" "$(cut -d: -f2 "/sys/block/$name/dev")"
echo change >"/sys/block/$name/uevent"
done_=""
for _ in $(seq 300); do
  if journal_since "$t" | grep -q '"event": "device.released"'; then done_=1; break; fi
  sleep 0.2
done
ev=$(journal_since "$t")
[ -n "$done_" ] || { echo "$ev" >&2; fail "camera not released"; }
for e in device.docked recording.spooled upload.verified wipe.done session.done device.released; do
  n=$(echo "$ev" | grep -c "\"event\": \"$e\"" || true)
  [ "$n" -ge 1 ] || { echo "$ev" >&2; fail "no $e"; }
done
[ "$(echo "$ev" | grep -c '"event": "wipe.done"')" = 2 ] || fail "want 2 wipes"
stored=$(find "$root/var/lib/dockd/store" -name '*.age' | wc -l)
[ "$stored" = 2 ] || fail "store holds $stored objects, want 2"
grep -q "$name" "$root/proc/mounts" 2>/dev/null && fail "camera still mounted"
losetup -d "$loopdev"; loopdev=""
left=$(python3 -c 'import sys; sys.path.insert(0, "tests"); import loopcam, pathlib
print(len([p for p in loopcam.read_image(pathlib.Path(sys.argv[1])) if p.upper().endswith(".MP4")]))' "$work/cam.img")
[ "$left" = 0 ] || fail "$left recordings left on the camera"
ok "camera $name: docked, 2 spooled, verified, wiped, released; store holds 2 objects, camera none"

# -- up past twice WatchdogSec, same process ------------------------------------------
wd=$(show WatchdogUSec)                        # a timespan: "30s"
[[ "$wd" =~ ^[0-9]+s$ ]] || fail "WatchdogUSec is $wd, want whole seconds"
wd=${wd%s}
wait_until=$((t_active + 2 * wd + 2))
while [ "$(date +%s)" -lt "$wait_until" ]; do sleep 1; done
[ "$(show MainPID)" = "$pid" ] && [ "$(show NRestarts)" = 0 ] && [ "$(show ActiveState)" = active ] \
  || { journal_since "$t_active" | tail >&2; fail "did not stay up past 2 x WatchdogSec"; }
ok "up $(( $(date +%s) - t_active ))s (> 2 x WatchdogSec=${wd}s), same pid, no restart"

# -- reload, stop ---------------------------------------------------------------------
t=$(c date +%s)
c systemctl reload dockd.service
for _ in $(seq 50); do journal_since "$t" | grep -q '"event": "daemon.reloaded"' && break; sleep 0.2; done
journal_since "$t" | grep -q '"event": "daemon.reloaded"' && [ "$(show MainPID)" = "$pid" ] \
  || fail "reload"
ok "systemctl reload: daemon.reloaded, same pid"
t=$(c date +%s)
t0=$(date +%s%N)
c systemctl stop dockd.service
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ "$(show Result)" = success ] && [ "$(show ExecMainStatus)" = 0 ] \
  && journal_since "$t" | grep -q '"event": "daemon.stopped"' \
  || { journal_since "$t" >&2; fail "stop not clean: Result=$(show Result) status=$(show ExecMainStatus)"; }
grep -qx 'dockd_up 0' "$root/var/lib/prometheus/node-exporter/dockd.prom" || fail "metrics: dockd_up 0 at stop"
ok "systemctl stop: exit 0 in ${ms} ms, daemon.stopped"

# the daemon stopped, an operator gets one line saying what to do
if out=$(c runuser -u dockop -- dockd status 2>&1); then fail "operator, daemon stopped: $out"; fi
[ "$(echo "$out" | wc -l)" = 1 ] && ! echo "$out" | grep -q Traceback || fail "operator, daemon stopped: $out"
ok "status by an operator, daemon stopped: $out"

# -- systemd-analyze security: the figure the docs state -------------------------------
c systemd-analyze security --no-pager dockd.service >"$work/security.txt" 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for dockd.service: \([0-9.]*\).*/\1/p' "$work/security.txt")
[ -n "$exposure" ] || { cat "$work/security.txt" >&2; fail "no exposure figure"; }
if [ "$update_docs" = 1 ]; then
  { echo "# systemd-analyze security dockd.service (systemd 252, Debian 12), written by"
    echo "# ./scripts/test-systemd.sh --update-docs: do not edit"
    cat "$work/security.txt"; } >docs/systemd-security.txt
  sed -i -E "s|(<!-- exposure -->)[0-9.]*(<!-- /exposure -->)|\1$exposure\2|g" README.md docs/INSTALL.md
  say "docs: exposure $exposure written"
fi
for f in README.md docs/INSTALL.md; do
  stated=$(sed -n -E 's|.*<!-- exposure -->([0-9.]*)<!-- /exposure -->.*|\1|p' "$f" | sort -u)
  [ "$stated" = "$exposure" ] || fail "$f states exposure '$stated', systemd-analyze says $exposure: run ./scripts/test-systemd.sh --update-docs"
done
tail -n +3 docs/systemd-security.txt | cmp -s - "$work/security.txt" \
  || fail "docs/systemd-security.txt is stale: run ./scripts/test-systemd.sh --update-docs"
ok "systemd-analyze security: exposure $exposure, as the docs state"

# -- remove keeps the evidence; purge says what is left, and deletes none of it ------
touch "$root/var/lib/dockd/spool/.evidence-probe"
c dpkg -r dockd >/dev/null 2>&1 || fail "dpkg -r"
[ -f "$root/var/lib/dockd/spool/.evidence-probe" ] && [ -f "$root/var/lib/dockd/ledger.sqlite3" ] \
  || fail "remove deleted the spool or the ledger"
purge=$(c dpkg -P dockd 2>&1) || fail "dpkg -P: $purge"
[ -f "$root/var/lib/dockd/spool/.evidence-probe" ] && [ -f "$root/var/lib/dockd/ledger.sqlite3" ] \
  || fail "purge deleted the spool or the ledger"
echo "$purge" | grep -q "rm -rf /var/lib/dockd" || fail "purge did not say what to delete: $purge"
[ ! -e "$root/etc/dockd/dockd.toml" ] || fail "purge kept the conffile"
ok "dpkg -r keeps /var/lib/dockd; dpkg -P keeps it and says: $(echo "$purge" | grep 'rm -rf')"

say "took $(( $(date +%s) - t_start ))s"
say "$passed passed, 0 failed"
