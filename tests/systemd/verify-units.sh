#!/bin/bash
# Check the installed unit as systemd would load it: systemd-analyze verify (syntax, directives,
# executables) and the offline security score, which must stay at or below 1.5 ("OK").
#
#   verify-units.sh UNIT_TEMPLATE XREGD XREGCTL CONFIG
set -euo pipefail
template=$1 xregd=$2 xregctl=$3 config=$4
if ! command -v systemd-analyze >/dev/null; then
    echo "systemd-analyze not found (install systemd)" >&2
    [ "${CI:-}" = true ] && exit 1
    exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# The built binaries stand in for the installed ones, so that verify can check they exist.
sed -e "s|@BINDIR@/xregctl|$xregctl|; s|@SBINDIR@/xregd|$xregd|; s|@CONFIG@|$config|g" \
    -e "s|@DOCDIR@|/usr/share/doc/xreg|" "$template" >"$dir/xregd.service"
(cd "$dir" && systemd-analyze verify ./xregd.service)
echo "systemd-analyze verify: ok"
out=$(cd "$dir" && systemd-analyze security --offline=true --threshold=15 ./xregd.service 2>&1) || {
    echo "$out"
    echo "exposure above 1.5" >&2
    exit 1
}
echo "$out" | grep -E '✗|Overall'
