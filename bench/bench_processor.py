"""Processor throughput and memory, against the tokenizer's bare batch encode of the same text.

    python bench/bench_processor.py [--repeats 3]      # sample corpus at 1x and 10x
    python bench/bench_processor.py --repeats 1 --workers 1 2   # and sharded runs with 1 and 2 worker processes
    python bench/bench_processor.py --repeats 1 --parquet       # and the same corpora read from Parquet

Every measurement runs in a fresh process, so its peak RSS is that job's alone. The bare encode
gets the processor's own batches, read and parsed before its clock starts: it is the ceiling the
processor (reading, validating, tokenizing, writing, fsync, progress commits) is measured against.
Runs alternate between the two jobs and the best of --repeats is kept, so a busy machine slows
both alike rather than one of them; CPU seconds (user + system, all threads) are printed too, as
other tenants of a shared machine move them far less than wall time. Sharded runs (--workers) cut
the corpus into 4 MB byte ranges processed by K worker processes (data/build/sharded.py); their CPU time
includes the workers', their peak RSS is the largest single process's."""
import argparse
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
from data.build.corpus_processor import DataProcessor
job, corpus, tok_path, out = sys.argv[1:5]
SHARD_MB = 4.0  # fixed pieces: a larger corpus means more pieces, not larger ones
def cpu_seconds():
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
def peak_rss_mb():  # VmHWM, not ru_maxrss: Linux carries the forking parent's peak across exec into the latter
    with open("/proc/self/status") as f:
        own = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
proc = DataProcessor(tok_path, val_ratio=0.05, show_progress=False)
if job == "encode":
    from tqdm import tqdm
    state = {{"file_index": 0, "offset": 0}}
    batches = [c.texts for c in proc._read_chunks([corpus], state, tqdm(disable=True))]
    n_bytes = sum(len(t.encode()) for b in batches for t in b)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    n_tokens = sum(len(ids) + 1 for b in batches for ids in proc.tokenizer.encode_batch(b))  # + eos, as written
elif job.startswith("workers"):
    from data.build.sharded import process_sharded
    settings = dict(val_ratio=0.05, seed=0, chunk_size=2048)  # the default reading settings
    start, cpu_start = time.perf_counter(), cpu_seconds()
    summary = process_sharded([corpus], os.path.join(os.path.dirname(out), "shards"), tok_path, settings,
                              workers=int(job[len("workers"):]), shard_mb=SHARD_MB,
                              resume=False, show_progress=False)
    n_tokens = summary["tokens"]
    n_bytes = sum(s["text_bytes"] for r in summary["results"] for s in r["stats"]["splits"].values())
else:
    start, cpu_start = time.perf_counter(), cpu_seconds()
    proc.process_dataset(corpus, out, resume=False)
    n_tokens = proc.timing["tokens"]
    n_bytes = sum(s["text_bytes"] for s in proc.stats["splits"].values())
seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
print(json.dumps(dict(tokens=n_tokens, bytes=n_bytes, seconds=seconds, cpu=cpu, rss_mb=peak_rss_mb())))
"""


def run_child(job, corpus, tok, out) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT), job, corpus, tok, out],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{job} on {corpus} failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(corpus, tok, out, repeats, jobs) -> dict:
    """Best time and highest peak RSS of each job over `repeats` alternating runs."""
    best = {}
    for _ in range(repeats):
        for job in jobs:
            r = run_child(job, corpus, tok, out)
            b = best.setdefault(job, dict(r))
            b["seconds"], b["rss_mb"] = min(b["seconds"], r["seconds"]), max(b["rss_mb"], r["rss_mb"])
            b["cpu"] = min(b["cpu"], r["cpu"])
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each job per corpus; the best is kept")
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="also time sharded runs with these "
                                                                           "numbers of worker processes")
    parser.add_argument("--parquet", action="store_true", help="also process both corpora written as Parquet "
                                                               "(streamed through pyarrow)")
    args = parser.parse_args()
    from data.build.prepare import ensure_tokenizer
    from data.sample import build_sample_corpus
    sample = build_sample_corpus(os.path.join(ROOT, "dataset", "sample.jsonl"))
    tok = ensure_tokenizer([sample], os.path.join(ROOT, "dataset", "sample"), 4096)
    print(f"CPU cores: {os.cpu_count()}, tokenizer: {tok} (4096 tokens), best of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "sample_x10.jsonl")
        with open(big, "wb") as out, open(sample, "rb") as f:
            data = f.read()
            for _ in range(10):
                out.write(data)
        corpora = [("sample x1", sample), ("sample x10", big)]
        if args.parquet:
            corpora += [(name + " pq", to_parquet(path, os.path.join(tmp, f"x{i}.parquet")))
                        for i, (name, path) in enumerate(list(corpora))]
        print(f"{'corpus':11s} {'job':14s} {'text MB':>8s} {'tokens/s':>11s} {'MB/s':>7s} {'CPU s':>7s} "
              f"{'peak RSS MiB':>13s}")
        results = {}
        for name, corpus in corpora:
            sharded = [(f"workers{k}", f"{k} worker(s)") for k in args.workers]
            jobs = [("encode", "bare encode"), ("process", "processor")] + sharded
            if name.endswith(" pq"):  # the reading is what differs: the processor alone
                jobs = [("process", "processor")]
            results[name] = measure(corpus, tok, os.path.join(tmp, "train.bin"), args.repeats, [j for j, _ in jobs])
            for job, label in jobs:
                r = results[name][job]
                print(f"{name:11s} {label:14s} {r['bytes'] / 1e6:8.1f} {r['tokens'] / r['seconds']:11,.0f} "
                      f"{r['bytes'] / 1e6 / r['seconds']:7.2f} {r['cpu']:7.2f} {r['rss_mb']:13.0f}")
            if "encode" not in results[name]:
                continue
            enc, pro = results[name]["encode"], results[name]["process"]
            print(f"{name:11s} processor throughput = {enc['seconds'] / pro['seconds'] * 100:.0f}% of bare batch "
                  f"encode (by CPU time: {enc['cpu'] / pro['cpu'] * 100:.0f}%)")
        for job, label in [("process", "processor")] + sharded:
            growth = results["sample x10"][job]["rss_mb"] / results["sample x1"][job]["rss_mb"] - 1
            print(f"{label} peak RSS, 10x corpus vs 1x: {growth * 100:+.1f}%")
        if args.parquet:
            growth = results["sample x10 pq"]["process"]["rss_mb"] / results["sample x1 pq"]["process"]["rss_mb"] - 1
            print(f"processor on Parquet peak RSS, 10x corpus vs 1x: {growth * 100:+.1f}%")


def to_parquet(jsonl: str, path: str) -> str:
    """The corpus as one text column in row groups of 1,000 documents (about 6 MB here): pyarrow
    decodes a whole row group's column at a time, so the row group bounds the reader's memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer, open(jsonl, encoding="utf-8") as f:
        rows = []
        for line in f:
            rows.append(json.loads(line)["text"])
            if len(rows) == 1_000:
                writer.write_table(pa.table({"text": rows}, schema=schema))
                rows = []
        if rows:
            writer.write_table(pa.table({"text": rows}, schema=schema))
    return path


if __name__ == "__main__":
    main()
