#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Helpers for the hand-run benchmarks in tests/bench/ (python3 stdlib only).

    benchlib.py mkraw OUT UNITS LIVE ZERO
        Writes a raw image of UNITS x (LIVE bytes from os.urandom, then ZERO bytes of real,
        allocated zeros). Every byte is written, so the file has no holes.

    benchlib.py layout IMAGE [FINAL_SIZE]
        Reads a qcow2 image (independently of the engine) and prints JSON: cluster_size,
        file_size, live data clusters (normal clusters whose bytes are not all zero), zero data
        clusters, zero-flag entries, L2 tables, min_size (the smallest file that can hold the
        live clusters and the metadata they need), and with FINAL_SIZE the "smallest move":
        live clusters (data + the metadata still needed) that sit at or past FINAL_SIZE in this
        layout and therefore must be moved, in clusters and bytes.

    benchlib.py sample FILE OUT
        Samples the size of FILE every 20 ms until SIGTERM/SIGINT, then writes
        "max_size samples" to OUT. A missing FILE counts as size 0.

    benchlib.py sparse-cmp A B
        Compares two (sparse) files byte for byte without reading their holes: every range
        that holds data in either file is compared, holes read as zeros. Exit 0 identical,
        1 different (says where).

    benchlib.py report RESULTS.tsv
        Prints the table of a compact-vs-convert run (medians) and the PASS/FAIL lines.
        Exit status 0 whether or not targets were met (the report says so); 1 on bad input.
"""

import json
import os
import signal
import statistics
import struct
import sys
import time

MAGIC = 0x514649FB
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62
ZERO_FLAG = 1


def die(msg):
    sys.stderr.write("benchlib: %s\n" % msg)
    sys.exit(1)


# ---- mkraw ------------------------------------------------------------------------------


def cmd_mkraw(out, units, live, zero):
    units, live, zero = int(units), int(live), int(zero)
    zeros = bytes(zero)
    with open(out, "wb") as f:
        for _ in range(units):
            f.write(os.urandom(live))
            f.write(zeros)
        f.flush()
        os.fsync(f.fileno())


# ---- layout -----------------------------------------------------------------------------


def read_at(f, off, n):
    f.seek(off)
    b = f.read(n)
    if len(b) != n:
        die("short read at %d (%d of %d bytes)" % (off, len(b), n))
    return b


def cmd_layout(path, final_size=None):
    with open(path, "rb") as f:
        h = read_at(f, 0, 104)
        (magic, version, backing_off, _bsz, cluster_bits, virtual_size, crypt, l1_size,
         l1_off, rt_off, rt_clusters, nb_snap, _snap_off) = struct.unpack(">IIQIIQIIQQIIQ", h[:72])
        if magic != MAGIC:
            die("%s: not a qcow2 image" % path)
        refcount_order = 4
        incompat = 0
        if version >= 3:
            incompat, = struct.unpack(">Q", h[72:80])
            refcount_order, = struct.unpack(">I", h[96:100])
        if backing_off or crypt or nb_snap or (incompat & ~0x3):
            die("%s: only plain images (no backing file, encryption, snapshots, "
                "external data, extended L2) are supported here" % path)
        cs = 1 << cluster_bits
        file_size = os.fstat(f.fileno()).st_size
        rbits = 1 << refcount_order
        final = int(final_size) if final_size is not None else None

        l1 = struct.unpack(">%dQ" % l1_size, read_at(f, l1_off, l1_size * 8)) if l1_size else ()
        zero_cluster = bytes(cs)
        live_data = zero_data = zero_flag = 0
        live_data_past = 0
        l2_total = l2_live = l2_live_past = 0
        for l1e in l1:
            l2_off = l1e & OFFSET_MASK
            if not l2_off:
                continue
            l2_total += 1
            entries = struct.unpack(">%dQ" % (cs // 8), read_at(f, l2_off, cs))
            table_live = 0
            for e in entries:
                if e & COMPRESSED:
                    die("%s: compressed clusters are not supported here" % path)
                off = e & OFFSET_MASK
                if e & ZERO_FLAG:
                    zero_flag += 1
                    continue
                if not off:
                    continue
                # every data cluster is read: the live count drives min_size
                if read_at(f, off, cs) == zero_cluster:
                    zero_data += 1
                    continue
                live_data += 1
                table_live += 1
                if final is not None and off >= final:
                    live_data_past += 1
            if table_live:
                l2_live += 1
                if final is not None and l2_off >= final:
                    l2_live_past += 1

        l1_clusters = (l1_size * 8 + cs - 1) // cs
        # min_size: header + L1 + refcount table + live L2 + live data + refcount blocks
        # covering exactly that many clusters (the refcount table is assumed not to shrink).
        per_block = cs * 8 // rbits
        base = 1 + l1_clusters + rt_clusters + l2_live + live_data
        blocks = 0
        while (base + blocks) > blocks * per_block:
            blocks += 1
        min_clusters = base + blocks
        out = {
            "image": path,
            "cluster_size": cs,
            "virtual_size": virtual_size,
            "file_size": file_size,
            "live_data_clusters": live_data,
            "zero_data_clusters": zero_data,
            "zero_flag_entries": zero_flag,
            "l2_tables": l2_total,
            "l2_tables_live": l2_live,
            "min_clusters": min_clusters,
            "min_size": min_clusters * cs,
        }
        if final is not None:
            final_clusters = (final + cs - 1) // cs
            meta_past = l2_live_past
            if l1_off >= final:
                meta_past += l1_clusters
            if rt_off >= final:
                meta_past += rt_clusters
            rt = struct.unpack(">%dQ" % (rt_clusters * cs // 8), read_at(f, rt_off, rt_clusters * cs))
            needed_blocks = (final_clusters + per_block - 1) // per_block
            for i, rte in enumerate(rt[:needed_blocks]):
                if (rte & OFFSET_MASK) and (rte & OFFSET_MASK) >= final:
                    meta_past += 1
            out["final_size"] = final
            out["live_data_clusters_past_end"] = live_data_past
            out["metadata_clusters_past_end"] = meta_past
            out["smallest_move_clusters"] = live_data_past + meta_past
            out["smallest_move_bytes"] = (live_data_past + meta_past) * cs
    print(json.dumps(out, indent=1, sort_keys=True))


# ---- sample -----------------------------------------------------------------------------


def cmd_sample(path, out):
    stop = False

    def on_signal(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    mx = 0
    n = 0
    while True:
        try:
            s = os.stat(path).st_size
        except FileNotFoundError:
            s = 0
        mx = max(mx, s)
        n += 1
        if n == 1:
            # tell the caller we are sampling
            with open(out + ".ready", "w") as r:
                r.write("1\n")
        if stop:
            break
        time.sleep(0.02)
    with open(out, "w") as f:
        f.write("%d %d\n" % (mx, n))


# ---- sparse-cmp -------------------------------------------------------------------------


def data_ranges(fd, size):
    """(start, end) ranges that hold data (SEEK_DATA/SEEK_HOLE)."""
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after off
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        off = end


def cmd_sparse_cmp(a, b):
    fa = os.open(a, os.O_RDONLY)
    fb = os.open(b, os.O_RDONLY)
    sa, sb = os.fstat(fa).st_size, os.fstat(fb).st_size
    if sa != sb:
        print("%s: %d bytes, %s: %d bytes" % (a, sa, b, sb))
        sys.exit(1)
    chunk = 4 << 20
    compared = 0
    for fd in (fa, fb):
        for start, end in data_ranges(fd, sa):
            off = start
            while off < end:
                n = min(chunk, end - off)
                x, y = os.pread(fa, n, off), os.pread(fb, n, off)
                if x != y:
                    i = next(k for k in range(min(len(x), len(y))) if x[k] != y[k]) \
                        if len(x) == len(y) else 0
                    print("differ at byte %d" % (off + i))
                    sys.exit(1)
                compared += n
                off += n
    print("identical (%d bytes compared, holes skipped)" % compared)


# ---- report -----------------------------------------------------------------------------

TARGETS = {"zeros": 0.7, "flagged": 0.5}
VARIANT_LABEL = {"zeros": "zero_find", "flagged": "flagged"}


def fmt_bytes(n):
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%.0f %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024
    return str(n)


def cmd_report(path):
    rows = []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    if not rows:
        die("no results in %s" % path)

    def med(rs, key):
        return statistics.median(float(r[key]) for r in rs)

    variants = [v for v in ("zeros", "flagged") if any(r["variant"] == v for r in rows)]
    verdicts = []
    print()
    print("%-8s %-8s %5s %7s %13s %8s %6s %9s %10s %10s %10s %10s" % (
        "variant", "method", "runs", "wall_s", "(min-max)", "tool_ms", "cpu_s", "peak_rss",
        "size_befor", "size_after", "written", "max_size"))
    for v in variants:
        for m in ("compact", "convert"):
            rs = [r for r in rows if r["variant"] == v and r["method"] == m]
            if not rs:
                continue
            walls = [float(r["wall_s"]) for r in rs]
            print("%-8s %-8s %5d %7.2f %13s %8s %6.2f %9s %10s %10s %10s %10s" % (
                v, m, len(rs), med(rs, "wall_s"), "(%.2f-%.2f)" % (min(walls), max(walls)),
                ("%.0f" % med(rs, "tool_ms")) if m == "compact" else "-", med(rs, "cpu_s"),
                fmt_bytes(med(rs, "rss_kib") * 1024), fmt_bytes(med(rs, "size_before")),
                fmt_bytes(med(rs, "size_after")), fmt_bytes(med(rs, "written")),
                fmt_bytes(max(float(r["max_size"]) for r in rs))))
    print()
    print("per-trial wall times (s):")
    for v in variants:
        for m in ("compact", "convert"):
            rs = [r for r in rows if r["variant"] == v and r["method"] == m]
            print("  %-8s %-8s %s" % (v, m, " ".join("%.2f" % float(r["wall_s"]) for r in rs)))
    print()
    for v in variants:
        c = [r for r in rows if r["variant"] == v and r["method"] == "compact"]
        q = [r for r in rows if r["variant"] == v and r["method"] == "convert"]
        smallest = med(c, "smallest_move")
        written = med(c, "written")
        moved = med(c, "bytes_moved")
        print("%s: compact bytes_written %s (bytes_moved %s) vs smallest move %s (live "
              "clusters at/after the final end); convert writes a new %s file (extra disk "
              "need while both exist); compact's file never exceeded %s (before: %s)" % (
                  v, fmt_bytes(written), fmt_bytes(moved), fmt_bytes(smallest),
                  fmt_bytes(med(q, "written")), fmt_bytes(max(float(r["max_size"]) for r in c)),
                  fmt_bytes(med(c, "size_before"))))
        print("%s: compacted size %s, smallest possible %s; convert result %s" % (
            v, fmt_bytes(med(c, "size_after")), fmt_bytes(med(c, "min_size")),
            fmt_bytes(med(q, "size_after"))))
    print()
    for v in variants:
        c = [r for r in rows if r["variant"] == v and r["method"] == "compact"]
        q = [r for r in rows if r["variant"] == v and r["method"] == "convert"]
        label = VARIANT_LABEL[v]
        ratio = med(c, "wall_s") / med(q, "wall_s")
        t = TARGETS[v]
        ok = ratio <= t
        verdicts.append(ok)
        print("ratio_%s=%.2f (target <= %.1f) %s" % (label, ratio, t, "PASS" if ok else "FAIL"))
        best = min(float(r["wall_s"]) for r in c) / min(float(r["wall_s"]) for r in q)
        print("  (informational: best-of-%d ratio %.2f; noise on a shared host hits the medians)" % (
            len(c), best))
        wr = med(c, "written") / max(med(c, "smallest_move"), 1)
        ok = wr <= 1.05
        verdicts.append(ok)
        print("written_vs_smallest_move_%s=%.3f (target <= 1.05) %s" % (
            label, wr, "PASS" if ok else "FAIL"))
        grew = max(int(r["max_size"]) - int(r["size_before"]) for r in c)
        ok = grew <= 0
        verdicts.append(ok)
        print("never_grew_%s=%s (max sampled size - size before = %d bytes) %s" % (
            label, "yes" if ok else "no", grew, "PASS" if ok else "FAIL"))
        bad = [r for r in c if r["check_rc"] != "0" or r["compare_rc"] != "0"]
        ok = not bad
        verdicts.append(ok)
        print("correct_%s=%d/%d (qemu-img check exit 0 and compare identical) %s" % (
            label, len(c) - len(bad), len(c), "PASS" if ok else "FAIL"))
    print("overall=%s" % ("PASS" if all(verdicts) else "FAIL"))


def main(argv):
    if len(argv) < 2:
        die("usage: see the docstring of %s" % argv[0])
    cmd, args = argv[1], argv[2:]
    if cmd == "mkraw" and len(args) == 4:
        cmd_mkraw(*args)
    elif cmd == "layout" and len(args) in (1, 2):
        cmd_layout(*args)
    elif cmd == "sample" and len(args) == 2:
        cmd_sample(*args)
    elif cmd == "sparse-cmp" and len(args) == 2:
        cmd_sparse_cmp(*args)
    elif cmd == "report" and len(args) == 1:
        cmd_report(*args)
    else:
        die("bad arguments: %s" % " ".join(argv[1:]))


if __name__ == "__main__":
    main(sys.argv)
