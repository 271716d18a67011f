#!/usr/bin/env python3
"""Prints, one per line, the Ninja targets (paths relative to the build folder) that the
tests of the given suites run and depend on, so that a build compiles only those; a test
that is also in a suite given as !SUITE is left out (meson test --no-suite skips it):

    test_targets.py BUILD_DIR SUITE [SUITE ...] [!SUITE ...]"""
import json
import os
import subprocess
import sys


def main(build: str, args: list[str]) -> int:
    suites = {a for a in args if not a.startswith("!")}
    skipped = {a[1:] for a in args if a.startswith("!")}

    def introspect(what: str):
        out = subprocess.run(["meson", "introspect", build, what], check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    files = {t["id"]: t["filename"] for t in introspect("--targets")}
    root = os.path.realpath(build)  # Meson records its build folder's real path
    wanted: set[str] = set()
    for t in introspect("--tests"):
        names = {s.split(":")[-1] for s in t["suite"]}
        if not names & suites or names & skipped:
            continue
        paths = list(t["cmd"][:1])
        for dep in t.get("depends", []):
            paths += files.get(dep, [])
        for p in paths:
            p = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
            if p.startswith(root + os.sep):
                wanted.add(os.path.relpath(p, root))
    for p in sorted(wanted):
        print(p)
    return 0 if wanted else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
