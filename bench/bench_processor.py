"""Processor throughput and memory, against bare tokenizer batch-encoding of the same text.

    python bench/bench_processor.py            # sample corpus at 1x and 10x

Each measurement runs in its own process so peak RSS is that job's alone."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHILD = r"""
import json, os, sys, time, resource
sys.path.insert(0, {root!r})
from data.processor import DataProcessor
from data.tokenizer import load_tokenizer
from data.jsonl import iter_texts
mode, corpus, tok_path, out = sys.argv[1:5]
start = time.perf_counter()
if mode == "encode":   # the floor: read valid texts and batch-encode them, nothing written
    tok = load_tokenizer(tok_path)
    n_tokens = n_bytes = 0
    batch, size = [], 0
    for text in iter_texts(corpus):   # the same batches the processor makes: 2048 docs or 2 MiB
        batch.append(text); size += len(text.encode())
        if len(batch) == 2048 or size >= 2 << 20:
            n_tokens += sum(len(ids) for ids in tok.encode_batch(batch)); n_bytes += size; batch, size = [], 0
    if batch:
        n_tokens += sum(len(ids) for ids in tok.encode_batch(batch)); n_bytes += size
else:
    p = DataProcessor(tok_path, val_ratio=0.05, show_progress=False)
    p.process_dataset(corpus, out, resume=False)
    n_tokens = sum(s["tokens"] for s in p.stats["splits"].values())
    n_bytes = sum(s["text_bytes"] for s in p.stats["splits"].values())
elapsed = time.perf_counter() - start
print(json.dumps(dict(tokens=n_tokens, bytes=n_bytes, seconds=elapsed,
                      rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run(mode, corpus, tok, out):
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT), mode, corpus, tok, out],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    from data.prepare import ensure_tokenizer
    from data.sample import build_sample_corpus
    sample = build_sample_corpus(os.path.join(ROOT, "dataset", "sample.jsonl"))
    tok = ensure_tokenizer([sample], os.path.join(ROOT, "dataset", "sample"), 4096, "text")
    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "sample_x10.jsonl")
        with open(big, "wb") as out, open(sample, "rb") as f:
            data = f.read()
            for _ in range(10):
                out.write(data)
        print(f"{'corpus':12s} {'job':10s} {'MB':>7s} {'tokens/s':>11s} {'MB/s':>7s} {'peak RSS MiB':>13s}")
        rss = {}
        for name, corpus in (("sample x1", sample), ("sample x10", big)):
            for mode in ("encode", "process"):
                r = run(mode, corpus, tok, os.path.join(tmp, "train.bin"))
                rss[(name, mode)] = r["rss_mb"]
                print(f"{name:12s} {mode:10s} {r['bytes'] / 1e6:7.1f} {r['tokens'] / r['seconds']:11,.0f} "
                      f"{r['bytes'] / 1e6 / r['seconds']:7.2f} {r['rss_mb']:13.0f}")
        growth = rss[("sample x10", "process")] / rss[("sample x1", "process")] - 1
        print(f"peak RSS growth from 1x to 10x corpus (process): {growth * 100:+.1f}%")


if __name__ == "__main__":
    main()
