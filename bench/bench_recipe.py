"""Training recipes compared by the model they give: each change alone and all together, trained
through train.py on the sample corpus for the same number of steps (deterministic) and for the
same wall time (time per step measured in this run, recipes alternating), scored by validation
bits per byte (causal) or masked-token accuracy (masked).

    python bench/bench_recipe.py                                  # causal, 150 steps, every recipe
    python bench/bench_recipe.py --objective mlm --steps 200      # the masked recipes, 32 x 128
    python bench/bench_recipe.py --recipes baseline,muon --steps 300 --jobs 2

--jobs N trains N recipes at once with cores/N threads each (the scores do not depend on it beyond
float reduction order; the timing rounds always run one recipe at a time with every core).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each recipe is the flags it adds to BASE: config.yaml with the settings it had before these
# changes were measured (AdamW, cosine, 15% masking, the Llama block), spelled out so the rows stay
# the same whatever config.yaml now chooses. 'all' is every change that has a row.
BASE = ["--optimizer_type", "adamw", "--learning_rate", "2e-3", "--lr_scheduler", "cosine", "--data.mask_rate", "0.15"]
CAUSAL = {
    "baseline": [],
    "muon": ["--optimizer_type", "muon"],
    "wsd": ["--lr_scheduler", "wsd"],
    "qk_norm": ["--model.qk_norm", "true"],
    "relu2": ["--model.feed_forward", "relu2"],
    "zero_init": ["--model.zero_init", "true"],
    "untied": ["--model.tie_embeddings", "false", "--model.head_init_std", "0"],
    "softcap": ["--model.logit_softcap", "15"],
}
MASKED_BASE = ["--model.objective", "mlm", "--data.seq_len", "128"]
MASKED = {
    "baseline": [],
    "mask30": ["--data.mask_rate", "0.3"],
    "muon": ["--optimizer_type", "muon"],
    "wsd": ["--lr_scheduler", "wsd"],
    "qk_norm": ["--model.qk_norm", "true"],
    "relu2": ["--model.feed_forward", "relu2"],
    "zero_init": ["--model.zero_init", "true"],
}


# What was adopted. Causal: config.yaml (Muon, wsd, AdamW groups at 4e-3). Masked: config.yaml with
# --model.objective mlm (also its 30% mask rate) and QK-norm, the README's masked command.
ADOPTED = {"clm": ["--optimizer_type", "muon", "--lr_scheduler", "wsd", "--learning_rate", "4e-3"],
           "mlm": ["--optimizer_type", "muon", "--lr_scheduler", "wsd", "--learning_rate", "4e-3",
                   "--data.mask_rate", "0.3", "--model.qk_norm", "true"]}


def with_all(recipes: dict, objective: str) -> dict:
    flags = [f for name, fl in recipes.items() if name != "baseline" for f in fl]
    return {**recipes, "all": flags, "adopted": ADOPTED[objective]}


def run_train(flags: list, run_name: str, out_dir: str, threads: int) -> dict:
    """One train.py run; returns its last evaluation record and its steady step times."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "train.py", "--out_dir", out_dir, "--run_name", run_name, *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{run_name} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in open(os.path.join(out_dir, run_name, "metrics.jsonl"))]
    evals = [r for r in records if r.get("split") == "eval"]
    return {"eval": evals[-1] if evals else {}, "train": [r for r in records if r.get("split") == "train"]}


def step_seconds(flags: list, out_dir: str, name: str, steps: int, threads: int, batch: list) -> float:
    """Median seconds per optimizer step over a short run (the first steps, which allocate and
    warm caches, left out)."""
    r = run_train([*flags, "--max_steps", str(steps), "--warmup", "1", "--log_interval", "1",
                   "--eval_interval", "100000", "--save_interval", "100000", "--eval_samples", "32"], name, out_dir,
                  threads)
    rates = [rec["tokens_per_s"] for rec in r["train"][3:]]
    per_step = batch_tokens(batch)
    return statistics.median(per_step / rate for rate in rates)


def batch_tokens(batch: list) -> int:
    seq = int(batch[batch.index("--data.seq_len") + 1]) if "--data.seq_len" in batch else 256
    return 32 * seq


def score(record: dict, objective: str):
    return record.get("val_mlm_accuracy") if objective == "mlm" else record.get("val_bpb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objective", choices=["clm", "mlm"], default="clm")
    ap.add_argument("--steps", type=int, default=None, help="equal-step horizon (default: 150 clm, 200 mlm)")
    ap.add_argument("--recipes", default=None, help="comma-separated names (default: all of the objective's)")
    ap.add_argument("--extra", default="", help="flags added to every recipe, e.g. '--learning_rate 3e-3'")
    ap.add_argument("--timing_rounds", type=int, default=3)
    ap.add_argument("--timing_steps", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--no_equal_time", action="store_true", help="skip the equal-time runs")
    ap.add_argument("--timing_only", action="store_true", help="only the alternating timing rounds")
    ap.add_argument("--equal_time_only", action="store_true",
                    help="train only at each recipe's equal-time horizon (the equal-step runs already recorded)")
    ap.add_argument("--timing_from", default=None,
                    help="take s/step from a --timing_only --out JSON instead of timing again (measured quiet, "
                         "so the quality runs may share the machine)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    table = with_all(MASKED if args.objective == "mlm" else CAUSAL, args.objective)
    names = args.recipes.split(",") if args.recipes else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(table)}")
    steps = args.steps or (200 if args.objective == "mlm" else 150)
    base = BASE + (MASKED_BASE if args.objective == "mlm" else []) + args.extra.split()
    cores = os.cpu_count() or 1
    out_dir = tempfile.mkdtemp(prefix="bench_recipe_")
    common = ["--eval_interval", "100000", "--save_interval", "100000", "--log_interval", "10"]

    # Timing: alternate the recipes, one at a time with every core, a few rounds.
    times = {n: [] for n in names}
    if args.timing_from:
        recorded = {r["recipe"]: r["s_per_step"] for r in json.load(open(args.timing_from))["timing"]}
        missing = [n for n in names if n not in recorded]
        if missing:
            raise SystemExit(f"{args.timing_from} has no s/step for {', '.join(missing)}")
        times = {n: [recorded[n]] for n in {*names, "baseline"} & set(recorded)}
        args.timing_rounds = 0
    for rnd in range(args.timing_rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for n in order:
            times[n].append(step_seconds(base + table[n], out_dir, f"time_{n}_{rnd}", args.timing_steps,
                                         cores, base))
    timed = any(times.values())  # none: equal-step scores only (deterministic, any machine load)
    sec = {n: statistics.median(v) if timed else float("nan") for n, v in times.items()}
    ref = sec.get("baseline", sec[names[0]])

    if args.timing_only:
        print(f"| recipe | s/step (median of {args.timing_rounds} alternating rounds) | vs {names[0]} |\n|---|---|---|")
        for n in names:
            print(f"| {n} | {sec[n]:.3f} | {sec[n] / sec[names[0]]:.3f}x |")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"objective": args.objective, "timing": [{"recipe": n, "s_per_step": sec[n], "rounds": times[n]}
                                                                  for n in names]}, f, indent=1)
        return

    def train(n: str, n_steps: int) -> dict:
        warm = max(1, min(30, n_steps // 10))
        flags = base + table[n] + common + ["--max_steps", str(n_steps), "--warmup", str(warm)]
        return run_train(flags, f"{n}_{n_steps}", out_dir, max(1, cores // args.jobs))["eval"]

    runs = {}
    equal_time = timed and not args.no_equal_time
    if args.equal_time_only and not equal_time:
        raise SystemExit("--equal_time_only needs step times: --timing_rounds > 0 or --timing_from")
    horizon = {n: round(steps * ref / sec[n]) if timed else steps for n in names}
    jobs = [] if args.equal_time_only else [(n, steps) for n in names]
    if equal_time:
        jobs += [(n, horizon[n]) for n in names if (n, horizon[n]) not in jobs]
    started = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        for (n, s), rec in zip(jobs, pool.map(lambda j: train(*j), jobs)):
            runs[(n, s)] = score(rec, args.objective)
    metric = "masked-token accuracy" if args.objective == "mlm" else "validation bits per byte"
    timing = (f"from {args.timing_from}" if args.timing_from else
              f"median of {args.timing_rounds} alternating rounds of {args.timing_steps} steps")
    print(f"\n{args.objective}: {steps} steps; s/step {timing}; quality runs took {time.time() - started:.0f}s")
    print(f"| recipe | s/step | vs baseline | {metric} at {steps} steps | steps in baseline's time | "
          f"{metric} at equal time |")
    print("|---|---|---|---|---|---|")
    def cell(value):
        return "-" if value is None else f"{value:.4f}"

    results = []
    for n in names:
        eq_score = runs[(n, horizon[n])] if equal_time else None
        results.append({"recipe": n, "flags": table[n], "s_per_step": sec[n], "ratio": sec[n] / ref,
                        "score": runs.get((n, steps)), "equal_time_steps": horizon[n], "equal_time_score": eq_score})
        print(f"| {n} | {sec[n]:.2f} | {sec[n] / ref:.2f}x | {cell(runs.get((n, steps)))} | {horizon[n]} | "
              f"{cell(eq_score)} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"objective": args.objective, "steps": steps, "extra": args.extra, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
