#!/bin/sh
# Check the packages of `cargo xtask dist freebsd` with FreeBSD's own pkg(8), built for
# Linux from https://github.com/freebsd/pkg (./configure && make; needs libarchive-dev,
# libbsd-dev, libssl-dev, zlib1g-dev, libbz2-dev, liblzma-dev, libzstd-dev and
# external/sqlite/sqlite3.{c,h}, which the repository keeps out of git). Not part of CI:
# building pkg takes minutes; run it by hand after changing the package layout.
#
#   1. pkg info -F: libpkg parses both manifests;
#   2. pkg add -I into a scratch root (scripts skipped: they call FreeBSD's pw(8));
#   3. pkg check -s: every installed file against the manifest's sha256;
#   4. pkg delete: everything removed again.
#
# Usage: dist/freebsd/pkg-roundtrip.sh PATH/TO/pkg [DIR]   (DIR: target/dist/freebsd)
set -eu
pkg=${1:?usage: $0 PATH/TO/pkg [DIR]}
dir=${2:-$(dirname "$0")/../../target/dist/freebsd}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT INT TERM
export PKG_DBDIR="$root/var/db/pkg"
mkdir -p "$PKG_DBDIR"
opts="-o ABI=FreeBSD:14:amd64 -o OSVERSION=1400097 -r $root"
for p in "$dir"/statecull-broker-*.pkg "$dir"/statecull-engine-*.pkg "$dir"/statecull-[0-9]*.pkg; do
    "$pkg" info -F "$p" >/dev/null
    # shellcheck disable=SC2086 # $opts is a list of options
    "$pkg" $opts add -I "$p"
done
# shellcheck disable=SC2086
"$pkg" $opts check -s -a
# shellcheck disable=SC2086
"$pkg" $opts delete -y statecull statecull-engine statecull-broker
left=$(find "$root/usr" -type f 2>/dev/null | wc -l)
[ "$left" -eq 0 ] || { echo "pkg-roundtrip: $left files left after pkg delete" >&2; exit 1; }
echo "pkg-roundtrip: $($pkg -v): info, add, check -s, delete: ok"
