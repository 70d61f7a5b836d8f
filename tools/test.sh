#!/bin/bash
# The one command that installs, builds and runs the whole test suite (unit, integration against
# a private PostgreSQL and real DICOM peers). CI runs exactly this (.ci/run).
#
#   sudo bash tools/test.sh [meson test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
set +e
meson test -C build --print-errorlogs --num-processes 2 "$@"
rc=$?
set -e
# One closing line any CI can read: "N passed, N failed, N skipped".
/usr/bin/python3 - build/meson-logs/testlog.json <<'PY'
import json, sys
counts = {"OK": 0, "FAIL": 0, "SKIP": 0, "TIMEOUT": 0, "ERROR": 0, "EXPECTEDFAIL": 0, "UNEXPECTEDPASS": 0}
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        r = json.loads(line).get("result", "ERROR")
        counts[r] = counts.get(r, 0) + 1
failed = counts["FAIL"] + counts["TIMEOUT"] + counts["ERROR"] + counts["UNEXPECTEDPASS"]
print(f"{counts['OK'] + counts['EXPECTEDFAIL']} passed, {failed} failed, {counts['SKIP']} skipped")
PY
exit $rc
