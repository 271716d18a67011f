#!/usr/bin/env python3
"""Sums doctest test-case counts over one or more Meson testlog.json files.

    summarize_tests.py [LABEL=]build/meson-logs/testlog.json [[LABEL=]other/testlog.json ...]

With several logs, prints one line per build ("LABEL: N passed, N failed, N skipped"),
then, as with one log, the skipped count and one closing line "N passed, N failed" summed
over every build. A test whose output has no doctest summary counts as one case by its
Meson result. A build whose log is missing counts as one failure. Exits non-zero on any
failure, or when nothing ran."""
import json
import re
import sys

SUMMARY = re.compile(r"\[doctest\] test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed\s*\|\s*(\d+) skipped")


def count(path: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) of one testlog.json."""
    passed = failed = skipped = 0
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        print(f"no test log ({e})")
        return 0, 1, 0
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
    return passed, failed, skipped


def main(args: list[str]) -> int:
    logs = args or ["build/meson-logs/testlog.json"]
    passed = failed = skipped = 0
    for arg in logs:
        label, sep, path = arg.partition("=")
        if not sep:
            label, path = arg, arg
        p, f, s = count(path)
        if len(logs) > 1:
            print(f"{label}: {p} passed, {f} failed, {s} skipped")
        passed, failed, skipped = passed + p, failed + f, skipped + s
    # Skips (GPU suites without a device) are neither passes nor failures; CI reads the last line.
    print(f"{skipped} skipped")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
