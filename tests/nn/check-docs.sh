#!/bin/bash
# docs/nn.md must list exactly the ops nn/ claims (nn-conformance --list-ops).
set -euo pipefail
runner=$1 doc=$2
section=$(sed -n '/^## Claimed ops/,/^## /p' "$doc")
missing=0
for op in $("$runner" --list-ops); do
    if ! grep -q "\`$op\`" <<<"$section"; then
        echo "docs/nn.md does not list claimed op $op"
        missing=1
    fi
done
listed=$(grep -o '`[A-Z][A-Za-z]*`' <<<"$section" | tr -d '`' | sort -u)
for op in $listed; do
    if ! "$runner" --list-ops | grep -qx "$op"; then
        echo "docs/nn.md lists $op, which nn/ does not claim"
        missing=1
    fi
done
exit $missing
