#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Writes broken variants of a valid qcow2 image (with a snapshot and a bitmap) into OUTDIR,
one file per kind of damage. Every variant must be refused by the compactor."""
import os
import struct
import sys

src, out = sys.argv[1], sys.argv[2]
base = open(src, 'rb').read()
u32 = lambda d, o: struct.unpack_from('>I', d, o)[0]
u64 = lambda d, o: struct.unpack_from('>Q', d, o)[0]
cs = 1 << u32(base, 20)
l1 = u64(base, 40)
rt = u64(base, 48)
l2 = u64(base, l1) & 0x00fffffffffffe00
data = u64(base, l2) & 0x00fffffffffffe00
rb = u64(base, rt) & ~0x1ff
snap = u64(base, 64)
M = 0x00fffffffffffe00


def put(d, off, fmt, v):
    struct.pack_into(fmt, d, off, v)


variants = {}


def v(name, fn):
    d = bytearray(base)
    r = fn(d)
    variants[name] = bytes(r if isinstance(r, (bytes, bytearray)) else d)


v('bad-magic', lambda d: put(d, 0, '>I', 0x51464900))
v('truncated-50', lambda d: d[:50])
v('truncated-header-cluster', lambda d: d[:cs - 8])
v('truncated-in-l1', lambda d: d[:l1 + 4])
v('truncated-in-reftable', lambda d: d[:rt + 4] if rt > l1 else d[:rt + 4])
v('truncated-in-l2', lambda d: d[:l2 + cs // 2])
v('truncated-last-cluster', lambda d: d[:len(d) - 2 * cs])
v('l1-past-eof', lambda d: put(d, l1, '>Q', (1 << 40) | (1 << 63)))
v('l1-unaligned', lambda d: put(d, l1, '>Q', (l2 + 512) | (1 << 63)))
v('l1-reserved-bits', lambda d: put(d, l1, '>Q', u64(d, l1) | 0x100))
v('l2-overlaps-reftable', lambda d: put(d, l1, '>Q', rt | (1 << 63)))
v('l2-overlaps-l1', lambda d: put(d, l1, '>Q', l1 | (1 << 63)))
v('data-overlaps-reftable', lambda d: put(d, l2, '>Q', rt | (1 << 63)))
v('data-overlaps-refblock', lambda d: put(d, l2, '>Q', rb | (1 << 63)))
v('data-twice', lambda d: put(d, l2 + 8, '>Q', data | (1 << 63)))
v('data-past-eof', lambda d: put(d, l2, '>Q', (1 << 45) | (1 << 63)))
v('l2-reserved-bits', lambda d: put(d, l2, '>Q', u64(d, l2) | 0x2))
v('compressed-past-eof', lambda d: put(d, l2, '>Q', (1 << 62) | (1 << 44)))
v('compressed-with-copied', lambda d: put(d, l2, '>Q', u64(d, l2) | (1 << 62)))
v('refblock-past-eof', lambda d: put(d, rt, '>Q', 1 << 40))
v('refblock-is-reftable', lambda d: put(d, rt, '>Q', rt))
v('refblock-unaligned', lambda d: put(d, rt, '>Q', rb + 512))
v('refcount-zero-for-l2', lambda d: put(d, rb + (l2 // cs) * 2, '>H', 0))
v('refcount-zero-for-header', lambda d: put(d, rb, '>H', 0))
v('l1-size-huge', lambda d: put(d, 36, '>I', 0x7fffffff))
v('reftable-clusters-huge', lambda d: put(d, 56, '>I', 0xffffffff))
v('snapshots-huge', lambda d: put(d, 60, '>I', 0x7fffffff))
v('snapshot-l1-past-eof', lambda d: put(d, snap, '>Q', 1 << 40))
v('snapshot-l1-size-huge', lambda d: put(d, snap + 8, '>I', 0x7fffffff))
v('snapshot-extra-huge', lambda d: put(d, snap + 36, '>I', 0x7fffffff))
v('cluster-bits-30', lambda d: put(d, 20, '>I', 30))
v('refcount-order-9', lambda d: put(d, 96, '>I', 9))
v('header-length-huge', lambda d: put(d, 100, '>I', 0x10000000))
v('backing-offset-outside', lambda d: (put(d, 8, '>Q', cs * 4), put(d, 16, '>I', 100)))
v('incompat-unknown', lambda d: put(d, 72, '>Q', 1 << 20))
v('incompat-dirty', lambda d: put(d, 72, '>Q', 1))
v('incompat-corrupt', lambda d: put(d, 72, '>Q', 2))
v('crypt-method-aes', lambda d: put(d, 32, '>I', 1))

os.makedirs(out, exist_ok=True)
for name, content in variants.items():
    with open(os.path.join(out, name), 'wb') as f:
        f.write(content)
print(len(variants))
