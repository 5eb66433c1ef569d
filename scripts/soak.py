#!/usr/bin/env python3
"""Soak test for a running `airavata serve` (standard library only, so it runs on the GPU host).

N concurrent clients send a mix of requests for a fixed time: /generate and /v1/chat/completions,
streamed and not, greedy and sampled, some with stop strings, prompts from the Airavata prompt set;
a share of streamed requests is dropped by the client after a few events (disconnects). Every
INTERVAL seconds it records the server's RSS, GPU memory (nvidia-smi, when present), KV cells in
use and kept as prompt cache, and slot states (running / waiting / free) from /metrics and /info.

At the end it checks, and exits 1 when any check fails:
  * every request ended with an HTTP status (or was dropped by the client on purpose), no 5xx;
  * no slot stuck: once the load stops, running and waiting return to 0 and KV cells in use by
    requests return to 0 (cells kept as prompt cache are bounded by the context size);
  * nothing grows without bound: RSS and GPU memory at the end are within 5 % + 64 MiB of their
    values after the first quarter (warm-up);
  * greedy output for a fixed prompt at the end equals the one at the start.

Usage: soak.py --url http://127.0.0.1:8080 --pid SERVER_PID --duration 480 --concurrency 64 \
               --prompts prompts.jsonl --out DIR
Writes DIR/soak-timeseries.csv, DIR/soak-summary.json, DIR/soak.svg (a plot) and prints a report.
"""
import argparse
import csv
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter

ERRORS = {}  # first error body per HTTP status
STOPS = [["\n\n"], ["।"], ["3."], ["</s>", "<|user|>"]]


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True, help="server process id (for RSS)")
    p.add_argument("--duration", type=float, default=480)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--disconnect", type=float, default=0.10)
    p.add_argument("--prompts", required=True, help="jsonl with 'prompt' and 'messages'")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--gpu", default=os.environ.get("SOAK_GPU", "0"), help="nvidia-smi GPU index")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


class Client:
    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 80

    def conn(self, timeout=600):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path):
        c = self.conn(30)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def post_json(self, path, body):
        c = self.conn()
        try:
            c.request("POST", path, json.dumps(body).encode(), {"content-type": "application/json"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def metric(text, name):
    m = re.search(r"^" + re.escape(name) + r"(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def vram_mib(gpu):
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(gpu)],
            capture_output=True, text=True, timeout=20)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return float("nan")


def greedy(client):
    body = {"prompt": "<|user|>\nभारत की राजधानी क्या है? एक वाक्य में बताइए।\n<|assistant|>\n",
            "max_new_tokens": 64, "temperature": 0}
    s, b = client.post_json("/generate", body)
    return s, json.loads(b).get("generated_text") if s == 200 else b.decode("utf-8", "replace")


def one_request(client, rng, prompts, args, outcomes, lock):
    p = rng.choice(prompts)
    stream = rng.random() < 0.5
    chat = rng.random() < 0.5
    sampled = rng.random() < 0.5
    drop = stream and rng.random() < args.disconnect / 0.5  # disconnects among streamed requests
    body = {"stream": stream}
    if chat:
        path = "/v1/chat/completions"
        body["messages"] = p["messages"]
        body["max_tokens"] = rng.randint(16, args.max_tokens)
    else:
        path = "/generate"
        body["prompt"] = p["prompt"]
        body["max_new_tokens"] = rng.randint(16, args.max_tokens)
    if sampled:
        body.update(temperature=0.8, top_p=0.95, seed=rng.randint(0, 2**31))
    else:
        body["temperature"] = 0
    if rng.random() < 0.3:
        body["stop"] = rng.choice(STOPS)
    kind = f"{'chat' if chat else 'generate'}-{'stream' if stream else 'plain'}"
    c = client.conn()
    try:
        c.request("POST", path, json.dumps(body).encode(), {"content-type": "application/json"})
        r = c.getresponse()
        status = r.status
        if stream and status == 200:
            events, done = 0, False
            while True:
                line = r.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    events += 1
                    if line.strip() == b"data: [DONE]" or b'"finish_reason":"' in line or b'"done":true' in line:
                        done = True
                    if drop and events >= 3:
                        kind += "-dropped"
                        break
            result = "dropped" if drop and events >= 3 else ("ok" if done or events > 0 else "empty")
        else:
            data = r.read()
            result = "ok" if status == 200 else f"http-{status}"
            if status != 200:
                with lock:
                    ERRORS.setdefault(status, data.decode("utf-8", "replace")[:200])
            if status == 200:
                json.loads(data)  # must parse
    except (OSError, http.client.HTTPException, ValueError) as e:
        status, result = -1, f"error-{type(e).__name__}"
    finally:
        c.close()
    with lock:
        outcomes[(kind, status, result)] += 1


def worker(client, seed, prompts, args, deadline, outcomes, lock):
    rng = random.Random(seed)
    while time.time() < deadline:
        one_request(client, rng, prompts, args, outcomes, lock)


def sample(client, args, t0, slots):
    s, m = client.get("/metrics")
    return {
        "t": round(time.time() - t0, 1),
        "rss_mib": round(rss_kib(args.pid) / 1024, 1),
        "vram_mib": vram_mib(args.gpu),
        "kv_tokens": metric(m, "airavata_kv_cache_tokens"),
        "kv_cached_tokens": metric(m, "airavata_kv_cache_cached_tokens"),
        "running": metric(m, "airavata_requests_running"),
        "waiting": metric(m, "airavata_requests_waiting"),
        "free_slots": slots - metric(m, "airavata_requests_running"),
        "generated_tokens": metric(m, "airavata_generated_tokens_total"),
    }


def svg_plot(rows, path):
    """A small multi-panel line plot, no dependencies."""
    series = [("rss_mib", "RSS (MiB)"), ("vram_mib", "GPU memory (MiB)"),
              ("kv_tokens", "KV cells used by requests"), ("kv_cached_tokens", "KV cells kept as cache"),
              ("running", "running"), ("waiting", "waiting")]
    w, h, pad = 760, 130, 44
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * len(series) + 20}" '
           f'font-family="sans-serif" font-size="11">']
    tmax = max(r["t"] for r in rows) or 1
    for i, (key, label) in enumerate(series):
        vals = [r[key] for r in rows if r[key] == r[key]]
        y0 = i * h + 10
        out.append(f'<text x="{pad}" y="{y0 + 12}">{label}</text>')
        if not vals:
            out.append(f'<text x="{pad}" y="{y0 + 40}">(not available)</text>')
            continue
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1
        pts = []
        for r in rows:
            if r[key] != r[key]:
                continue
            x = pad + (w - 2 * pad) * r["t"] / tmax
            y = y0 + h - 20 - (h - 40) * (r[key] - lo) / (hi - lo)
            pts.append(f"{x:.1f},{y:.1f}")
        out.append(f'<polyline fill="none" stroke="#1f5fa8" stroke-width="1.5" points="{" ".join(pts)}"/>')
        out.append(f'<text x="2" y="{y0 + 24}">{hi:.0f}</text><text x="2" y="{y0 + h - 20}">{lo:.0f}</text>')
        out.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y0 + h - 20}" y2="{y0 + h - 20}" stroke="#999"/>')
    out.append(f'<text x="{w - pad - 60}" y="{h * len(series) + 14}">t = {tmax:.0f} s</text></svg>')
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    prompts = [json.loads(l) for l in open(args.prompts, encoding="utf-8") if l.strip()]
    prompts = [p for p in prompts if p.get("prompt") and p.get("messages")]
    if not prompts:
        sys.exit("no prompts with 'prompt' and 'messages'")
    client = Client(args.url)
    s, info = client.get("/info")
    slots = int(json.loads(info).get("slots") or 0)
    s0, g0 = greedy(client)
    print(f"greedy at start: HTTP {s0}: {str(g0)[:80]!r}", flush=True)

    outcomes, lock = Counter(), threading.Lock()
    t0 = time.time()
    deadline = t0 + args.duration
    threads = [threading.Thread(target=worker, args=(client, args.seed * 1000 + i, prompts, args, deadline,
                                                     outcomes, lock), daemon=True)
               for i in range(args.concurrency)]
    for t in threads:
        t.start()
    rows = []
    while time.time() < deadline:
        rows.append(sample(client, args, t0, slots))
        r = rows[-1]
        print(f"t={r['t']:6.0f}s rss={r['rss_mib']:.0f}MiB vram={r['vram_mib']}MiB kv={r['kv_tokens']:.0f} "
              f"cached={r['kv_cached_tokens']:.0f} running={r['running']:.0f} waiting={r['waiting']:.0f} "
              f"requests={sum(outcomes.values())}", flush=True)
        time.sleep(max(0.0, min(args.interval, deadline - time.time())))
    for t in threads:
        t.join(timeout=args.max_tokens)  # in-flight requests finish (each is at most max-tokens long)
    stuck_threads = sum(t.is_alive() for t in threads)
    # Load is off: slots must drain.
    drained = None
    for _ in range(60):
        r = sample(client, args, t0, slots)
        rows.append(r)
        if r["running"] == 0 and r["waiting"] == 0 and r["kv_tokens"] == 0:
            drained = r
            break
        time.sleep(1)
    s1, g1 = greedy(client)
    rows.append(sample(client, args, t0, slots))

    with open(os.path.join(args.out, "soak-timeseries.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        wr.writeheader()
        wr.writerows(rows)
    svg_plot(rows, os.path.join(args.out, "soak.svg"))

    warm = rows[max(1, len(rows) // 4)]
    end = rows[-1]
    total = sum(outcomes.values())
    by_result = Counter()
    for (kind, status, result), n in outcomes.items():
        by_result[result] += n
    five_xx = sum(n for (k, s, r), n in outcomes.items() if s >= 500)
    no_status = sum(n for (k, s, r), n in outcomes.items() if s == -1)

    def bounded(a, b):
        return not (a == a and b == b) or b <= a * 1.05 + 64

    checks = {
        "every request ended with a status (no transport errors)": no_status == 0,
        "no 5xx": five_xx == 0,
        "no client thread stuck": stuck_threads == 0,
        "slots drained after the load (running = waiting = KV used by requests = 0)": drained is not None,
        "RSS bounded (end <= 1.05 x after warm-up + 64 MiB)": bounded(warm["rss_mib"], end["rss_mib"]),
        "GPU memory bounded (end <= 1.05 x after warm-up + 64 MiB)": bounded(warm["vram_mib"], end["vram_mib"]),
        "greedy output at the end equals the start": s0 == 200 and s1 == 200 and g0 == g1,
    }
    summary = {
        "duration_s": args.duration, "concurrency": args.concurrency, "requests": total,
        "by_result": dict(by_result),
        "by_kind_status_result": {f"{k} {s} {r}": n for (k, s, r), n in sorted(outcomes.items())},
        "rss_mib": {"start": rows[0]["rss_mib"], "after_warmup": warm["rss_mib"], "end": end["rss_mib"],
                    "max": max(r["rss_mib"] for r in rows)},
        "vram_mib": {"start": rows[0]["vram_mib"], "after_warmup": warm["vram_mib"], "end": end["vram_mib"]},
        "generated_tokens": end["generated_tokens"],
        "first_error_per_status": ERRORS,
        "kv_cached_tokens_end": end["kv_cached_tokens"],
        "greedy_start": g0, "greedy_end": g1,
        "checks": checks,
    }
    with open(os.path.join(args.out, "soak-summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("by_kind_status_result",)},
                     indent=1, ensure_ascii=False))
    for name, ok in checks.items():
        print(("PASS " if ok else "FAIL ") + name)
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
