#!/usr/bin/env python3
"""Medians over rounds of scripts/cpu-ttft.sh: tok/s, TTFT p50 and ITL p50 per server, prompt mode and
concurrency, and ours / llama-server ratios.  Usage: scripts/cpu-ttft-summary.py ROUND_DIR...
(each ROUND_DIR holds bench-<label>-<mode>.json)."""
import json, os, statistics, sys
from collections import defaultdict

vals = defaultdict(list)  # (label, mode, conc, metric) -> values
for d in sys.argv[1:]:
    for f in sorted(os.listdir(d)):
        if not (f.startswith("bench-") and f.endswith(".json")):
            continue
        label, mode = f[len("bench-"):-len(".json")].rsplit("-", 1)
        for lv in json.load(open(os.path.join(d, f)))["levels"]:
            k = (label, mode, lv["concurrency"])
            vals[k + ("tok/s",)].append(lv["output_tokens_per_s"])
            vals[k + ("ttft",)].append(lv["ttft_ms"]["p50"])
            vals[k + ("itl",)].append(lv["itl_ms"]["p50"])
            vals[k + ("err",)].append(lv["errors"])
med = {k: statistics.median(v) for k, v in vals.items()}
n = {k[:3]: len(v) for k, v in vals.items()}
print(f"Medians over rounds: {' '.join(os.path.basename(d.rstrip('/')) for d in sys.argv[1:])}\n")
print("| prompts | streams | ours tok/s | llama-server tok/s | ratio | ours TTFT p50 | llama-server TTFT p50 | ours ITL p50 | llama-server ITL p50 | llama-server errors (sum) |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for mode in ["fixed", "unique"]:
    for conc in [1, 4]:
        o, l = ("ours", mode, conc), ("llama-server", mode, conc)
        if o + ("tok/s",) not in med or l + ("tok/s",) not in med:
            continue
        errs = sum(vals[l + ("err",)])
        print(f"| {mode} | {conc} | {med[o+('tok/s',)]:.1f} | {med[l+('tok/s',)]:.1f} | "
              f"**{med[o+('tok/s',)]/med[l+('tok/s',)]:.2f}** | {med[o+('ttft',)]:.1f} ms | {med[l+('ttft',)]:.1f} ms | "
              f"{med[o+('itl',)]:.1f} ms | {med[l+('itl',)]:.1f} ms | {errs} |")
print(f"\nRounds per row: {sorted(set(n.values()))}")
