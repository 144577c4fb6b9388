"""The whole study's wall clock on one GPU: the workflow's DAG, every variant of config.yaml, at a fraction
of the study's sizes, then the full study's time extrapolated from each step's measured wall time.

No checkpoint reaches the GPU machine, so the model is gemma-3-1b-it's architecture with random weights and
the data is synthetic: conversations whose token lengths follow the study's mix (benchmarks/train_speed.py's
MIX: alpaca / tulu-v2 / ultrachat_200k medians 150, 450 and 1100 tokens), 40 % prompt and 60 % answer, made
of whole-token words so that lengths come out as drawn. A random model never stops early: every answer runs
to max_new_tokens, which a trained model does not (generation is an upper bound).

  python benchmarks/study_gpu.py prepare --tokenizer /tmp/tok --work /tmp/study [--fraction 0.25]
  snakemake --cores 16 --resources gpu=1 --configfile=/tmp/study/config.yaml -- /tmp/study/results/report.md
  python benchmarks/study_gpu.py summarise --work /tmp/study --out benchmarks/study-h200/study.json

`benchmarks/study_gpu.sh` runs all three (and resumes a run a time limit cut).
"""
import argparse
import csv
import json
import math
import random
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train": 5000, "validation": 200, "test": 2000}  # per source, config.yaml's
TEMPLATE_TOKENS = 16  # the chat template's own tokens around one exchange (turn markers, roles, BOS)


def study_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def word_pieces(tokenizer_dir):
    """Vocabulary entries that are one whole lower-case word: joined by spaces, each stays one token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    words = sorted({piece[1:] for piece in tokenizer.get_vocab() if re.fullmatch(r"▁[a-z]{3,9}", piece)})
    return tokenizer, words


def synthetic_rows(name, n, max_length, words, rng):
    from train_speed import MIX  # (median, sigma) of alpaca, tulu-v2, ultrachat_200k, in that order

    median, sigma = dict(zip(["alpaca", "tulu", "ultrachat"], MIX))[name]
    rows = []
    for _ in range(n):
        length = int(math.exp(math.log(median) + sigma * rng.gauss(0, 1)))
        length = max(32, min(max_length - TEMPLATE_TOKENS, length))
        prompt = max(4, int(0.4 * length))
        rows.append({"messages": [
            {"role": "user", "content": " ".join(rng.choices(words, k=prompt)).capitalize() + "?"},
            {"role": "assistant", "content": " ".join(rng.choices(words, k=length - prompt)).capitalize() + "."},
        ]})
    return rows


def prepare(args):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    work = Path(args.work)
    (work / "data").mkdir(parents=True, exist_ok=True)
    study = study_config()
    tokenizer, words = word_pieces(args.tokenizer)
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        config = AutoConfig.from_pretrained(ROOT / "benchmarks/gemma-3-1b-it.config.json")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    max_length = study["data"]["max_length"]
    rng = random.Random(0)
    sources = []
    for source in study["data"]["sources"]:
        sizes = {split: max(1, round(args.fraction * n)) for split, n in SIZES.items()}
        path = work / "data" / f"{source['name']}.jsonl"
        # a quarter more rows than drawn: like real data, some are longer than max_length and dropped
        rows = synthetic_rows(source["name"], int(1.25 * sum(sizes.values())), max_length, words, rng)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        sources.append({"name": source["name"], "format": "messages", "files": {"train": str(path)},
                        "train": {"split": "train", "n": sizes["train"]},
                        "validation": {"n": sizes["validation"]},
                        "test": {"split": "train", "n": sizes["test"]}})
    # Forgetting at the study's own size (300 passages of 256 tokens): it does not grow with the data.
    general = work / "data" / "general.txt"
    general.write_text("\n\n".join(" ".join(rng.choices(words, k=300)).capitalize() + "." for _ in range(400)))
    overlay = {
        "output_dir": str(work / "results"),
        "seeds": [0],
        # the tokenizer folder carried there has no chat template: Gemma's built-in format, as for the
        # embedded model
        "model": {"source": "local", "path": str(model_dir), "chat_template": "gemma"},
        "data": {"sources": sources},
        # Each rate of the grid is one more training job exactly like the seed-0 run: `summarise` counts
        # them from the measured runs instead of running 5x the training here.
        "tuning": "off",
        "forgetting": {"text": str(general)},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    print(f"prepared {work}: {sum(s['train']['n'] for s in sources)} train examples, model {model_dir}")


def wall_seconds(tsv):
    with open(tsv) as handle:
        return float(next(csv.DictReader(handle, delimiter="\t"))["s"])


def decoding_seconds(log):
    """The seconds generate's log gives its decoding (the rest of the job loads the model and captures)."""
    found = re.findall(r"answers in (\d+(?:\.\d+)?) s", Path(log).read_text(errors="replace"))
    return float(found[-1]) if found else None


def evaluations(study, fraction):
    """How many validation losses one training run of the study measures at this fraction of its data: one
    every eval_every steps, and one at the end unless the last step was one of them (peftbench.train)."""
    training = study["training"]
    examples = max(1, round(fraction * SIZES["train"])) * len(study["data"]["sources"])
    steps = math.ceil(examples / training["batch_size"]) * training["epochs"]
    every = training.get("eval_every", 0)
    return (steps // every if every else 0) + (not every or steps % every != 0)


def evaluation_seconds(metrics, log):
    """Each validation loss's seconds in one training run. train_metrics.json records them; a run from before
    it did (2026-12-02) has them from its log: the time from the "step N/T loss" line to the "step N/T
    validation loss" line, and an evaluation with no such pair (the final one, off the log_every grid) is
    the rest of validation_seconds."""
    history = metrics.get("validation", [])
    if history and all("seconds" in entry for entry in history):
        return [entry["seconds"] for entry in history]
    stamps = {}
    pattern = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO peftbench\.train: step (\d+)/\d+ (loss|validation loss)"
    for stamp, step, what in re.findall(pattern, Path(log).read_text(errors="replace")):
        stamps[(int(step), what)] = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")

    def timed(step):
        start, end = stamps.get((step, "loss")), stamps.get((step, "validation loss"))
        return (end - start).total_seconds() if start and end else None
    seconds = [timed(entry["step"]) for entry in history]
    unpaired = [i for i, s in enumerate(seconds) if s is None]
    if len(unpaired) > 1:
        raise SystemExit(f"{log}: {len(unpaired)} validation losses without a timed pair; cannot split them")
    for i in unpaired:
        seconds[i] = metrics["validation_seconds"] - sum(s for s in seconds if s is not None)
    return seconds


def train_parts(tsv, metrics_path, log, scale, evaluations_full):
    """A training job's measured seconds split by how each part grows with the data: setup (loading, wrapping)
    and CUDA-graph captures (the study meets its row lengths early) stay; the steps grow with the examples;
    each validation loss grows with the examples (scale) and the full run measures `evaluations_full` of them,
    except what the run's first evaluation took beyond the others (compiling the no-grad forward), which stays."""
    wall, metrics = wall_seconds(tsv), json.loads(Path(metrics_path).read_text())
    loop = metrics["train_seconds"]
    captures = (metrics.get("cuda_graphs") or {}).get("capture_seconds", 0.0)
    validation = metrics.get("validation_seconds", 0.0)
    each = evaluation_seconds(metrics, log) if validation else []
    typical = statistics.median(each[1:]) if len(each) > 1 else (each[0] if each else 0.0)
    first_extra = each[0] - typical if each else 0.0
    steps = loop - captures - validation
    encode = metrics.get("encode_seconds", 0.0)  # runs before 2026-12-03 did not time it: it stays in setup
    setup = wall - loop - encode
    return {"wall_s": wall, "setup_s": setup, "encode_s": encode, "captures_s": captures,
            "validation_s": validation, "validation_first_extra_s": first_extra, "validation_each_s": typical,
            "steps_s": steps,
            "full_job_s": setup + scale * encode + captures + first_extra + evaluations_full * scale * typical
            + scale * steps}


def summarise(args):
    work = Path(args.work)
    study = study_config()
    # Several runs' results folders: a job counts from the last folder that has it; the jobs of --stale steps
    # count from the last folder only (their code changed after the earlier runs).
    folders = [Path(r) for r in args.results] if args.results else [work / "results"]

    def find(step, relative):
        """(path, folder index) of a job's file in the last folder that has it, or (None, None)."""
        for index in reversed(range(len(folders))):
            if (folders[index] / relative).exists():
                if step in args.stale and index != len(folders) - 1:
                    break
                return folders[index] / relative, index
        return None, None
    scale = 1 / args.fraction
    seeds = len(study["seeds"])
    grid = len(study["tuning"]["multiples"]) if study.get("tuning") not in (None, "off") else 1
    variants = study["compare"]
    trained = [v for v in variants if study["variants"][v]["kind"] != "base"]
    speed = {m: r["peftbench"]["tokens_per_s"] for m, r in
             json.loads((ROOT / "benchmarks/train.json").read_text())["methods"].items()}
    rows = []

    def row(step, variant, jobs, measured, full_job_s, how, run=None, **parts):
        rows.append({"step": step, "variant": variant, "measured": measured, **{k: round(v, 1) for k, v in
                     parts.items()}, "full_study_job_s": round(full_job_s, 1), "full_study_jobs": jobs,
                     "full_study_s": round(full_job_s * jobs, 1), "how": how,
                     **({"run": run + 1} if run is not None and len(folders) > 1 else {})})

    for step, grows in [("prepare_model", False), ("prepare_data", True), ("prepare_test", True),
                        ("prepare_general_text", False)]:
        tsv, run = find(step, f"benchmarks/{step}.tsv")
        if tsv:
            wall = wall_seconds(tsv)
            row(step, "", 1, True, scale * wall if grows else wall,
                f"x{scale:g}: grows with the data" if grows else "does not grow with the data", run, wall_s=wall)

    # Training: per trained variant, the grid's rates at seed 0 (tuning) and the further seeds.
    train_jobs = grid + seeds - 1
    evaluations_full = evaluations(study, 1.0)
    validation_how = (f"first evaluation's extra + {evaluations_full} evaluations x {scale:g} x a later "
                      f"evaluation's seconds")
    measured_train = {}
    for variant in trained:
        metrics, run = find("train", f"{variant}/seed0/trained/train_metrics.json")
        tsv = metrics and folders[run] / "benchmarks" / variant / "seed0/train.tsv"
        if tsv and tsv.exists():
            log = folders[run] / "logs" / variant / "seed0/train.log"
            measured_train[variant] = parts = train_parts(tsv, metrics, log, scale, evaluations_full)
            row("train", variant, train_jobs, True, parts.pop("full_job_s"),
                f"setup + {scale:g} x encoding + captures + {validation_how} + {scale:g} x steps", run, **parts)
    for variant in trained:
        if variant in measured_train:
            continue
        # Not measured in this run: lora's measured job, its steps at the speed ratio of benchmarks/train.json.
        kind = study["variants"][variant]["kind"]
        ref = measured_train.get("lora")
        if ref and kind in speed:
            ratio = speed["lora"] / speed[kind]
            full = (ref["setup_s"] + scale * ref["encode_s"] + ref["captures_s"] + ref["validation_first_extra_s"]
                    + evaluations_full * scale * ref["validation_each_s"] + scale * ratio * ref["steps_s"])
            row("train", variant, train_jobs, False, full,
                f"estimated: lora's measured job, steps x{ratio:.2f} (train.json: lora {speed['lora']:,.0f} / "
                f"{kind} {speed[kind]:,.0f} tokens/s)")

    # Generation, scoring and forgetting: once per run (the base once, each trained variant once per seed).
    for step in ("generate", "score", "general_loss"):
        measured = {}
        for variant in variants:
            job = "base" if variant not in trained else f"{variant}/seed0"
            tsv, run = find(step, f"benchmarks/{job}/{step}.tsv")
            if not tsv:
                continue
            wall = wall_seconds(tsv)
            if step == "generate":
                decode = decoding_seconds(folders[run] / "logs" / job / "generate.log") or wall
                full, how, parts = wall - decode + scale * decode, f"loading + {scale:g} x decoding", \
                    {"wall_s": wall, "decoding_s": decode}
            elif step == "score":
                full, how, parts = scale * wall, f"x{scale:g}", {"wall_s": wall}
            else:
                full, how, parts = wall, "same passages: does not grow", {"wall_s": wall}
            measured[variant] = full
            row(step, variant, 1 if variant not in trained else seeds, True, full, how, run, **parts)
        stand_in = sum(measured.values()) / len(measured) if measured else None
        for variant in variants:
            if variant not in measured and stand_in is not None:
                row(step, variant, 1 if variant not in trained else seeds, False, stand_in,
                    f"estimated: the mean of this step's measured jobs ({', '.join(measured)})")

    missing = [step for step in ("compare", "report") if not find(step, f"benchmarks/{step}.tsv")[0]]
    total = sum(r["full_study_s"] for r in rows)
    out = {
        "command": " ".join(["python", "benchmarks/study_gpu.py"] + sys.argv[1:]),
        "machine": args.machine, "fraction": args.fraction,
        "config": "config.yaml's variants, seeds and tuning grid; the sizes and data of "
                  "benchmarks/study_gpu.py prepare (synthetic, random weights)",
        "runs": [str(f) for f in folders] if len(folders) > 1 else None,
        "stale_in_earlier_runs": args.stale or None,
        "snakemake_wall_clock_s": args.wall_clock,
        "measured_job_s": round(sum(r.get("wall_s", 0) for r in rows if r["measured"]), 1),
        "arithmetic": (f"full study = sum over steps of (a job's time at full size) x (its jobs in the full "
                       f"study). Training: {grid} learning rates at seed 0 + {seeds - 1} further seeds = "
                       f"{train_jobs} jobs per trained variant; a job's setup and CUDA-graph captures stay, its "
                       f"encoding of the data (where timed) and its steps grow {scale:g}x; it measures "
                       f"{evaluations_full} validation losses instead of {evaluations(study, args.fraction)}, each "
                       f"over {scale:g}x the examples, and its first evaluation's extra seconds (compiling the "
                       f"no-grad forward) stay. Generation: loading stays, decoding grows {scale:g}x, one job per "
                       f"seed (the base once). Jobs one after another on one GPU."),
        "not_measured_in_this_run": [f"{r['step']} {r['variant']}" for r in rows if not r["measured"]] + missing,
        "not_counted": missing,
        "steps": rows,
        "extrapolated_full_study_hours": round(total / 3600, 2),
        "extrapolated_full_study_hours_measured_part": round(
            sum(r["full_study_s"] for r in rows if r["measured"]) / 3600, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("measured_job_s", "not_measured_in_this_run",
                                          "extrapolated_full_study_hours")}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="random-weight model, synthetic data and the config overlay")
    p.add_argument("--tokenizer", required=True, help="a Gemma 3 tokenizer folder")
    p.add_argument("--work", required=True, help="where the model, data, config and results go")
    p.add_argument("--fraction", type=float, default=0.25, help="share of the study's data sizes")
    p.set_defaults(run=prepare)
    s = sub.add_parser("summarise", help="per-step wall times and the extrapolated full study")
    s.add_argument("--work", required=True, help="the folder prepare wrote")
    s.add_argument("--fraction", type=float, default=0.25, help="the fraction prepare used")
    s.add_argument("--machine", default="", help="the GPU, for the label")
    s.add_argument("--wall-clock", type=float, default=None, help="Snakemake's own wall clock, seconds")
    s.add_argument("--results", nargs="+", default=None,
                   help="results folders, if not WORK/results (copies); several runs: a job counts from the last "
                        "folder that has it (the `run` field of its row)")
    s.add_argument("--stale", nargs="*", default=[], choices=["train", "generate", "score", "general_loss"],
                   help="steps whose jobs count from the last folder only (their code changed after the others)")
    s.add_argument("--out", required=True, help="study.json to write")
    s.set_defaults(run=summarise)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
