#!/usr/bin/env python3
"""Markdown table of lm-eval results written by benches/lm-eval.sh.

usage: summary.py OUT TASKS LABEL...   (OUT/LABEL/** holds lm-eval's results_*.json and samples_*.jsonl)

Rows: task and metric; columns: models; cells: value ± stderr. Then, for each model LABEL whose name is
PREFIX-<scheme> beside a PREFIX-f16, the number of items whose chosen answer (argmax of the summed
log-probabilities, the `acc` choice) differs from the F16 model's: a paired view that the two accuracies
alone hide.
"""
import glob
import json
import os
import sys


def newest(pattern):
    files = sorted(glob.glob(pattern, recursive=True), key=os.path.getmtime)
    return files[-1] if files else None


def choices(out, label, task):
    f = newest(os.path.join(out, label, "**", f"samples_{task}_*.jsonl"))
    if not f:
        return None
    picks = {}
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            s = json.loads(line)
            lls = [float(r[0]) for r in s["filtered_resps"]]
            picks[s["doc_id"]] = max(range(len(lls)), key=lls.__getitem__)
    return picks


def main():
    out, tasks, labels = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
    results, meta = {}, {}
    for label in labels:
        f = newest(os.path.join(out, label, "**", "results_*.json"))
        if f:
            r = json.load(open(f, encoding="utf-8"))
            results[label] = r["results"]
            meta[label] = (r.get("lm_eval_version"), r.get("total_evaluation_time_seconds"))
    print("| task | metric | n | " + " | ".join(labels) + " |")
    print("|---|---|--:|" + "--:|" * len(labels))
    for task in tasks:
        for metric in ("acc", "acc_norm"):
            cells, n, seen = [], "", False
            for label in labels:
                t = results.get(label, {}).get(task, {})
                v = t.get(f"{metric},none")
                if v is None:
                    cells.append("—")
                    continue
                seen = True
                n = t.get("sample_len", n)
                se = t.get(f"{metric}_stderr,none")
                cells.append(f"{v:.3f} ± {se:.3f}" if isinstance(se, float) else f"{v:.3f}")
            if seen:
                print(f"| {task} | {metric} | {n} | " + " | ".join(cells) + " |")
    times = [f"{l} {float(t):.0f} s" for l, (_, t) in meta.items() if t]
    if times:
        v = next(iter(meta.values()))[0]
        print(f"\nlm-eval {v}, local-completions; evaluation time: " + ", ".join(times) + ".")
    pairs = []
    for label in labels:
        prefix, _, scheme = label.rpartition("-")
        if prefix and scheme != "f16" and f"{prefix}-f16" in labels:
            pairs.append((label, f"{prefix}-f16"))
    if pairs:
        print("\n| model | against | " + " | ".join(f"{t}: answers changed" for t in tasks) + " |")
        print("|---|---|" + "--:|" * len(tasks))
        for a, b in pairs:
            cells = []
            for task in tasks:
                pa, pb = choices(out, a, task), choices(out, b, task)
                if not pa or not pb:
                    cells.append("—")
                    continue
                common = pa.keys() & pb.keys()
                cells.append(f"{sum(pa[d] != pb[d] for d in common)} / {len(common)}")
            print(f"| {a} | {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
