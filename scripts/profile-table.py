#!/usr/bin/env python3
"""Issue 23's per-kernel profile table from `scripts/gpu-bench.sh profile` outputs.

For each B: two ncu reports of llama-batched-bench, with LO and HI generated tokens (CSV from
`ncu -i REP --csv --page raw`); the per-kernel difference is (HI - LO) decode steps, so prompt
processing and setup cancel. Per kernel family: GPU µs per decode step, share of the step's kernel
time (of the profiled kernels: all, or those PROFILE_KERNELS selected), share of the wall step time, DRAM bytes per step and achieved GB/s; the matmul kernels' FLOP/s from the GGUF's matmul
weights (2 FLOP per weight per sequence) against the card's peak; the wall step time with CUDA graphs
on from batched-bench (T_TG / TG) beside it.

Usage: profile-table.py OUT_DIR TAG LO HI MATMUL_PARAMS PEAK_GBS PEAK_TFLOPS B [B ...]
  reads OUT_DIR/profile-TAG-B{B}-tg{LO,HI}.csv and OUT_DIR/profile-TAG-B{B}-wall.md
"""
import csv
import re
import sys
from collections import defaultdict

TIME_UNITS = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}
BYTE_UNITS = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def family(name):
    """A kernel's family: its name without template arguments or parameters."""
    base = re.split(r"[<(]", name, maxsplit=1)[0].strip()
    return base.split("::")[-1].split()[-1] if base else name


def is_matmul(fam):
    return fam.startswith(("mul_mat", "airavata_mm", "mmv", "mmq", "stream_k_fixup"))


def read_ncu(path):
    """{family: [µs, bytes, launches]} summed over the report."""
    out = defaultdict(lambda: [0.0, 0.0, 0])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    cols = rows[head]
    units = rows[head + 1] if head + 1 < len(rows) and rows[head + 1] and rows[head + 1][0] == "" else None
    ix = {c: i for i, c in enumerate(cols)}
    t_i = ix["gpu__time_duration.sum"]
    r_i, w_i = ix.get("dram__bytes_read.sum"), ix.get("dram__bytes_write.sum")

    def scale(i, table, default):
        return table.get(units[i], default) if units and i is not None else default

    t_s = scale(t_i, TIME_UNITS, 1e-3)
    r_s, w_s = scale(r_i, BYTE_UNITS, 1), scale(w_i, BYTE_UNITS, 1)
    for r in rows[head + (2 if units else 1):]:
        if len(r) <= t_i or not r[ix["Kernel Name"]]:
            continue
        num = lambda i, s: float(r[i].replace(",", "")) * s if i is not None and r[i] not in ("", "n/a") else 0.0
        e = out[family(r[ix["Kernel Name"]])]
        e[0] += num(t_i, t_s)
        e[1] += num(r_i, r_s) + num(w_i, w_s)
        e[2] += 1
    return out


def wall_ms_per_step(path):
    """T_TG / TG (ms) from a batched-bench markdown table."""
    for line in open(path):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) >= 8 and c[1].isdigit() and c[2].isdigit():
            return float(c[6]) * 1e3 / int(c[1])
    return None


def main(argv):
    out, tag, lo, hi, params, peak_gbs, peak_tflops = argv[1], argv[2], int(argv[3]), int(argv[4]), float(argv[5]), float(argv[6]), float(argv[7])
    steps = hi - lo
    for b in [int(x) for x in argv[8:]]:
        a = read_ncu(f"{out}/profile-{tag}-B{b}-tg{lo}.csv")
        z = read_ncu(f"{out}/profile-{tag}-B{b}-tg{hi}.csv")
        per = {}
        for fam in set(a) | set(z):
            d = [(z[fam][k] - a[fam][k]) / steps for k in range(3)]
            if d[0] > 0:
                per[fam] = d
        total = sum(v[0] for v in per.values())
        wall = wall_ms_per_step(f"{out}/profile-{tag}-B{b}-wall.md")
        mm_us = sum(v[0] for f, v in per.items() if is_matmul(f))
        mm_flops = 2 * params * b / (mm_us * 1e-6) / 1e12 if mm_us else 0
        print(f"\n### {tag}, B = {b}: kernels {total / 1e3:.3f} ms per decode step (ncu, serialised); "
              f"wall {wall:.3f} ms per step (CUDA graphs on)" if wall else f"\n### {tag}, B = {b}: kernels {total / 1e3:.3f} ms")
        if not total:
            print("no profiled kernel ran in the decode steps")
            continue
        print(f"matmul kernels: {mm_us / 1e3:.3f} ms, {100 * mm_us / total:.1f} % of kernel time, "
              f"{mm_flops:.1f} TFLOP/s ({100 * mm_flops / peak_tflops:.1f} % of {peak_tflops:g})\n")
        print("| kernel | µs / step | share | % of wall step | launches / step | MB / step | GB/s | % of peak GB/s |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|")
        for fam, (us, byts, n) in sorted(per.items(), key=lambda kv: -kv[1][0]):
            gbs = byts / (us * 1e-6) / 1e9 if us else 0
            of_wall = f"{100 * us / (wall * 1e3):.1f} %" if wall else "-"
            print(f"| `{fam}` | {us:.1f} | {100 * us / total:.1f} % | {of_wall} | {n:.0f} | {byts / 1e6:.1f} | {gbs:.0f} "
                  f"| {100 * gbs / peak_gbs:.0f} % |")


if __name__ == "__main__":
    if len(sys.argv) < 9:
        sys.exit(__doc__)
    main(sys.argv)
