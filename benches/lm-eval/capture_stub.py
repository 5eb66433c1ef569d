#!/usr/bin/env python3
"""A stand-in server that records what lm-eval's `local-completions` model sends.

Answers like an OpenAI legacy completions server with `echo` + `logprobs` (made-up log-probabilities)
and like vLLM's tokenizer routes (`GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`, which
lm-eval's `tokenizer_backend=remote` uses), with one token per character. Every request is appended
to LOG as one JSON line {"method","path","body"}. Used to check the task YAMLs end to end and to
capture the exact request bodies; it scores nothing real.

usage: capture_stub.py PORT LOG
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, LOG = int(sys.argv[1]), sys.argv[2]


def toks(text):
    return [ord(c) for c in text]


def lp(i, t):
    return -((t * 2654435761 + i) % 997) / 100.0 - 0.01


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def record(self, body):
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "headers": {k: v for k, v in self.headers.items()},
                                "body": body}, ensure_ascii=False) + "\n")

    def do_GET(self):
        self.record(None)
        if self.path == "/tokenizer_info":
            return self.reply({"eos_token": "\x03", "bos_token": "\x02", "pad_token": None,
                               "tokenizer_class": "stub", "model_max_length": 8192})
        if self.path in ("/health", "/v1/models"):
            return self.reply({"status": "ok", "data": [{"id": "stub"}]})
        self.reply({"error": "not found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
        self.record(body)
        if self.path == "/tokenize":
            return self.reply({"tokens": toks(body["prompt"]), "count": len(body["prompt"])})
        if self.path == "/detokenize":
            return self.reply({"prompt": "".join(chr(t) for t in body["tokens"])})
        if self.path != "/v1/completions":
            return self.reply({"error": "not found"}, 404)
        prompts = body["prompt"]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        choices = []
        for idx, p in enumerate(prompts):
            ids = toks(p) if isinstance(p, str) else list(p)
            text = "".join(chr(t) for t in ids)
            echo = bool(body.get("echo"))
            n_new = int(body.get("max_tokens", 16))
            gen = [ord("x")] * n_new
            all_ids = (ids if echo else []) + gen
            tl = [lp(i, t) for i, t in enumerate(all_ids)]
            if echo and tl:
                tl[0] = None
            logprobs = None
            if body.get("logprobs") is not None:
                logprobs = {
                    "tokens": [chr(t) for t in all_ids],
                    "token_logprobs": tl,
                    "top_logprobs": [None if v is None else {chr(t): v} for t, v in zip(all_ids, tl)],
                    "text_offset": list(range(len(all_ids))),
                }
            choices.append({"index": idx, "text": (text if echo else "") + "x" * n_new,
                            "logprobs": logprobs, "finish_reason": "length"})
        self.reply({"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": body.get("model"),
                    "choices": choices, "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})


ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
