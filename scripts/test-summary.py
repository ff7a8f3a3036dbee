#!/usr/bin/env python3
"""Summarises a meson test log: each Check suite's and pytest run's own summary line, then one
line 'N passed, N failed' counting Check and pytest tests individually (pytest's xfailed as
skipped) and every other test (fuzz targets, scripts) as one. A suite that failed after its
checks passed (a sanitizer report at exit, a crash) counts as one more failure. An optional
second argument is the exit status of the packaging test run outside meson (0 passed, 77
skipped, else failed)."""
import json
import re
import sys

CHECK = re.compile(r"(\d+)%: Checks: (\d+), Failures: (\d+), Errors: (\d+)")
# pytest -q's last line: "53 passed, 1 xfailed in 8.74s" (counts in any order, each optional).
PYTEST = re.compile(r"^=*\s*((?:\d+ [a-z]+(?:, )?)+) in [\d.]+s", re.MULTILINE)


def pytest_counts(out):
    """passed, failed, skipped of a pytest summary line in out, or None."""
    found = PYTEST.findall(out)
    if not found:
        return None
    counts = {}
    for part in found[-1].split(", "):
        n, what = part.split(" ", 1)
        counts[what] = int(n)
    get = counts.get
    return (found[-1], get("passed", 0) + get("xpassed", 0),
            get("failed", 0) + get("error", 0) + get("errors", 0),
            get("skipped", 0) + get("xfailed", 0))


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
        py = None if m else pytest_counts(out)
        if py:
            line, p, f, sk = py
            print(f"{r['name']}: {line}")
            passed += p
            failed += f
            skipped += sk
            if not ok and f == 0:
                failed += 1
        elif m:
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
