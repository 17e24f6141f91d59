#!/bin/sh
# Check the deployment profiles in sandbox/profiles/ on a machine where statecull is not
# installed (CI):
#
#   1. `systemd-analyze verify` on both units. verify insists that ExecStart binaries
#      exist, so the units are copied to a temporary directory with /usr/sbin/ (and the
#      engine's ExecReload, /usr/bin/statecull) rewritten to the freshly built binaries;
#      nothing else is changed. Any output fails the check:
#      verify exits 0 on unknown keys and other warnings, printing them.
#   2. statecull.sysusers: systemd-sysusers creates the users and group in a scratch root.
#   3. sysctl.d/60-statecull-ping.conf: the template renders to one valid range; as root,
#      in a throwaway network namespace (ping_group_range is per namespace), the rendered
#      file is loaded and a process with the statecull gid can open ICMP and ICMPv6
#      datagram sockets while another gid cannot.
#   4. rc.d scripts: `sh -n` (syntax only; rc.subr exists only on FreeBSD).
#
# Usage: sandbox/profiles/verify-units.sh [BINDIR]
#   BINDIR holds statecull-broker, statecull-engine and statecull [default: target/debug
#   of this workspace]; build them first:
#   cargo build -p statecull-broker -p statecull-engine -p statecull-cli
# Needs systemd-analyze and systemd-sysusers (Debian/Ubuntu: apt-get install systemd).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bindir=${1:-$root/target/debug}
bindir=$(cd "$bindir" && pwd)

fail() {
    echo "verify-units: $*" >&2
    exit 1
}

for bin in statecull-broker statecull-engine statecull; do
    [ -x "$bindir/$bin" ] ||
        fail "$bindir/$bin is missing: cargo build -p statecull-broker -p statecull-engine -p statecull-cli"
done
command -v systemd-analyze >/dev/null || fail "systemd-analyze not found (apt-get install systemd)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# 1. Units.
mkdir "$tmp/units"
for unit in "$here"/systemd/*.service; do
    name=$(basename "$unit")
    grep -q '^ExecStart=/usr/sbin/statecull-' "$unit" || fail "$name: ExecStart is not /usr/sbin/statecull-*"
    # ExecReload (the engine's) runs the CLI, /usr/bin/statecull once installed.
    sed -e "s#^ExecStart=/usr/sbin/#ExecStart=$bindir/#" \
        -e "s#^ExecReload=/usr/bin/statecull #ExecReload=$bindir/statecull #" \
        "$unit" >"$tmp/units/$name"
done
echo "+ systemd-analyze verify --man=no $tmp/units/*.service"
status=0
out=$(systemd-analyze verify --man=no "$tmp"/units/*.service 2>&1) || status=$?
if [ "$status" -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify: exit $status, output above"
fi
for unit in "$tmp"/units/*.service; do
    systemd-analyze security --offline=yes --no-pager "$unit" 2>/dev/null | tail -n 1 || true
done

# 2. sysusers.
if command -v systemd-sysusers >/dev/null; then
    mkdir -p "$tmp/sysroot/etc"
    systemd-sysusers --root="$tmp/sysroot" "$here/systemd/statecull.sysusers" >/dev/null 2>&1 ||
        fail "systemd-sysusers rejected statecull.sysusers"
    grep -q '^statecull:' "$tmp/sysroot/etc/group" || fail "sysusers: no group statecull"
    sgid=$(awk -F: '$1 == "statecull" { print $3 }' "$tmp/sysroot/etc/group")
    egid=$(awk -F: '$1 == "statecull" { print $4 }' "$tmp/sysroot/etc/passwd")
    [ "$sgid" = "$egid" ] || fail "sysusers: user statecull's primary group is not statecull"
    grep -q '^statecull-broker:' "$tmp/sysroot/etc/passwd" || fail "sysusers: no user statecull-broker"
    echo "sysusers: statecull (gid $sgid), statecull-broker: ok"
else
    echo "sysusers: systemd-sysusers not found, skipped"
fi

# 3. sysctl template.
gid=4242
# The same command the file's comment gives packagers.
sed "/^net/s/@STATECULL_GID@/$gid/g" "$here/sysctl.d/60-statecull-ping.conf" >"$tmp/ping.conf"
grep -q '^[^#].*@' "$tmp/ping.conf" && fail "sysctl template: a placeholder is left after rendering"
[ "$(grep -c '^[^#]' "$tmp/ping.conf")" -eq 1 ] || fail "sysctl template: expected one setting"
grep -Eq "^net\.ipv4\.ping_group_range = $gid $gid\$" "$tmp/ping.conf" ||
    fail "sysctl template: unexpected setting"
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null && command -v setpriv >/dev/null &&
    [ -x /usr/bin/perl ]; then
    # socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), then AF_INET6/IPPROTO_ICMPV6, by number:
    # perl-base is on every Debian/Ubuntu system and needs no module for this.
    # Exit 0: both opened; 1: refused (EACCES); 2: anything else. A kernel without IPv6
    # (EAFNOSUPPORT) teaches nothing and is skipped.
    probe='for my $p ([2, 1], [10, 58]) {
        next if socket(my $s, $p->[0], 2, $p->[1]);
        next if $!{EAFNOSUPPORT};
        exit($!{EACCES} ? 1 : 2);
    }
    exit 0;'
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --net sh -c '
        sysctl -q -p "$1" || exit 2
        setpriv --reuid 65534 --regid "$2" --clear-groups /usr/bin/perl -e "$3" || exit 3
        setpriv --reuid 65534 --regid "$(($2 + 1))" --clear-groups /usr/bin/perl -e "$3"
        [ $? -eq 1 ] || exit 4
        exit 0' sh "$tmp/ping.conf" "$gid" "$probe" || {
        status=$?
        case $status in
        2) fail "sysctl rejected the rendered ping drop-in" ;;
        3) fail "gid $gid cannot open ICMP datagram sockets with the drop-in" ;;
        4) fail "gid $((gid + 1)) was not refused an ICMP datagram socket: the range is too wide" ;;
        *) fail "ping_group_range check failed ($status)" ;;
        esac
    }
    echo "sysctl: gid $gid may open ICMP/ICMPv6 datagram sockets, gid $((gid + 1)) may not: ok"
else
    echo "sysctl: rendered ok (the kernel check needs root, unshare, setpriv and perl: skipped)"
fi

# 4. rc.d scripts.
for script in "$here"/rc.d/*; do
    sh -n "$script" || fail "$(basename "$script"): sh -n failed"
done
echo "rc.d: $(ls "$here"/rc.d | tr '\n' ' ')syntax ok"
echo "verify-units: ok"
