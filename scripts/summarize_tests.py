#!/usr/bin/env python3
"""Sums doctest test-case counts over Meson's testlog.json and prints the skipped count, then one closing line "N passed, N failed".

A test whose output has no doctest summary counts as one case by its Meson result.
Exits non-zero on any failure, or when nothing ran."""
import json
import re
import sys

SUMMARY = re.compile(r"\[doctest\] test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed\s*\|\s*(\d+) skipped")


def main(path: str) -> int:
    passed = failed = skipped = 0
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        print(f"no test log ({e})")
        print("0 passed, 1 failed")
        return 1
    with f:
        for line in f:
            if not line.strip():
                continue
            t = json.loads(line)
            result = t.get("result", "")
            m = None
            for m in SUMMARY.finditer(t.get("stdout", "") or ""):
                pass
            if result == "SKIP":
                skipped += 1
            elif m:
                passed += int(m.group(2))
                f_cases = int(m.group(3))
                # A crash after the summary, or a non-zero exit, still fails the run.
                failed += f_cases if f_cases or result == "OK" else 1
                skipped += int(m.group(4))
            elif result == "OK":
                passed += 1
            else:
                failed += 1
    # Skips (GPU suites without a device) are neither passes nor failures; CI reads the last line.
    print(f"{skipped} skipped")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/meson-logs/testlog.json"))
