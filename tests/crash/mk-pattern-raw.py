#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""mk-pattern-raw.py RAW CLUSTER_SIZE CLUSTERS: the raw source of the compressed test images.

In every 5 clusters: one of zeros, one of a pattern, three half random (they compress to
streams of about half a cluster, which straddle host clusters). Seeded by size and count,
so the same arguments give the same bytes (test-crash.sh, test-compressed-runs.sh).
"""
import random
import sys

cs, n = int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(cs * 7 + n)
with open(sys.argv[1], "wb") as f:
    for i in range(n):
        k = i % 5
        if k == 0:
            f.write(bytes(cs))
        elif k == 1:
            f.write(bytes([i % 251 + 1]) * cs)
        else:
            f.write(rnd.randbytes(cs // 2) + bytes([k]) * (cs - cs // 2))
