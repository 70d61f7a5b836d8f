#!/bin/bash
# The one command to try xreg on a fresh Debian 12 machine: install the packages, build, and run
# xregd in the foreground on its default configuration (etc/xregd.yaml). With that
# configuration's empty database.conninfo, xregd creates and starts its own PostgreSQL cluster
# in /var/lib/xreg/postgresql and applies the migrations. Stop it with Ctrl-C.
#
#   sudo bash tools/run.sh [-c CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
config=etc/xregd.yaml
if [ "${1:-}" = -c ] && [ -n "${2:-}" ]; then config=$2; fi
exec build/daemon/xregd -c "$config"
