#!/usr/bin/env python3
"""Summary of scripts/cpu-paired.sh: per round (one block of every server, adjacent in time) the ratio of
each server to llama-server in tok/s, TTFT p50 and ITL p50; medians and geometric means over rounds with a
bootstrap 90 % interval of the geometric mean (resampling rounds).  Usage: cpu-paired-summary.py DIR..."""
import glob, json, math, os, random, statistics, sys
from collections import defaultdict

REF = "llama-server"
rounds = []  # (dir, round, {label: level})
for d in sys.argv[1:]:
    by_round = defaultdict(dict)
    for f in sorted(glob.glob(os.path.join(d, "r*-b*-*.json"))):
        r, _, label = os.path.basename(f)[:-len(".json")].split("-", 2)
        by_round[int(r[1:])][label] = json.load(open(f))["levels"][0]
    rounds += [(d, r, arms) for r, arms in sorted(by_round.items()) if REF in arms and len(arms) > 1]
if not rounds:
    sys.exit(f"no round with {REF} and another server")

def gmean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))

def interval(xs, reps=10000, seed=1):
    rnd = random.Random(seed)
    g = sorted(gmean([rnd.choice(xs) for _ in xs]) for _ in range(reps))
    return g[int(0.05 * reps)], g[int(0.95 * reps) - 1]

labels = sorted({l for _, _, arms in rounds for l in arms} - {REF})
metrics = [("tok/s", lambda v: v["output_tokens_per_s"], True),
           ("TTFT p50", lambda v: v["ttft_ms"]["p50"], False),
           ("ITL p50", lambda v: v["itl_ms"]["p50"], False)]
cols = [REF] + labels
print("| dir | round | " + " | ".join(f"{l} tok/s" for l in cols) + " | "
      + " | ".join(f"{l} TTFT p50 / ITL p50" for l in cols) + f" | {REF} errors |")
print("|---|--:|" + "--:|" * (2 * len(cols) + 1))
for d, r, arms in rounds:
    tok = " | ".join(f"{arms[l]['output_tokens_per_s']:.1f}" if l in arms else "" for l in cols)
    lat = " | ".join(f"{arms[l]['ttft_ms']['p50']:.1f} / {arms[l]['itl_ms']['p50']:.2f} ms" if l in arms else "" for l in cols)
    print(f"| {os.path.basename(d.rstrip('/'))} | {r} | {tok} | {lat} | {arms[REF]['errors']} |")
print()
for l in labels:
    for name, get, higher_better in metrics:
        xs = [get(arms[l]) / get(arms[REF]) for _, _, arms in rounds if l in arms]
        lo, hi = interval(xs)
        ahead = sum((x > 1) if higher_better else (x < 1) for x in xs)
        print(f"- {l} / {REF}, {name}: {len(xs)} rounds, median {statistics.median(xs):.3f}, geometric mean "
              f"{gmean(xs):.3f} (bootstrap 90 %: {lo:.3f}–{hi:.3f}); {l} ahead in {ahead}")
