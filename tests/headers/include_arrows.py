#!/usr/bin/env python3
"""Include arrows run one way (issue 10 item 5): core knows no family, experts and
planners do not include the layer, planners do not include file I/O, and no library
header includes the core/concepts.hpp umbrella. Prints every violation; exit 1 if any."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1]) / "llep"
inc = re.compile(r'^\s*#\s*include\s+"llep/([^"]+)"', re.M)
FILE_IO = {"sim/file.hpp", "sim/gemm_csv.hpp", "sim/loads_text.hpp"}
rules = [
    # (family of the including header, predicate on the included path, rule text)
    ("core", lambda h: not h.startswith("core/"), "core/ includes only core/"),
    ("experts", lambda h: h.startswith("layer/"), "experts/ does not include layer/"),
    ("plan", lambda h: h.startswith("layer/") or h in FILE_IO, "plan/ includes neither layer/ nor file I/O"),
    ("stats", lambda h: h.startswith("layer/"), "stats/ does not include layer/"),
    ("transport", lambda h: h.startswith("layer/"), "transport/ does not include layer/"),
    ("exec", lambda h: h.startswith("layer/"), "exec/ does not include layer/"),
]
bad = []
headers = sorted(p for p in root.rglob("*") if p.suffix in (".hpp", ".cuh"))
for p in headers:
    rel = p.relative_to(root).as_posix()
    family = rel.split("/")[0]
    for h in inc.findall(p.read_text()):
        if h == "core/concepts.hpp" and rel != "core/concepts.hpp":
            bad.append(f"{rel} includes the umbrella core/concepts.hpp; include the family header instead")
        if rel == "core/concepts.hpp":
            continue  # the umbrella itself includes every family by design
        for fam, violates, text in rules:
            if family == fam and violates(h):
                bad.append(f"{rel} includes llep/{h}: {text}")
for b in bad:
    print(b)
print(f"{len(headers)} headers checked, {len(bad)} violations")
sys.exit(1 if bad else 0)
