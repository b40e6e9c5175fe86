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

`info` keys: version, cluster_bits, cluster_size, virtual_size, file_size, file_clusters,
refcount_bits, incompatible_features, compatible_features, autoclear_features,
backing_file, nb_snapshots, l1_size, l1_offset, l1_clusters, refcount_table_offset,
refcount_table_clusters, refcount_blocks, refcount_block_offsets, used_clusters (refcount > 0,
whole refcount structure), used_clusters_in_file, max_refcount, used_end (bytes: end of the
highest cluster with refcount > 0), l2_tables, l2_offsets, data_clusters (normal +
zero-alloc), normal_clusters, zero_alloc_clusters, zero_plain_entries, zero_flag_entries,
compressed_entries, zero_content_clusters (normal clusters whose bytes are all zero),
highest_data_end (bytes), leaked_clusters / refcount_errors / references_past_eof
(cross-check of refcounts against references; only meaningful when `complete` is true),
complete (no snapshots, bitmaps, encryption, external data file or extended L2), min_clusters, min_size.

min_clusters = 1 header + L1 clusters + refcount table clusters + L2 tables + allocated data
clusters + the refcount blocks needed to cover exactly that many clusters.
"""

import json
import os
import struct
import sys

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
        h = self.pread(0, 104)
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
        else:
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


def min_clusters(cs, refcount_bits, n_without_rb):
    epb = cs * 8 // refcount_bits
    k = 0
    while k * epb < n_without_rb + k:
        k += 1
    return n_without_rb + k


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
    refs = {}  # expected references (simple images: no snapshots/bitmaps/crypto)

    def ref(cluster, n=1):
        refs[cluster] = refs.get(cluster, 0) + n

    ref(0)
    for c in range(img.l1_off // cs, img.l1_off // cs + out["l1_clusters"]):
        ref(c)
    for c in range(img.rt_off // cs, img.rt_off // cs + img.rt_clusters):
        ref(c)

    rb_offsets = [e & ~0x1FF for e in img.reftable() if e & ~0x1FF]
    for rb in rb_offsets:
        ref(rb // cs)
    rc = img.refcounts()
    out["refcount_blocks"] = len(rb_offsets)
    out["refcount_block_offsets"] = rb_offsets
    out["used_clusters"] = len(rc)
    out["used_clusters_in_file"] = sum(1 for c in rc if c < out["file_clusters"])
    out["max_refcount"] = max(rc.values()) if rc else 0
    out["used_end"] = (max(rc) + 1) * cs if rc else 0

    l2_offsets = []
    normal = zero_alloc = zero_plain = compressed = zero_content = 0
    highest_data_end = 0
    zero_cluster = b"\0" * cs
    csize_shift = 62 - (img.cluster_bits - 8)
    csize_mask = (1 << (img.cluster_bits - 8)) - 1
    coff_mask = (1 << csize_shift) - 1
    for l1e in img.l1():
        l2off = l1e & OFFSET_MASK
        if not l2off:
            continue
        l2_offsets.append(l2off)
        ref(l2off // cs)
        for e in img.read_l2(l2off):
            if e & COMPRESSED:
                compressed += 1
                coff = e & coff_mask
                nsect = ((e >> csize_shift) & csize_mask) + 1
                end = coff + nsect * 512 - (coff & 511)
                for c in range(coff // cs, (end - 1) // cs + 1):
                    ref(c)
                continue
            host = e & OFFSET_MASK
            zero = bool(e & ZERO_FLAG) and not img.extended_l2
            if host:
                ref(host // cs)
                highest_data_end = max(highest_data_end, host + cs)
                if zero:
                    zero_alloc += 1
                else:
                    normal += 1
                    if img.pread(host, cs) == zero_cluster:
                        zero_content += 1
            elif zero:
                zero_plain += 1
    out["l2_tables"] = len(l2_offsets)
    out["l2_offsets"] = l2_offsets
    out["data_clusters"] = normal + zero_alloc
    out["normal_clusters"] = normal
    out["zero_alloc_clusters"] = zero_alloc
    out["zero_plain_entries"] = zero_plain
    out["zero_flag_entries"] = zero_plain + zero_alloc
    out["compressed_entries"] = compressed
    out["zero_content_clusters"] = zero_content
    out["highest_data_end"] = highest_data_end

    complete = (img.nb_snapshots == 0 and img.crypt_method == 0 and not img.extended_l2
                and not img.incompat & (1 << 2)
                and not any(e[0] in (EXT_BITMAPS, EXT_CRYPTO) for e in img.extensions))
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

    n0 = 1 + out["l1_clusters"] + img.rt_clusters + len(l2_offsets) + normal + zero_alloc
    out["min_clusters"] = min_clusters(cs, img.refcount_bits, n0)
    out["min_size"] = out["min_clusters"] * cs
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
                        s = json.dumps(v) if isinstance(v, (bool, type(None), list)) else str(v)
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
