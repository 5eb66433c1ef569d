#!/usr/bin/env bash
# A/B of our kernels on one card: a harness built from an older commit's files (BASE, default ./ab-base, git-ignored:
# make it here with `bash ab.sh --prepare <commit>`, then carry it to the device) against this tree's.
#   bash ab.sh mmm   the many-column harness, both built by run-mmm.sh (this tree's as build/mmm_iq4xs) and timed in
#                    turns (base, new, base, new; --time-only, back-to-back launches). MMM_ONLY narrows the variants
#                    (default .S2.Za: every tile at 2 stages with the split heuristic; both builds must know the name).
#   bash ab.sh mmv   the matvec harness of the base, built without llama.cpp's baseline and run in full (its own
#                    checks, then timing), against NEW_CSV: the timings.csv of this tree's build-and-run.sh run on
#                    the same machine.
# Prints, per shape, column count and variant, the median of each side and new / base. Results in OUT.
set -uo pipefail
cd "$(dirname "$0")"
FILES="mmm_iq4xs.cu mmm_iq4xs.cuh mmv_iq4xs.cu mmv_iq4xs.cuh harness_util.cuh"
if [ "${1:-}" = --prepare ]; then
  c=${2:?usage: ab.sh --prepare COMMIT}
  rm -rf ab-base && mkdir ab-base
  for f in $FILES; do git show "$c:vendor/airavata-cuda/$f" > "ab-base/$f" || exit 1; done
  git rev-parse "$c" > ab-base/COMMIT
  echo "ab-base/ holds $FILES at $(cat ab-base/COMMIT)"
  exit 0
fi
what=${1:?usage: ab.sh --prepare COMMIT | mmm | mmv}
BASE=${BASE:-$PWD/ab-base}
OUT=${OUT:-$PWD/out-ab-$what}
ONLY=${MMM_ONLY:-.S2.Za}
ARCHS=${ARCHS:-"-gencode=arch=compute_90a,code=sm_90a"}
mkdir -p "$OUT" build
[ -f "$BASE/${what}_iq4xs.cu" ] || { echo "no $what harness in $BASE (bash ab.sh --prepare COMMIT)"; exit 2; }
cat "$BASE/COMMIT" > "$OUT/base-commit.txt" 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
if [ "$what" = mmv ]; then
  NEW_CSV=${NEW_CSV:?NEW_CSV: timings.csv of build-and-run.sh on this tree, same machine}
  mkdir -p "$OUT/base"
  SRC=$BASE BIN=build/mmv_base NO_BASELINE=1 ARCHS=$ARCHS OUT=$OUT/base bash build-and-run.sh --build-only \
    > "$OUT/base/build.log" 2>&1 || { tail -20 "$OUT/base/build.log"; exit 1; }
  OUT=$OUT/base timeout 400 build/mmv_base > "$OUT/base/run.log" 2>&1; echo "rc=$?" >> "$OUT/base/run.log"
  python3 - "$OUT/base/timings.csv" "$NEW_CSV" <<'PY' | tee "$OUT/ab.txt"
import csv, statistics, sys
def load(p):
    return {(r["rows"] + "x" + r["K"], int(r["N"]), r["cfg"]): float(r["us_per_call"]) for r in csv.DictReader(open(p))}
b, n = load(sys.argv[1]), load(sys.argv[2])
keys = sorted(set(b) & set(n))
print(f"{'shape':10s} {'N':>4s} {'variant':16s} {'base us':>8s} {'new us':>8s} {'new/base':>8s}")
for k in keys:
    print(f"{k[0]:10s} {k[1]:4d} {k[2]:16s} {b[k]:8.2f} {n[k]:8.2f} {n[k] / b[k]:8.3f}")
r = [n[k] / b[k] for k in keys]
if r:
    print(f"\n{len(r)} cases: new/base median {statistics.median(r):.3f}, min {min(r):.3f}, max {max(r):.3f}")
PY
  exit 0
fi
# both through run-mmm.sh's build, same flags; the new one under run-mmm.sh's default name, for later steps'
# PREBUILT (next-lease.sh)
mkdir -p "$OUT/build-base" "$OUT/build-new"
SRC=$BASE BIN=build/mmm_base OUT=$OUT/build-base ARCHS=$ARCHS bash run-mmm.sh --build-only > "$OUT/build-base/log" 2>&1 & pb=$!
OUT=$OUT/build-new ARCHS=$ARCHS bash run-mmm.sh --build-only > "$OUT/build-new/log" 2>&1 & pn=$!
wait $pb || { echo "base build failed"; tail -20 "$OUT/build-base/log"; exit 1; }
wait $pn || { echo "new build failed"; tail -20 "$OUT/build-new/log"; exit 1; }
for round in 1 2; do
  for side in base new; do
    bin=build/mmm_base; [ $side = new ] && bin=build/mmm_iq4xs
    MMM_ONLY=$ONLY timeout 240 $bin --time-only > "$OUT/$side-$round.txt" 2>&1
    echo "rc=$?" >> "$OUT/$side-$round.txt"
  done
done
python3 - "$OUT" <<'PY' | tee "$OUT/ab.txt"
import re, statistics, sys, os
out = sys.argv[1]
def parse(path):
    t, key = {}, None
    for line in open(path):
        m = re.match(r"\s*(\d+x\d+)\s+\S+\s+(\d+)\s", line)
        if m: key = (m.group(1), int(m.group(2)))
        elif line.strip().startswith("all:") and key:
            for name, us in re.findall(r"(\S+?)=([\d.]+)", line):
                t[key + (name,)] = float(us)
    return t
runs = {s: [parse(os.path.join(out, f"{s}-{r}.txt")) for r in (1, 2)] for s in ("base", "new")}
keys = sorted(set(runs["base"][0]) & set(runs["new"][0]))
print(f"{'shape':10s} {'N':>4s} {'variant':24s} {'base us':>8s} {'new us':>8s} {'new/base':>8s}")
ratios = []
for k in keys:
    b = statistics.median([r[k] for r in runs["base"] if k in r]); n = statistics.median([r[k] for r in runs["new"] if k in r])
    ratios.append(n / b)
    print(f"{k[0]:10s} {k[1]:4d} {k[2]:24s} {b:8.1f} {n:8.1f} {n / b:8.3f}")
if ratios:
    print(f"\n{len(ratios)} cases: new/base median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
PY
