#!/bin/bash
# Install onnxruntime-node (CPU) into DIR for bench-nn.py; benchmarks only, not a dependency of
# the test suite. --ignore-scripts: the package's install script tries to download GPU add-ons
# (no internet here); the CPU library ships inside the package itself.
# Usage: setup-onnxruntime-node.sh DIR    (idempotent; DIR e.g. build/bench-node)
set -euo pipefail
version=1.30.0
dir=${1:?usage: setup-onnxruntime-node.sh DIR}
mkdir -p "$dir"
if [ -f "$dir/node_modules/onnxruntime-node/package.json" ] &&
   grep -q "\"version\": \"$version\"" "$dir/node_modules/onnxruntime-node/package.json"; then
    exit 0
fi
for p in node npm; do
    command -v "$p" >/dev/null || { echo "setup-onnxruntime-node: $p not found (apt-get install nodejs npm)" >&2; exit 1; }
done
[ -f "$dir/package.json" ] || echo '{"name": "xreg-bench-node", "private": true}' > "$dir/package.json"
cd "$dir"
npm install --ignore-scripts --no-audit --no-fund --loglevel=error "onnxruntime-node@$version" >&2
node -e 'require("onnxruntime-node")' || { echo "setup-onnxruntime-node: onnxruntime-node does not load" >&2; exit 1; }
