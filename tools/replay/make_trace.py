#!/usr/bin/env python3
"""Writes synthetic routing traces for llep-replay: .npy files of top-k expert ids, shape
[tokens, K], int32 ('<i4') or int64 ('<i8'), using only the standard library (no NumPy).

Each token picks K distinct experts; each pick lands on one of the `--hot` hot experts with
probability `--share`, otherwise on any expert uniformly. With --steps S > 1 it writes
S files step-000.npy, step-001.npy, ... into OUT (a directory), and the hot experts move by
--drift ids every step (routing that drifts, as it does over a real run).

  python3 tools/replay/make_trace.py /tmp/trace --steps 3 --tokens 4096 --top-k 4 \\
      --experts 32 --hot 2 --share 0.5 --seed 1
"""
import argparse
import os
import random
import struct
import sys


def npy_bytes(rows, k, dtype, version):
    """The bytes of a C-order 2-D .npy array (format 1.0, 2.0 or 3.0)."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }" % (dtype, len(rows), k)
    length_size = 2 if version == 1 else 4
    # Pad with spaces so that the data starts on a multiple of 64 bytes, then a newline.
    pre = 6 + 2 + length_size
    total = pre + len(header) + 1
    header += " " * ((64 - total % 64) % 64) + "\n"
    out = b"\x93NUMPY" + bytes([version, 0])
    out += struct.pack("<H" if version == 1 else "<I", len(header))
    out += header.encode("latin1" if version < 3 else "utf8")
    fmt = "<%d%s" % (len(rows) * k, "i" if dtype == "<i4" else "q")
    out += struct.pack(fmt, *(e for row in rows for e in row))
    return out


def route(rng, tokens, k, experts, hot_ids, share):
    rows = []
    for _ in range(tokens):
        picked = []
        while len(picked) < k:
            pool = hot_ids if hot_ids and rng.random() < share else range(experts)
            e = rng.choice(pool)
            if e not in picked:  # top-k ids of one token are distinct
                picked.append(e)
        rows.append(picked)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output .npy file (--steps 1) or directory (--steps > 1)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--hot", type=int, default=1, help="hot experts (ids 0 .. hot-1 at step 0)")
    ap.add_argument("--share", type=float, default=0.5, help="probability that a pick is a hot expert")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--drift", type=int, default=0, help="ids the hot set moves by per step")
    ap.add_argument("--dtype", choices=["<i4", "<i8"], default="<i4")
    ap.add_argument("--version", type=int, choices=[1, 2, 3], default=1, help=".npy format version")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.top_k < 1 or a.top_k > a.experts or a.tokens < 0 or not 0 <= a.hot <= a.experts:
        sys.exit("error: need 1 <= top-k <= experts, tokens >= 0, 0 <= hot <= experts")
    rng = random.Random(a.seed)
    if a.steps > 1:
        os.makedirs(a.out, exist_ok=True)
    for s in range(a.steps):
        hot_ids = [(h + s * a.drift) % a.experts for h in range(a.hot)]
        rows = route(rng, a.tokens, a.top_k, a.experts, hot_ids, a.share)
        path = a.out if a.steps == 1 else os.path.join(a.out, "step-%03d.npy" % s)
        with open(path, "wb") as f:
            f.write(npy_bytes(rows, a.top_k, a.dtype, a.version))


if __name__ == "__main__":
    main()
