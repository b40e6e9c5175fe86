#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A valid qcow2 image (qemu-img check: clean) whose compaction overflows the release array
of a data-move batch: 2048 L2 tables full of compressed entries that all point at one stream
which starts at sector 1 of a cluster and is 16 sectors long, so it touches 3 host clusters.
The stream lies past the new end, so every entry is rewritten in one batch (3 releases each)."""
import struct, sys
cs = 4096
out = sys.argv[1]
ntables = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
l2_entries = cs // 8
hdr, rt, rb0, nrb = 0, 1, 2, 3
l1c = 5
l1_size = ntables
l1_clusters = (l1_size * 8 + cs - 1) // cs
holes = l1c + l1_clusters
nholes = 8
l2c = holes + nholes
run = l2c + ntables
total = run + 3
assert total <= nrb * (cs * 8 // 32)
img = bytearray(total * cs)
def p(fmt, off, *v): struct.pack_into(fmt, img, off, *v)
p('>IIQIIQIIQQIIQQQQII', 0,
  0x514649fb, 3, 0, 0, 12, ntables * l2_entries * cs, 0, l1_size, l1c * cs,
  rt * cs, 1, 0, 0, 0, 0, 0, 5, 104)
# header: magic ver backing_off backing_size cluster_bits size crypt l1_size l1_off
#         reftable_off reftable_clusters nb_snap snap_off incompat compat autoclear rc_order hdr_len
for i in range(nrb):
    p('>Q', rt * cs + 8 * i, (rb0 + i) * cs)
refs = {}
def ref(c, n=1): refs[c] = refs.get(c, 0) + n
ref(hdr); ref(rt)
for i in range(nrb): ref(rb0 + i)
for i in range(l1_clusters): ref(l1c + i)
coff = run * cs + 512
csize_shift = 62 - (12 - 8)
desc = (1 << 62) | (15 << csize_shift) | coff
for t in range(ntables):
    c = l2c + t
    ref(c)
    p('>Q', l1c * cs + 8 * t, (1 << 63) | c * cs)
    base = c * cs
    for j in range(l2_entries):
        p('>Q', base + 8 * j, desc)
nent = ntables * l2_entries
for k in range(3):
    ref(run + k, nent)
img[run * cs:] = b'\xff' * (3 * cs)   # not a valid deflate stream: the zero pass keeps it
for c, n in refs.items():
    b, e = divmod(c, cs * 8 // 32)
    p('>I', (rb0 + b) * cs + 4 * e, n)
open(out, 'wb').write(img)
print(f"{out}: {total} clusters, {nent} compressed entries, stream at 0x{coff:x}")
