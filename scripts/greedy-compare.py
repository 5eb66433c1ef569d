#!/usr/bin/env python3
"""Greedy answers of one server run against another's, up to near-ties (issue 24's end-to-end check of our
CUDA kernels against llama.cpp's on the same model).

  greedy-compare.py fetch --url URL --prompts PROMPTS.jsonl --n N --rounds R --out RUN.json [--max-tokens 64]
      R rounds, each one /v1/completions request of N copies of a prompt (greedy; the engine decodes the
      N sequences together, the same steps in every run; start a fresh server per run), each answer with
      its tokens' log-probabilities and the runner-up; round r's prompt is the r-th of the shared Airavata set (last user message, else `prompt`).
  greedy-compare.py compare A.json B.json [--n N]
      Per request: equal token for token, or parting where either run's top two candidates were within
      0.01 nats (a near-tie: kernels that sum in another order may pick either). Exit 1 on any other
      difference. Also the first token's log-probabilities (same prompt, so the same distribution up to
      rounding), for the candidates both answers list: A against B, and, as the yardstick of each run's
      own rounding noise, every copy against the first copy of its round (N copies per round). A
      random-weight model's distribution is nearly flat (top-2 gaps of a few hundredths of a nat), so its
      greedy answers part at any rounding change; there these spreads are the comparison that means something.
"""
import statistics
import argparse
import json
import sys
import urllib.request

NEAR_TIE = 0.01


def prompts(path, n):
    out = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line:
            continue
        v = json.loads(line)
        users = [m.get("content") for m in v.get("messages") or [] if m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            out.append(users[-1])
        elif isinstance(v.get("prompt"), str):
            out.append(v["prompt"])
        if len(out) == n:
            break
    if len(out) < n:
        sys.exit(f"{path}: only {len(out)} prompts, {n} wanted")
    return out


def fetch(args):
    # Each round is ONE request whose `prompt` lists N copies of one prompt: the server admits the N
    # choices together, so every step decodes the same N sequences in every run and the step's shapes
    # (which pick the kernels and their rounding) do not depend on arrival times. Separate requests
    # join steps in a timing-dependent order, and a fresh server per run keeps the prompt cache out.
    results = []
    for text in prompts(args.prompts, args.rounds):
        body = {"prompt": [text] * args.n, "max_tokens": args.max_tokens, "temperature": 0, "logprobs": 2}
        req = urllib.request.Request(f"{args.url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            choices = sorted(json.load(r)["choices"], key=lambda c: c["index"])
        for c in choices:
            lp = c["logprobs"]
            results.append({"tokens": lp["tokens"], "token_logprobs": lp["token_logprobs"],
                            "top_logprobs": lp["top_logprobs"]})
    json.dump(results, open(args.out, "w"), ensure_ascii=False)
    print(f"{len(results)} answers -> {args.out}")


def gap(top):
    """Log-probability gap between the two most likely candidates at a position."""
    v = sorted(top.values(), reverse=True) if top else []
    return v[0] - v[1] if len(v) >= 2 else float("inf")


def compare(args):
    a, b = json.load(open(args.a)), json.load(open(args.b))
    if len(a) != len(b):
        sys.exit(f"{len(a)} answers against {len(b)}")
    equal = ties = bad = 0
    for i, (x, y) in enumerate(zip(a, b)):
        k = next((j for j, (s, t) in enumerate(zip(x["tokens"], y["tokens"])) if s != t), None)
        if k is None and len(x["tokens"]) == len(y["tokens"]):
            equal += 1
            continue
        k = k if k is not None else min(len(x["tokens"]), len(y["tokens"]))
        g = min(gap(x["top_logprobs"][k]) if k < len(x["top_logprobs"]) else float("inf"),
                gap(y["top_logprobs"][k]) if k < len(y["top_logprobs"]) else float("inf"))
        if g < NEAR_TIE:
            ties += 1
            print(f"request {i}: near-tie at token {k} (top-2 gap {g:.4f} nats)")
        else:
            bad += 1
            print(f"request {i}: DIFFERENT at token {k} (top-2 gap {g:.4f} nats): "
                  f"{''.join(x['tokens'][k:k + 8])!r} vs {''.join(y['tokens'][k:k + 8])!r}")
    print(f"{len(a)} answers: {equal} equal, {ties} part at a near-tie, {bad} different")
    spreads = [("A vs B", [(x, y) for x, y in zip(a, b)]),
               ("copies within A", [(x, a[i - i % args.n]) for i, x in enumerate(a) if i % args.n]),
               ("copies within B", [(y, b[i - i % args.n]) for i, y in enumerate(b) if i % args.n])]
    for name, pairs in spreads:
        d = [abs(x["top_logprobs"][0][t] - y["top_logprobs"][0][t]) for x, y in pairs
             if x["top_logprobs"] and y["top_logprobs"] for t in set(x["top_logprobs"][0]) & set(y["top_logprobs"][0])]
        if d:
            print(f"first-token log-prob differences, {name}: median {statistics.median(d):.5f}, "
                  f"max {max(d):.5f} nats ({len(d)} candidates)")
    sys.exit(1 if bad else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch")
    f.add_argument("--url", required=True)
    f.add_argument("--prompts", required=True)
    f.add_argument("--n", type=int, default=32)
    f.add_argument("--rounds", type=int, default=4)
    f.add_argument("--max-tokens", type=int, default=64)
    f.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--n", type=int, default=32, help="copies per round (fetch's --n)")
    args = p.parse_args()
    fetch(args) if args.cmd == "fetch" else compare(args)


if __name__ == "__main__":
    main()
