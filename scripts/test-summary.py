#!/usr/bin/env python3
"""Summarises a meson test log: each Check suite's own summary line, then one line
'N passed, N failed' counting Check tests individually and every other test (fuzz targets,
scripts) as one. A suite that failed after its checks passed (a sanitizer report at exit, a
crash) counts as one more failure. An optional second argument is the exit status of the
packaging test run outside meson (0 passed, 77 skipped, else failed)."""
import json
import re
import sys

CHECK = re.compile(r"(\d+)%: Checks: (\d+), Failures: (\d+), Errors: (\d+)")


def main(path, packaging=None):
    passed = failed = skipped = 0
    try:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        print(f"test-summary: {e}", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    for r in records:
        ok = r.get("result") in ("OK", "EXPECTEDFAIL", "SKIP")
        out = (r.get("stdout") or "") + (r.get("stderr") or "")
        m = CHECK.search(out)
        if m:
            checks, failures, errors = (int(m.group(i)) for i in (2, 3, 4))
            print(f"{r['name']}: {m.group(0)}")
            passed += checks - failures - errors
            failed += failures + errors
            if not ok and failures + errors == 0:
                failed += 1
        else:
            print(f"{r['name']}: {r.get('result')}")
            passed += ok
            failed += not ok
    if packaging is not None:
        print(f"packaging: {'OK' if packaging == 0 else 'SKIP' if packaging == 77 else 'FAIL'}")
        passed += packaging == 0
        skipped += packaging == 77
        failed += packaging not in (0, 77)
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build-test/meson-logs/testlog.json",
                  int(sys.argv[2]) if len(sys.argv) > 2 else None))
