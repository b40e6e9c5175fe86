#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Block-level oracles for the zero-fill tests.

  blockscan.py hash OUT FILE...        digests of every non-zero 4 KiB block of FILEs -> OUT
  blockscan.py scan DEVICE HASHES      how many 4 KiB blocks of DEVICE still hold one of them
  blockscan.py extents DEVICE FILEFRAG how many blocks of the physical extents listed in
                                       `filefrag -v` output are zero: "zero TOTAL"
"""
import hashlib
import re
import sys

BS = 4096
ZERO = bytes(BS)


def blocks(path):
    with open(path, "rb") as f:
        while True:
            b = f.read(BS * 256)
            if not b:
                return
            for i in range(0, len(b) - BS + 1, BS):
                yield b[i:i + BS]


def digest(b):
    return hashlib.blake2b(b, digest_size=16).digest()


def cmd_hash(out, files):
    seen = set()
    for p in files:
        for b in blocks(p):
            if b != ZERO:
                seen.add(digest(b))
    with open(out, "wb") as f:
        for d in sorted(seen):
            f.write(d)
    print(len(seen))


def cmd_scan(device, hashes):
    with open(hashes, "rb") as f:
        data = f.read()
    want = {data[i:i + 16] for i in range(0, len(data), 16)}
    found = sum(1 for b in blocks(device) if b != ZERO and digest(b) in want)
    print(found)


def cmd_extents(device, filefrag):
    text = open(filefrag).read()
    m = re.search(r"blocks of (\d+) bytes", text)
    fsbs = int(m.group(1)) if m else BS
    ext = re.compile(r"^\s*\d+:\s*\d+\.\.\s*\d+:\s*(\d+)\.\.\s*(\d+):")
    zero = total = 0
    with open(device, "rb") as dev:
        for line in text.splitlines():
            m = ext.match(line)
            if not m:
                continue
            start, end = int(m.group(1)), int(m.group(2))
            dev.seek(start * fsbs)
            left = (end - start + 1) * fsbs
            while left > 0:
                b = dev.read(min(left, BS * 256))
                if not b:
                    break
                left -= len(b)
                for i in range(0, len(b), BS):
                    total += 1
                    if b[i:i + BS] == ZERO[:len(b[i:i + BS])]:
                        zero += 1
    print(zero, total)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "hash":
        cmd_hash(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 4 and sys.argv[1] == "scan":
        cmd_scan(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "extents":
        cmd_extents(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
