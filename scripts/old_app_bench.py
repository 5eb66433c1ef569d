#!/usr/bin/env python3
"""The old app's stack on the GPU host: transformers + bitsandbytes NF4 (double
quantization, bf16 compute), greedy, fixed new-token count; prints latency per
request like the FastAPI app's /generate did (~460 ms per 50 tokens on a T4).

usage: old_app_bench.py CHECKPOINT [--new-tokens 50] [--requests 10]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint")
ap.add_argument("--new-tokens", type=int, default=50)
ap.add_argument("--requests", type=int, default=10)
ap.add_argument("--prompt", default="how to manage time effectively?")
a = ap.parse_args()

t0 = time.time()
cfg = BitsAndBytesConfig(
    load_in_4bit=True,
    bnb_4bit_quant_type="nf4",
    bnb_4bit_use_double_quant=True,
    bnb_4bit_compute_dtype=torch.bfloat16,
)
tok = AutoTokenizer.from_pretrained(a.checkpoint, use_fast=False)
model = AutoModelForCausalLM.from_pretrained(a.checkpoint, quantization_config=cfg, device_map="cuda:0")
model.eval()
load_s = time.time() - t0
prompt = f"<|user|>\n{a.prompt}\n<|assistant|>\n"
ids = tok(prompt, return_tensors="pt").input_ids.to("cuda:0")

def one():
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
    torch.cuda.synchronize()
    return time.perf_counter() - t, out.shape[1] - ids.shape[1]

one()  # warm-up
lat = []
for _ in range(a.requests):
    dt, n = one()
    assert n == a.new_tokens, n
    lat.append(dt)
lat.sort()
res = {
    "stack": "transformers %s + bitsandbytes NF4 (double quant), bf16 compute" % __import__("transformers").__version__,
    "gpu": torch.cuda.get_device_name(0),
    "load_seconds": round(load_s, 2),
    "new_tokens": a.new_tokens,
    "requests": a.requests,
    "latency_ms_p50": round(statistics.median(lat) * 1000, 1),
    "latency_ms_mean": round(statistics.mean(lat) * 1000, 1),
    "latency_ms_max": round(lat[-1] * 1000, 1),
    "requests_per_s": round(1 / statistics.mean(lat), 3),
    "tokens_per_s": round(a.new_tokens / statistics.mean(lat), 1),
}
print(json.dumps(res, indent=2))
