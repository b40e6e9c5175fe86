#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Independent qcow2 reader used by the integration tests (stdlib only).

It shares no code with the engine on purpose: it is the second opinion the tests
compare the engine's results against.

    qcow2-oracle.py info IMAGE [--flat FILE]   JSON summary (see below); --flat also writes
                                               "key<TAB>value" lines to FILE
    qcow2-oracle.py host-offset IMAGE GUEST    host offset of the data cluster that holds
                                               guest byte GUEST (0 if none); prints an integer
    qcow2-oracle.py l2-table IMAGE GUEST       host offset of the L2 table mapping guest byte GUEST
    qcow2-oracle.py set-l2-entry IMAGE GUEST VALUE
                                               overwrite the (first 64 bits of the) L2 entry
    qcow2-oracle.py refcount IMAGE CLUSTER     refcount of host cluster CLUSTER (index)
    qcow2-oracle.py set-refcount IMAGE CLUSTER VALUE
                                               write a refcount in place (the covering
                                               refcount block must exist)
    qcow2-oracle.py free-cluster IMAGE         index of the first cluster inside the file
                                               with refcount 0 (-1 if none)
    qcow2-oracle.py set-incompat IMAGE BIT     set incompatible feature bit BIT (v3)
    qcow2-oracle.py add-extension IMAGE TYPE   insert an 8-byte header extension of type TYPE
                                               in front of the existing ones (v3)
    qcow2-oracle.py snapshots IMAGE            JSON list of the internal snapshots
    qcow2-oracle.py bitmaps IMAGE              JSON list of the persistent bitmaps
    qcow2-oracle.py set-bitmap-flags IMAGE INDEX FLAGS
                                               overwrite the flags of bitmap directory entry INDEX

`info` keys: version, cluster_bits, cluster_size, virtual_size, file_size, file_clusters,
refcount_bits, incompatible_features, compatible_features, autoclear_features, compression_type,
extended_l2, backing_file, extensions, refcount_table_offset, refcount_table_clusters,
refcount_blocks, refcount_block_offsets, used_clusters (refcount > 0, whole refcount structure),
used_clusters_in_file, max_refcount, used_end (bytes: end of the highest cluster with refcount
> 0), highest_data_end (bytes), min_clusters, min_size, and:

  every L1 tree (the active one and each snapshot's) is walked, the way qemu-img check counts:
  l1_size, l1_offset, l1_clusters (active L1); nb_snapshots, snapshots (list),
  snapshot_table_offset / _size / _clusters, snapshot_l1_clusters (sum over snapshots);
  l2_tables (distinct L2 tables, all trees), l2_offsets, active_l2_tables, empty_l2_tables
  (distinct tables without any allocated entry); data_clusters (distinct host clusters of
  standard entries, all trees: normal + zero-alloc), active_data_clusters, shared_data_clusters
  (reached by more than one path); zero_content_host_clusters (distinct host clusters that a
  normal entry of any tree reads and that are all zeros);
  active tree only, counted per entry: normal_clusters, zero_alloc_clusters (zero flag + host
  cluster; extended L2: a host cluster without any allocated subcluster), zero_plain_entries,
  zero_flag_entries, compressed_entries, zero_content_clusters (normal entries whose bytes, the
  allocated subclusters' for extended L2, are all zero), ext_alloc_subclusters,
  ext_zero_subclusters;
  compressed: compressed_entries_all (all trees, per entry), compressed_host_clusters (distinct
  host clusters touched by compressed streams), compressed_zero_entries (distinct compressed
  descriptors that inflate to all zeros; null when they cannot be inflated here),
  compressed_streams (distinct descriptors), compressed_distinct_contents (distinct inflated
  clusters among them), compressed_inflate_errors;
  bitmaps: nb_bitmaps, bitmaps (list), bitmaps_consistent (autoclear bit 0),
  bitmap_directory_clusters, bitmap_table_clusters, bitmap_data_clusters;
  leaked_clusters / refcount_errors / references_past_eof (cross-check of refcounts against
  every reference; only meaningful when `complete` is true), complete (no encryption and no
  external data file).

min_clusters_whole = the smallest N for which everything at or past cluster N fits into the
free clusters below N when nothing wholly below N moves and contiguous objects move whole: tables
(L1s, refcount table, snapshot table, bitmap directory and tables) and runs of compressed host
clusters joined by streams that span two clusters (moving a run whole keeps every stream's
offset inside it); refcount blocks that describe clusters below N count as single clusters.
It is min_clusters unless such runs do not fit in the holes: then a compactor that moves
whole clusters (and not single streams) into holes cannot do better.

min_clusters_packed = like min_clusters, but the compressed data counts as its live streams
packed end to end (compressed_live_bytes: the exact length of every distinct stream, what its
decoder consumes; its whole descriptor range when it does not decode) rounded up to clusters:
the smallest file a compactor that re-packs streams one by one can reach.

min_clusters = every distinct cluster referenced (header, every L1 table, the snapshot table,
L2 tables, data clusters, host clusters touched by compressed streams, bitmap directory, bitmap
tables and bitmap data clusters, refcount table) + the refcount blocks needed to cover exactly
that many clusters.
"""

import ctypes
import ctypes.util
import hashlib
import json
import os
import struct
import sys
import zlib

MAGIC = 0x514649FB
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO_FLAG = 1
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77


class Qcow2Error(Exception):
    pass


class Image:
    def __init__(self, path, writable=False):
        self.path = path
        self.f = open(path, "r+b" if writable else "rb")
        self.file_size = os.fstat(self.f.fileno()).st_size
        self._parse_header()

    def close(self):
        self.f.close()

    def pread(self, off, length):
        self.f.seek(off)
        data = self.f.read(length)
        if len(data) < length:
            data += b"\0" * (length - len(data))
        return data

    def pwrite(self, off, data):
        self.f.seek(off)
        self.f.write(data)
        self.f.flush()
        os.fsync(self.f.fileno())

    def _parse_header(self):
        h = self.pread(0, 112)
        (magic, version, backing_off, backing_len, cluster_bits, size, crypt, l1_size,
         l1_off, rt_off, rt_clusters, nb_snap, snap_off) = struct.unpack(">IIQIIQIIQQIIQ", h[:72])
        if magic != MAGIC:
            raise Qcow2Error("not a qcow2 image")
        if version not in (2, 3):
            raise Qcow2Error("unsupported version %d" % version)
        if not 9 <= cluster_bits <= 21:
            raise Qcow2Error("bad cluster_bits %d" % cluster_bits)
        self.version = version
        self.cluster_bits = cluster_bits
        self.cs = 1 << cluster_bits
        self.virtual_size = size
        self.crypt_method = crypt
        self.l1_size = l1_size
        self.l1_off = l1_off
        self.rt_off = rt_off
        self.rt_clusters = rt_clusters
        self.nb_snapshots = nb_snap
        self.snapshots_offset = snap_off
        if version == 3:
            (self.incompat, self.compat, self.autoclear, refcount_order,
             self.header_length) = struct.unpack(">QQQII", h[72:104])
            ext_start = self.header_length
            self.compression_type = h[104] if self.header_length > 104 else 0
        else:
            self.compression_type = 0
            self.incompat = self.compat = self.autoclear = 0
            refcount_order = 4
            self.header_length = 72
            ext_start = 72
        if refcount_order > 6:
            raise Qcow2Error("bad refcount_order %d" % refcount_order)
        self.refcount_bits = 1 << refcount_order
        self.extended_l2 = bool(self.incompat & (1 << 4))
        self.backing_file = None
        if backing_off:
            self.backing_file = self.pread(backing_off, backing_len).decode("utf-8", "replace")
        # header extensions
        self.extensions = []
        off = ext_start
        limit = backing_off if backing_off else self.cs
        while off + 8 <= limit:
            etype, elen = struct.unpack(">II", self.pread(off, 8))
            if etype == 0:
                break
            self.extensions.append((etype, off, elen))
            off += 8 + ((elen + 7) & ~7)
        self.ext_end = off  # offset of the end-of-extensions marker

    # ---- refcounts -------------------------------------------------------------------
    @property
    def rb_entries(self):
        return self.cs * 8 // self.refcount_bits

    def reftable(self):
        n = self.rt_clusters * self.cs // 8
        raw = self.pread(self.rt_off, n * 8)
        return list(struct.unpack(">%dQ" % n, raw))

    def _decode_block(self, block):
        bits = self.refcount_bits
        n = self.rb_entries
        if bits >= 8:
            w = bits // 8
            fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[w]
            return list(struct.unpack(">%d%s" % (n, fmt), block))
        mask = (1 << bits) - 1
        per_byte = 8 // bits
        out = []
        for byte in block:
            for j in range(per_byte):  # sub-byte widths: entry 0 in the least significant bits
                out.append((byte >> (j * bits)) & mask)
        return out

    def refcounts(self):
        """dict cluster index -> refcount (only non-zero)"""
        res = {}
        for i, e in enumerate(self.reftable()):
            rb = e & ~0x1FF
            if not rb:
                continue
            vals = self._decode_block(self.pread(rb, self.cs))
            base = i * self.rb_entries
            for j, v in enumerate(vals):
                if v:
                    res[base + j] = v
        return res

    def _refcount_location(self, cluster):
        rt_index = cluster // self.rb_entries
        rt = self.reftable()
        if rt_index >= len(rt) or not (rt[rt_index] & ~0x1FF):
            raise Qcow2Error("no refcount block covers cluster %d" % cluster)
        return rt[rt_index] & ~0x1FF, cluster % self.rb_entries

    def get_refcount(self, cluster):
        rb, idx = self._refcount_location(cluster)
        return self._decode_block(self.pread(rb, self.cs))[idx]

    def set_refcount(self, cluster, value):
        rb, idx = self._refcount_location(cluster)
        bits = self.refcount_bits
        if value < 0 or value >= (1 << bits):
            raise Qcow2Error("refcount %d does not fit in %d bits" % (value, bits))
        if bits >= 8:
            w = bits // 8
            self.pwrite(rb + idx * w, value.to_bytes(w, "big"))
        else:
            byte_off = rb + idx * bits // 8
            shift = (idx * bits) % 8
            mask = ((1 << bits) - 1) << shift
            b = self.pread(byte_off, 1)[0]
            b = (b & ~mask) | (value << shift)
            self.pwrite(byte_off, bytes([b]))

    # ---- L1 / L2 ---------------------------------------------------------------------
    def l1(self):
        raw = self.pread(self.l1_off, self.l1_size * 8)
        return list(struct.unpack(">%dQ" % self.l1_size, raw))

    def l2_entries(self):
        return self.cs // (16 if self.extended_l2 else 8)

    def read_l2(self, off):
        raw = self.pread(off, self.cs)
        if self.extended_l2:
            vals = struct.unpack(">%dQ" % (self.cs // 8), raw)
            return list(vals[0::2])
        return list(struct.unpack(">%dQ" % (self.cs // 8), raw))

    def l2_entry_pos(self, guest):
        """file offset of the (first 8 bytes of the) L2 entry mapping guest byte GUEST"""
        ci = guest // self.cs
        l1i, l2i = divmod(ci, self.l2_entries())
        l1 = self.l1()
        if l1i >= len(l1) or not (l1[l1i] & OFFSET_MASK):
            raise Qcow2Error("no L2 table maps guest offset %d" % guest)
        return (l1[l1i] & OFFSET_MASK) + l2i * (16 if self.extended_l2 else 8)

    def host_offset(self, guest):
        try:
            pos = self.l2_entry_pos(guest)
        except Qcow2Error:
            return 0
        e = struct.unpack(">Q", self.pread(pos, 8))[0]
        if e & COMPRESSED:
            return 0
        return e & OFFSET_MASK

    def set_l2_entry(self, guest, value):
        self.pwrite(self.l2_entry_pos(guest), struct.pack(">Q", value))

    def read_l2_ext(self, off):
        """list of (entry, subcluster bitmap); the bitmap is 0 for standard L2 tables"""
        raw = self.pread(off, self.cs)
        vals = struct.unpack(">%dQ" % (self.cs // 8), raw)
        if self.extended_l2:
            return list(zip(vals[0::2], vals[1::2]))
        return [(v, 0) for v in vals]

    # ---- compressed clusters ---------------------------------------------------------
    def compressed_range(self, e):
        """(byte offset, byte length) of the compressed stream, as qemu-img check counts it"""
        shift = 62 - (self.cluster_bits - 8)
        coff = e & ((1 << shift) - 1)
        nsect = ((e >> shift) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return coff, nsect * 512 - (coff & 511)

    def stream_length(self, e):
        """bytes of the compressed stream itself (what a decoder consumes to produce one
        cluster and reach the stream's end); the descriptor's whole range when unknown"""
        coff, clen = self.compressed_range(e)
        data = self.pread(coff, clen)
        if self.compression_type == 0:
            try:
                d = zlib.decompressobj(-15)  # raw deflate
                out = d.decompress(data)
            except zlib.error:
                return clen
            if d.eof and len(out) == self.cs:
                return len(data) - len(d.unused_data)
        elif self.compression_type == 1:
            n = zstd_frame_size(data)
            if n and zstd_decompress(data, self.cs) is not None:
                return n
        return clen

    def inflate(self, e):
        """the cluster a compressed entry holds; None when it cannot be inflated here"""
        coff, clen = self.compressed_range(e)
        data = self.pread(coff, clen)
        if self.compression_type == 0:
            try:
                d = zlib.decompressobj(-15)  # raw deflate
                out = d.decompress(data, self.cs)
            except zlib.error:
                return None
        elif self.compression_type == 1:
            out = zstd_decompress(data, self.cs)
        else:
            return None
        if out is None or len(out) != self.cs:
            return None
        return out

    # ---- snapshots -------------------------------------------------------------------
    def snapshots(self):
        res = []
        off = self.snapshots_offset
        for i in range(self.nb_snapshots):
            (l1o, l1s, idl, nl, dsec, dnsec, vmclk, vmss,
             exl) = struct.unpack(">QIHHIIQII", self.pread(off, 40))
            extra = self.pread(off + 40, exl)
            ident = self.pread(off + 40 + exl, idl).decode("utf-8", "replace")
            name = self.pread(off + 40 + exl + idl, nl).decode("utf-8", "replace")
            vm_large = struct.unpack(">Q", extra[:8])[0] if exl >= 8 else vmss
            disk_size = struct.unpack(">Q", extra[8:16])[0] if exl >= 16 else None
            res.append({"id": ident, "name": name, "l1_offset": l1o, "l1_size": l1s,
                        "date_sec": dsec, "date_nsec": dnsec, "vm_clock_nsec": vmclk,
                        "vm_state_size": vm_large, "disk_size": disk_size,
                        "extra_data_size": exl})
            off += (40 + exl + idl + nl + 7) & ~7
        self.snapshot_table_size = off - self.snapshots_offset
        return res

    # ---- bitmaps ---------------------------------------------------------------------
    def _bitmap_digest(self, table):
        """sha256 of the bitmap's bits (all-zeros / all-ones entries expanded)"""
        h = hashlib.sha256()
        for t in table:
            if t & OFFSET_MASK:
                h.update(self.pread(t & OFFSET_MASK, self.cs))
            else:
                h.update((b"\xff" if t & 1 else b"\0") * self.cs)
        return h.hexdigest()[:16]

    def bitmaps(self):
        """None without a bitmaps extension, else the directory"""
        ext = [e for e in self.extensions if e[0] == EXT_BITMAPS]
        if not ext:
            return None
        eoff = ext[0][1]
        nb, _res, dsize, doff = struct.unpack(">IIQQ", self.pread(eoff + 8, 24))
        raw = self.pread(doff, dsize)
        entries = []
        p = 0
        for i in range(nb):
            to, ts, fl, ty, gb, ns, es = struct.unpack(">QIIBBHI", raw[p:p + 24])
            name = raw[p + 24 + es:p + 24 + es + ns].decode("utf-8", "replace")
            table = list(struct.unpack(">%dQ" % ts, self.pread(to, ts * 8))) if ts else []
            entries.append({"name": name, "table_offset": to, "table_size": ts, "flags": fl,
                            "type": ty, "granularity_bits": gb, "entry_pos": doff + p,
                            "data_clusters": sum(1 for t in table if t & OFFSET_MASK),
                            "digest": self._bitmap_digest(table),
                            "all_ones_entries": sum(1 for t in table
                                                    if not t & OFFSET_MASK and t & 1),
                            "table": table})
            p += (24 + es + ns + 7) & ~7
        return {"nb_bitmaps": nb, "directory_offset": doff, "directory_size": dsize,
                "consistent": bool(self.autoclear & 1), "entries": entries}

_ZSTD = None


def zstd_frame_size(data):
    """bytes of the zstd frame at the start of data; None if unavailable/invalid"""
    if zstd_decompress(b"", 0) is None and not _ZSTD:
        return None
    n = _ZSTD.ZSTD_findFrameCompressedSize(data, len(data))
    return None if _ZSTD.ZSTD_isError(n) else n


def zstd_decompress(data, size):
    """one zstd frame (trailing bytes ignored) through libzstd; None if unavailable/invalid"""
    global _ZSTD
    if _ZSTD is None:
        _ZSTD = False
        for name in (ctypes.util.find_library("zstd"), "libzstd.so.1"):
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            lib.ZSTD_findFrameCompressedSize.restype = ctypes.c_size_t
            lib.ZSTD_findFrameCompressedSize.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
            lib.ZSTD_decompress.restype = ctypes.c_size_t
            lib.ZSTD_decompress.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                                            ctypes.c_size_t)
            lib.ZSTD_isError.restype = ctypes.c_uint
            lib.ZSTD_isError.argtypes = (ctypes.c_size_t,)
            _ZSTD = lib
            break
    if not _ZSTD:
        return None
    n = _ZSTD.ZSTD_findFrameCompressedSize(data, len(data))
    if _ZSTD.ZSTD_isError(n):
        return None
    buf = ctypes.create_string_buffer(size)
    r = _ZSTD.ZSTD_decompress(buf, size, data, n)
    if _ZSTD.ZSTD_isError(r):
        return None
    return buf.raw[:r]


def min_clusters(cs, refcount_bits, n_without_rb):
    epb = cs * 8 // refcount_bits
    k = 0
    while k * epb < n_without_rb + k:
        k += 1
    return n_without_rb + k


def min_clusters_whole(epb, refs, rb_clusters, table_runs, compressed_hosts, cjoin, lower, upper):
    objects = []  # (first cluster, clusters)
    owner = {}
    for start, n in table_runs:
        for c in range(start, start + n):
            owner[c] = len(objects)
        objects.append((start, n))
    for c in sorted(compressed_hosts):
        if c in owner:
            continue
        if c - 1 in cjoin and c - 1 in compressed_hosts and c - 1 in owner:
            o = owner[c - 1]
            objects[o] = (objects[o][0], objects[o][1] + 1)
            owner[c] = o
        else:
            owner[c] = len(objects)
            objects.append((c, 1))
    for c in sorted(refs):
        if c != 0 and c not in owner and c not in rb_clusters:
            owner[c] = len(objects)
            objects.append((c, 1))

    def feasible(n):
        # a mover's own clusters below n are no destination: it is still there while it is
        # copied (overwriting it would not be crash-safe)
        occupied = {0}
        runs, singles = [], 0
        for start, k in objects:
            occupied.update(range(start, min(start + k, n)))
            if start + k <= n:
                pass
            elif k > 1:
                runs.append(k)
            else:
                singles += 1
        for c, i in rb_clusters.items():
            if i * epb >= n:
                continue  # describes only the cut-off tail: dropped
            if c < n:
                occupied.add(c)
            else:
                singles += 1
        free = set(range(1, n)) - occupied
        if len(free) < sum(runs) + singles:
            return False
        runs.sort(reverse=True)
        budget = [200000]

        def place(i):
            if i == len(runs):
                return len(free) >= singles
            k = runs[i]
            for s in sorted(free):
                budget[0] -= 1
                if budget[0] < 0:
                    raise Qcow2Error("min_clusters_whole: search too large")
                if all(c in free for c in range(s, s + k)):
                    free.difference_update(range(s, s + k))
                    ok = place(i + 1)
                    free.update(range(s, s + k))
                    if ok:
                        return True
            return False
        return place(0)

    for n in range(lower, upper):
        if feasible(n):
            return n
    return upper


def info(path):
    img = Image(path)
    cs = img.cs
    out = {
        "image": path,
        "version": img.version,
        "cluster_bits": img.cluster_bits,
        "cluster_size": cs,
        "virtual_size": img.virtual_size,
        "file_size": img.file_size,
        "file_clusters": (img.file_size + cs - 1) // cs,
        "refcount_bits": img.refcount_bits,
        "incompatible_features": img.incompat,
        "compatible_features": img.compat,
        "autoclear_features": img.autoclear,
        "compression_type": img.compression_type,
        "crypt_method": img.crypt_method,
        "extended_l2": img.extended_l2,
        "backing_file": img.backing_file,
        "nb_snapshots": img.nb_snapshots,
        "extensions": ["0x%08x" % e[0] for e in img.extensions],
        "l1_size": img.l1_size,
        "l1_offset": img.l1_off,
        "l1_clusters": (img.l1_size * 8 + cs - 1) // cs,
        "refcount_table_offset": img.rt_off,
        "refcount_table_clusters": img.rt_clusters,
    }
    refs = {}  # expected refcount of every referenced cluster, counted like qemu-img check

    def ref(cluster, n=1):
        refs[cluster] = refs.get(cluster, 0) + n

    def ref_range(off, length):
        if length > 0:
            for c in range(off // cs, (off + length - 1) // cs + 1):
                ref(c)

    ref(0)
    ref_range(img.rt_off, img.rt_clusters * cs)
    rb_offsets = [e & ~0x1FF for e in img.reftable() if e & ~0x1FF]
    rb_clusters = set()
    for rb in rb_offsets:
        ref(rb // cs)
        rb_clusters.add(rb // cs)
    rc = img.refcounts()
    out["refcount_blocks"] = len(rb_offsets)
    out["refcount_block_offsets"] = rb_offsets
    out["used_clusters"] = len(rc)
    out["used_clusters_in_file"] = sum(1 for c in rc if c < out["file_clusters"])
    out["max_refcount"] = max(rc.values()) if rc else 0
    out["used_end"] = (max(rc) + 1) * cs if rc else 0

    # ---- snapshots
    snaps = img.snapshots()
    out["snapshots"] = [{k: v for k, v in sn.items() if k != "extra_data_size"} for sn in snaps]
    out["snapshot_table_offset"] = img.snapshots_offset
    out["snapshot_table_size"] = img.snapshot_table_size
    out["snapshot_table_clusters"] = 0
    if img.nb_snapshots:
        ref_range(img.snapshots_offset, img.snapshot_table_size)
        out["snapshot_table_clusters"] = len(range(
            img.snapshots_offset // cs,
            (img.snapshots_offset + img.snapshot_table_size - 1) // cs + 1))

    # ---- every L1 tree: the active one first
    trees = [(True, img.l1_off, img.l1_size)] + [(False, sn["l1_offset"], sn["l1_size"])
                                                  for sn in snaps]
    out["snapshot_l1_clusters"] = sum((sn["l1_size"] * 8 + cs - 1) // cs for sn in snaps)
    l2_cache = {}
    l2_seen = []  # distinct L2 tables, first-seen order
    active_l2 = set()
    data_paths = {}  # host cluster -> paths (standard entries)
    active_data = set()
    normal_readers = set()  # host clusters a normal entry reads
    compressed_descr = set()
    compressed_hosts = set()
    cjoin = set()
    compressed_all = 0
    normal = zero_alloc = zero_plain = compressed = zero_content = 0
    ext_alloc = ext_zero = 0
    highest_data_end = 0
    sub = cs // 32
    zero_cluster = b"\0" * cs
    zero_sub = b"\0" * sub
    for active, l1_off, l1_size in trees:
        ref_range(l1_off, l1_size * 8)
        if not l1_size:
            continue
        l1 = struct.unpack(">%dQ" % l1_size, img.pread(l1_off, l1_size * 8))
        for l1e in l1:
            l2off = l1e & OFFSET_MASK
            if not l2off:
                continue
            ref(l2off // cs)
            if l2off not in l2_cache:
                l2_cache[l2off] = img.read_l2_ext(l2off)
                l2_seen.append(l2off)
            if active:
                active_l2.add(l2off)
            for e, bm in l2_cache[l2off]:
                if e & COMPRESSED:
                    compressed_all += 1
                    if active:
                        compressed += 1
                    coff, clen = img.compressed_range(e)
                    ref_range(coff, clen)
                    compressed_descr.add(e & ~COPIED)
                    first, last = coff // cs, (coff + clen - 1) // cs
                    compressed_hosts.update(range(first, last + 1))
                    cjoin.update(range(first, last))  # c is joined with c + 1
                    continue
                host = e & OFFSET_MASK
                if img.extended_l2:
                    allocated = bm & 0xFFFFFFFF
                    # with a host cluster: none of it is read; without: reads as zeros
                    zero = not allocated if host else bool(bm >> 32)
                    if active:
                        ext_alloc += bin(allocated).count("1")
                        ext_zero += bin(bm >> 32).count("1")
                else:
                    zero = bool(e & ZERO_FLAG)
                if host:
                    c = host // cs
                    ref(c)
                    data_paths[c] = data_paths.get(c, 0) + 1
                    highest_data_end = max(highest_data_end, host + cs)
                    if not zero:
                        normal_readers.add(c)
                    if not active:
                        continue
                    active_data.add(c)
                    if zero:
                        zero_alloc += 1
                    else:
                        normal += 1
                        if img.extended_l2:
                            if all(img.pread(host + k * sub, sub) == zero_sub
                                   for k in range(32) if bm & (1 << k)):
                                zero_content += 1
                        elif img.pread(host, cs) == zero_cluster:
                            zero_content += 1
                elif zero and active:
                    zero_plain += 1
    out["l2_tables"] = len(l2_seen)
    out["l2_offsets"] = l2_seen
    out["active_l2_tables"] = len(active_l2)
    out["empty_l2_tables"] = sum(
        1 for o in l2_seen
        if not any(e & (COMPRESSED | OFFSET_MASK) for e, _ in l2_cache[o]))
    out["data_clusters"] = len(data_paths)
    out["active_data_clusters"] = len(active_data)
    out["shared_data_clusters"] = sum(1 for v in data_paths.values() if v > 1)
    out["zero_content_host_clusters"] = sum(1 for c in normal_readers
                                            if img.pread(c * cs, cs) == zero_cluster)
    out["normal_clusters"] = normal
    out["zero_alloc_clusters"] = zero_alloc
    out["zero_plain_entries"] = zero_plain
    out["zero_flag_entries"] = zero_plain + zero_alloc
    out["compressed_entries"] = compressed
    out["compressed_entries_all"] = compressed_all
    out["compressed_host_clusters"] = len(compressed_hosts)
    zc = errs = 0
    contents = set()
    for e in compressed_descr:
        d = img.inflate(e)
        if d is None:
            errs += 1
        elif d == zero_cluster:
            zc += 1
        if d is not None:
            contents.add(hashlib.sha256(d).digest())
    out["compressed_streams"] = len(compressed_descr)
    out["compressed_distinct_contents"] = len(contents)
    out["compressed_inflate_errors"] = errs
    live = sum(img.stream_length(e) for e in compressed_descr)
    out["compressed_live_bytes"] = live
    out["compressed_zero_entries"] = None if errs else zc
    out["zero_content_clusters"] = zero_content
    out["ext_alloc_subclusters"] = ext_alloc
    out["ext_zero_subclusters"] = ext_zero
    out["highest_data_end"] = highest_data_end

    # ---- bitmaps (QEMU only trusts them with autoclear bit 0 set)
    bms = img.bitmaps()
    out["nb_bitmaps"] = bms["nb_bitmaps"] if bms else 0
    out["bitmaps_consistent"] = bms["consistent"] if bms else None
    out["bitmaps"] = []
    out["bitmap_directory_clusters"] = out["bitmap_table_clusters"] = 0
    out["bitmap_data_clusters"] = 0
    if bms:
        for b in bms["entries"]:
            out["bitmaps"].append({k: v for k, v in b.items() if k != "table"})
        if bms["consistent"]:
            ref_range(bms["directory_offset"], bms["directory_size"])
            out["bitmap_directory_clusters"] = (bms["directory_size"] + cs - 1) // cs
            for b in bms["entries"]:
                ref_range(b["table_offset"], b["table_size"] * 8)
                out["bitmap_table_clusters"] += (b["table_size"] * 8 + cs - 1) // cs
                for t in b["table"]:
                    if t & OFFSET_MASK:
                        ref((t & OFFSET_MASK) // cs)
                        out["bitmap_data_clusters"] += 1

    complete = img.crypt_method == 0 and not img.incompat & (1 << 2)
    out["complete"] = complete
    leaked = errors = 0
    for c in set(rc) | set(refs):
        have, want = rc.get(c, 0), refs.get(c, 0)
        if have > want:
            leaked += 1
        elif have < want:
            errors += 1
    out["leaked_clusters"] = leaked
    out["refcount_errors"] = errors
    out["references_past_eof"] = sum(1 for c in refs if c >= out["file_clusters"])

    n0 = sum(1 for c in refs if c not in rb_clusters)
    out["min_clusters"] = min_clusters(cs, img.refcount_bits, n0)
    out["min_size"] = out["min_clusters"] * cs
    n0p = sum(1 for c in refs if c not in rb_clusters and c not in compressed_hosts)
    out["min_clusters_packed"] = min_clusters(cs, img.refcount_bits, n0p + (live + cs - 1) // cs)

    table_runs = [(img.rt_off // cs, img.rt_clusters)]
    for l1_off, l1_size in [(img.l1_off, img.l1_size)] + [(sn["l1_offset"], sn["l1_size"])
                                                          for sn in snaps]:
        table_runs.append((l1_off // cs, (l1_size * 8 + cs - 1) // cs))
    if img.nb_snapshots:
        table_runs.append((img.snapshots_offset // cs, out["snapshot_table_clusters"]))
    if bms and bms["consistent"]:
        table_runs.append((bms["directory_offset"] // cs, out["bitmap_directory_clusters"]))
        for b in bms["entries"]:
            table_runs.append((b["table_offset"] // cs, (b["table_size"] * 8 + cs - 1) // cs))
    rb_index = {e & ~0x1FF: i for i, e in enumerate(img.reftable()) if e & ~0x1FF}
    out["min_clusters_whole"] = min_clusters_whole(
        img.rb_entries, refs, {o // cs: i for o, i in rb_index.items()},
        [r for r in table_runs if r[1] > 0], compressed_hosts, cjoin,
        out["min_clusters"], max(out["file_clusters"], max(refs) + 1))
    img.close()
    return out


def set_incompat(path, bit):
    img = Image(path, writable=True)
    if img.version != 3:
        raise Qcow2Error("feature bits need a v3 image")
    img.pwrite(72, struct.pack(">Q", img.incompat | (1 << bit)))
    img.close()


def add_extension(path, etype):
    img = Image(path, writable=True)
    if img.version != 3:
        raise Qcow2Error("needs a v3 image")
    start = img.header_length
    old = img.pread(start, img.ext_end + 8 - start)  # existing extensions + end marker
    new = struct.pack(">II", etype, 8) + b"RECLAIM!" + old
    if img.backing_file is not None:
        raise Qcow2Error("images with a backing file are not supported here")
    if start + len(new) > img.cs:
        raise Qcow2Error("no room in the header cluster")
    img.pwrite(start, new)
    img.close()


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    cmd, path = argv[1], argv[2]
    try:
        if cmd == "info":
            d = info(path)
            print(json.dumps(d, indent=1, sort_keys=True))
            if len(argv) > 4 and argv[3] == "--flat":
                # "key<TAB>value" lines for the shell helpers (lists and null as JSON)
                with open(argv[4], "w") as f:
                    for k, v in sorted(d.items()):
                        s = json.dumps(v) if isinstance(v, (bool, type(None), list, dict)) \
                            else str(v)
                        f.write("%s\t%s\n" % (k, s))
        elif cmd == "host-offset":
            img = Image(path)
            print(img.host_offset(int(argv[3], 0)))
        elif cmd == "l2-table":
            img = Image(path)
            print(img.l2_entry_pos(int(argv[3], 0)) & ~(img.cs - 1))
        elif cmd == "set-l2-entry":
            # negative values: the shell's 64-bit arithmetic wraps bit 63 (COPIED)
            Image(path, writable=True).set_l2_entry(int(argv[3], 0),
                                                    int(argv[4], 0) & 0xFFFFFFFFFFFFFFFF)
        elif cmd == "refcount":
            print(Image(path).get_refcount(int(argv[3], 0)))
        elif cmd == "set-refcount":
            Image(path, writable=True).set_refcount(int(argv[3], 0), int(argv[4], 0))
        elif cmd == "free-cluster":
            img = Image(path)
            rc = img.refcounts()
            nclusters = img.file_size // img.cs
            print(next((c for c in range(nclusters) if c not in rc), -1))
        elif cmd == "snapshots":
            img = Image(path)
            print(json.dumps(img.snapshots(), indent=1, sort_keys=True))
        elif cmd == "bitmaps":
            b = Image(path).bitmaps()
            for e in (b["entries"] if b else []):
                del e["table"]
            print(json.dumps(b["entries"] if b else [], indent=1, sort_keys=True))
        elif cmd == "set-bitmap-flags":
            img = Image(path, writable=True)
            b = img.bitmaps()
            if not b:
                raise Qcow2Error("no bitmaps")
            img.pwrite(b["entries"][int(argv[3], 0)]["entry_pos"] + 12,
                       struct.pack(">I", int(argv[4], 0)))
        elif cmd == "set-incompat":
            set_incompat(path, int(argv[3], 0))
        elif cmd == "add-extension":
            add_extension(path, int(argv[3], 0))
        else:
            sys.stderr.write("unknown command %s\n" % cmd)
            return 2
    except (Qcow2Error, OSError, struct.error, IndexError, ValueError) as e:
        sys.stderr.write("qcow2-oracle: %s: %s\n" % (path, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
