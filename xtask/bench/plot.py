#!/usr/bin/python3
"""Draws the BENCHMARKS.md plots from the results `cargo xtask bench` collected.

Usage: plot.py RESULTS.json OUTDIR

Writes kernel-cost.png (ns/packet against policy size, with the floor, the parse-only
program and xdp-filter as references) and throughput.png (packets dropped per second and
receive-CPU time per packet, per configuration). Medians, with bars from min to max.
Uses Debian's python3-matplotlib, without a display.
"""

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def table(results, bench, table_id):
    for t in results[bench]["tables"]:
        if t["id"] == table_id:
            return t
    raise SystemExit(f"plot.py: no table {table_id} in the {bench} results")


def cell(t, row_prefix, col):
    for c in t["cells"]:
        if c["row"].startswith(row_prefix) and c["col"] == col and c["samples"]:
            s = c["samples"]
            m = statistics.median(s)
            return m, m - min(s), max(s) - m
    return None


def kernel_plot(results, out):
    t = table(results, "kernel", "kernel")
    cols = t["cols"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))

    sizes = [1, 100, 10_000, 65_536]
    labels = ["1 port entry", "100 port entries", "10,000 port entries", "65,536 port entries"]
    for col in cols[:4]:
        pts = [cell(t, f"portfw, {label}", col) for label in labels]
        xs = [x for x, p in zip(sizes, pts) if p]
        ys = [p[0] for p in pts if p]
        err = [[p[1] for p in pts if p], [p[2] for p in pts if p]]
        left.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"portfw: {col}")
    refs = [
        ("floor", "floor", "black", ":"),
        ("parse only", "parse only", "grey", "--"),
        ("xdp-filter xdpfilt_dny_all", "xdp-filter (tcp,udp build)", "tab:red", "-."),
        ("xdp-filter xdpfilt_dny_tcp", "xdp-filter (tcp-only build)", "tab:purple", "-."),
    ]
    for prefix, label, color, style in refs:
        p = cell(t, prefix, cols[0])
        if p:
            left.axhline(p[0], color=color, linestyle=style, linewidth=1,
                         label=f"{label}: {cols[0]}")
    left.set_xscale("log")
    left.set_xticks(sizes)
    left.set_xticklabels(["1", "100", "10,000", "65,536"])
    left.set_xlabel("port entries in the policy")
    left.set_ylabel("ns/packet (BPF_PROG_TEST_RUN)")
    left.set_ylim(bottom=0)
    left.set_title("Cost against port entries")
    left.legend(fontsize=7, loc="center right")

    cidr_rows = [
        ("none", "portfw, 100 port entries"),
        ("1,000", "portfw, 100 ports + 1,000 CIDRs"),
        ("100,000", "portfw, 100 ports + 100,000 CIDRs"),
    ]
    xs = list(range(len(cidr_rows)))
    for col in cols[4:6] + cols[:1]:
        pts = [cell(t, prefix, col) for _, prefix in cidr_rows]
        if not all(pts):
            continue
        right.errorbar(xs, [p[0] for p in pts],
                       yerr=[[p[1] for p in pts], [p[2] for p in pts]],
                       marker="o", capsize=3, label=col)
    block = cell(t, "portfw, 100 ports behind", cols[0])
    if block:
        right.axhline(block[0], color="tab:brown", linestyle="--", linewidth=1,
                      label=f"100,000-CIDR blocklist on every port: {cols[0]}")
    right.set_xticks(xs)
    right.set_xticklabels([c for c, _ in cidr_rows])
    right.set_xlabel("CIDRs in the source rules of udp 5353")
    right.set_ylabel("ns/packet")
    right.set_ylim(bottom=0)
    right.set_title("Cost against source CIDRs")
    right.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(f"{out}/kernel-cost.png", dpi=110)


def throughput_plot(results, out):
    rate = table(results, "load", "load-rate")
    cpu = table(results, "load", "load-cpu")
    rows = rate["rows"]
    cols = rate["cols"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 9))
    width = 0.8 / len(cols)
    for k, col in enumerate(cols):
        for ax, t in ((top, rate), (bottom, cpu)):
            pts = [cell(t, row, col) for row in rows]
            ys = [p[0] if p else 0 for p in pts]
            err = [[p[1] if p else 0 for p in pts], [p[2] if p else 0 for p in pts]]
            ax.bar([i + k * width for i in range(len(rows))], ys, width, yerr=err,
                   capsize=2, label=col)
    for ax in (top, bottom):
        ax.set_xticks([i + width * (len(cols) - 1) / 2 for i in range(len(rows))])
        ax.set_xticklabels(rows, rotation=25, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    top.set_ylabel("Mpps handled (dropped, for dropped ports)")
    top.set_title("Throughput per configuration (64-byte floods, one receiving CPU)")
    bottom.set_yscale("log")
    bottom.set_ylabel("receiving CPU ns/packet (log)")
    fig.tight_layout()
    fig.savefig(f"{out}/throughput.png", dpi=110)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1]) as f:
        results = json.load(f)
    kernel_plot(results, sys.argv[2])
    throughput_plot(results, sys.argv[2])


if __name__ == "__main__":
    main()
