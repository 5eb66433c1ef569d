#!/usr/bin/env python3
"""Build the small local multiple-choice tasks for benches/lm-eval.sh from shared/assets.

Writes JSONL files (never committed) that the YAMLs in benches/lm-eval/tasks/ read:

  mmlu_hi.jsonl      Hindi MMLU (AI4Bharat IndicInstruct mmlu_hi_translated, val split):
                     {"id","subject","question","choices":[4],"answer":0-3}
  pud_next_hi.jsonl  "which sentence comes next": the preceding sentences of one UD PUD document,
  pud_next_en.jsonl  its true next sentence and 3 sentences of other documents; the Hindi and English
                     files are the same items (PUD is sentence-aligned): {"id","context","choices":[4],"answer"}

Items are drawn with a fixed seed, so every run (and every model) sees the same ones.
Only the standard library is used.

usage: make_tasks.py ASSETS_DIR OUT_DIR [--n N] [--seed S]
"""
import argparse
import csv
import hashlib
import io
import json
import os
import random
import sys
import zipfile

MMLU_ZIP = "eval-indicinstruct-mmlu-hi/mmlu_hi_translated.zip"
MMLU_SHA = "61a3424c4466d39c6463df31d699b3a815cdefa56f9aa7a37dade396d86db7bb"
PUD_TSV = "eval-pud-hi-en/hi_en_pud.tsv"
PUD_SHA = "073addfb5ceea38f5679e2f7ccf708cb1b05481a1358521bffec1c09a297341f"
# Longest MMLU item kept (question + longest choice, characters): keeps a CPU run short; SmolLM2's
# byte-level BPE spends ~1 token per 1-2 Devanagari characters.
MMLU_MAX_CHARS = 700
# Context of a PUD item: at most this many preceding sentences of the document.
PUD_MAX_CONTEXT = 2


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(path, want):
    got = sha256(path)
    if got != want:
        sys.exit(f"{path}: sha256 {got}, PROVENANCE.md says {want}")


def mmlu_hi(assets, n, seed):
    path = os.path.join(assets, MMLU_ZIP)
    check(path, MMLU_SHA)
    rows = []
    with zipfile.ZipFile(path) as z:
        for name in sorted(z.namelist()):
            if "/val/" not in name or not name.endswith("_val.csv"):
                continue
            subject = os.path.basename(name)[: -len("_val.csv")]
            text = z.read(name).decode("utf-8")
            for i, r in enumerate(csv.reader(io.StringIO(text))):
                if len(r) != 6 or r[5].strip() not in "ABCD" or not r[5].strip():
                    continue
                q, choices = r[0].strip(), [c.strip() for c in r[1:5]]
                if any(not c for c in choices) or len(set(choices)) < 4:
                    continue
                if len(q) + max(len(c) for c in choices) > MMLU_MAX_CHARS:
                    continue
                rows.append({
                    "id": f"{subject}/{i}",
                    "subject": subject,
                    "question": q,
                    "choices": choices,
                    "answer": "ABCD".index(r[5].strip()),
                })
    random.Random(seed).shuffle(rows)
    return rows[:n], len(rows)


def pud_next(assets, n, seed):
    path = os.path.join(assets, PUD_TSV)
    check(path, PUD_SHA)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0] == "sent_id\thi\ten", lines[0]
    docs = {}  # document id (n01001) -> [(sent_id, hi, en)] in file order
    for line in lines[1:]:
        if not line:
            continue
        sid, hi, en = line.split("\t")
        docs.setdefault(sid[:6], []).append((sid, hi.strip(), en.strip()))
    pairs = []  # (doc, index of the true next sentence)
    for d, sents in docs.items():
        for k in range(1, len(sents)):
            pairs.append((d, k))
    rng = random.Random(seed)
    rng.shuffle(pairs)
    all_sents = [(d, s) for d, sents in docs.items() for s in sents]
    hi_items, en_items = [], []
    for d, k in pairs[:n]:
        sents = docs[d]
        ctx = sents[max(0, k - PUD_MAX_CONTEXT) : k]
        true = sents[k]
        distract = []
        while len(distract) < 3:
            od, s = rng.choice(all_sents)
            if od != d and s not in distract:
                distract.append(s)
        answer = rng.randrange(4)
        opts = distract[:answer] + [true] + distract[answer:]
        for lang, col, out in (("hi", 1, hi_items), ("en", 2, en_items)):
            out.append({
                "id": true[0],
                "context": " ".join(s[col] for s in ctx),
                "choices": [s[col] for s in opts],
                "answer": answer,
            })
    return hi_items, en_items, len(pairs)


def write(out_dir, name, items):
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("assets", help="shared/assets directory")
    ap.add_argument("out", help="directory for the JSONL files")
    ap.add_argument("--n", type=int, default=150, help="items per task (default 150)")
    ap.add_argument("--seed", type=int, default=25, help="sampling seed (default 25)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    mmlu, mmlu_pool = mmlu_hi(a.assets, a.n, a.seed)
    hi, en, pud_pool = pud_next(a.assets, a.n, a.seed)
    for name, items, pool in (("mmlu_hi.jsonl", mmlu, mmlu_pool), ("pud_next_hi.jsonl", hi, pud_pool),
                              ("pud_next_en.jsonl", en, pud_pool)):
        path = write(a.out, name, items)
        print(f"{path}: {len(items)} items (of {pool}), sha256 {sha256(path)[:16]}")


if __name__ == "__main__":
    main()
