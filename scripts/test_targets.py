#!/usr/bin/env python3
"""Prints, one per line, the Ninja targets (paths relative to the build folder) that the
tests of the given suites run and depend on, so that a build compiles only those:

    test_targets.py BUILD_DIR SUITE [SUITE ...]"""
import json
import os
import subprocess
import sys


def main(build: str, suites: list[str]) -> int:
    def introspect(what: str):
        out = subprocess.run(["meson", "introspect", build, what], check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    files = {t["id"]: t["filename"] for t in introspect("--targets")}
    root = os.path.abspath(build)
    wanted: set[str] = set()
    for t in introspect("--tests"):
        if not {s.split(":")[-1] for s in t["suite"]} & set(suites):
            continue
        paths = list(t["cmd"][:1])
        for dep in t.get("depends", []):
            paths += files.get(dep, [])
        for p in paths:
            p = os.path.abspath(p)
            if p.startswith(root + os.sep):
                wanted.add(os.path.relpath(p, root))
    for p in sorted(wanted):
        print(p)
    return 0 if wanted else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
