"""compare: paired bootstrap over test prompts -> comparison.json: each method's BLEU-4 and ROUGE-L with
its spread across seeds and a confidence interval, and every pair of methods' difference with its
interval and whether it is significant.

What is resampled: test prompts, with replacement, the same prompts for every method and seed (paired),
so the interval says how much a score could move on another test set of the same size. Each resample draws
every source's prompts from that source, as many as it has (the test set holds a fixed number per source),
and the per-source scores are read from the same resamples as the overall one: with a single source, its
interval is the overall interval.
Several seeds: a method's score is the mean over its seeds of the per-seed score (corpus BLEU-4 of that
seed's answers; mean ROUGE-L F1), and each resample recomputes that mean, so the interval is around the
very number the report shows. The spread across seeds (standard deviation) is reported beside it.
A difference is significant when its interval excludes zero; p is the two-sided bootstrap p-value.
"""
import argparse
import itertools
import json
import statistics
from collections import defaultdict

import numpy as np

from peftbench.errors import UserError
from peftbench.io import read_json, write_json
from peftbench.score import bleu_from_statistics

METRICS = ("bleu", "rouge_l")


def runs_by_method(paths, measured_on, other_data):
    """{method: [each run's JSON, by seed]}; every run must have been measured on the same data as the first
    (measured_on(run) equal), else UserError: '<method> seed <k> <other_data> <first method>: <fix>'."""
    runs = defaultdict(list)
    for path in paths:
        run = read_json(path)
        runs[run["method"]].append(run)
    first = next(iter(runs.values()))[0]
    for method, seeds in runs.items():
        seeds.sort(key=lambda r: -1 if r["seed"] is None else r["seed"])
        for run in seeds:
            if measured_on(run) != measured_on(first):
                raise UserError(f"{method} seed {run['seed']} {other_data(first['method'])}")
    return dict(runs)


def load_runs(paths):
    """{method: [example_scores of each seed, by seed]}; every run must score the same prompts in the same order."""
    return runs_by_method(paths, lambda run: run["ids"], lambda first: (
        f"was scored on other test prompts than {first}: rerun generate and score on the same data/test.jsonl"))


def resample_weights(sources, samples, rng):
    """How often each prompt is drawn in each resample ((samples + 1) x prompts), stratified by source; row 0
    is the actual test set."""
    sources = np.asarray(sources)
    weights = np.ones((samples + 1, len(sources)), dtype=np.int64)
    for name in sorted(set(sources)):
        columns = np.flatnonzero(sources == name)
        weights[1:, columns] = rng.multinomial(len(columns), np.full(len(columns), 1 / len(columns)), size=samples)
    return weights


def seed_mean_scores(seeds, weights, columns):
    """{metric: array over resamples} of the mean over seeds of each seed's score on the resampled prompts."""
    bleu, rouge = [], []
    for run in seeds:
        stats = np.asarray(run["bleu_stats"], dtype=np.int64)[columns]
        bleu.append(bleu_from_statistics(weights @ stats))
        rouge.append(100 * (weights @ np.asarray(run["rouge_l"])[columns]) / weights[0].sum())
    return {"bleu": np.mean(bleu, axis=0), "rouge_l": np.mean(rouge, axis=0), "per_seed_bleu": bleu,
            "per_seed_rouge_l": rouge}


def interval(values, confidence):
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def summarize(score, confidence):
    """A method's score: the actual value (row 0), its interval over the resamples, its seeds' spread."""
    out = {}
    for metric in METRICS:
        per_seed = [float(s[0]) for s in score[f"per_seed_{metric}"]]
        out[metric] = {"mean": float(score[metric][0]), "ci": interval(score[metric][1:], confidence),
                       "per_seed": per_seed, "sd": statistics.stdev(per_seed) if len(per_seed) > 1 else None}
    return out


def paired_difference(diff, confidence):
    """A difference over resamples (row 0 the actual data): its value, interval, two-sided bootstrap p, and
    whether the interval excludes zero."""
    resampled = diff[1:]
    low, high = interval(resampled, confidence)
    p = min(1.0, 2 * min(np.mean(resampled <= 0), np.mean(resampled >= 0)))
    return {"diff": float(diff[0]), "ci": [low, high], "p": float(p), "significant": low > 0 or high < 0}


def difference(score_a, score_b, confidence):
    return {metric: paired_difference(score_a[metric] - score_b[metric], confidence) for metric in METRICS}


def pairs(methods, untrained=("base",)):
    """Each trained variant against the (first) untrained one, then every pair of trained variants (in config
    order). The report shows those against the base and against the best; comparison.json holds them all."""
    trained = [m for m in methods if m not in untrained]
    base = next((m for m in methods if m in untrained), None)
    return ([(m, base) for m in trained] if base else []) + list(itertools.combinations(trained, 2))


def gain_kept(scores, base, full, trained, confidence):
    """How much of full fine-tuning's gain over the base each other variant keeps, (v - base) / (full - base),
    on every resample (the same paired resamples as the scores), with its interval."""
    out = {}
    for method in trained:
        out[method] = {}
        for metric in METRICS:
            with np.errstate(divide="ignore", invalid="ignore"):
                share = (scores[method][metric] - scores[base][metric]) / (scores[full][metric] - scores[base][metric])
            finite = share[1:][np.isfinite(share[1:])]  # a resample where full equals the base has no share
            out[method][metric] = {"share": float(share[0]) if np.isfinite(share[0]) else None,
                                   "ci": interval(finite, confidence) if finite.size else [None, None]}
    return out


def compare(example_paths, samples=1000, confidence=0.95, seed=0, full=()):
    """full: the names of the variants that fine-tuned every weight (kind full), against which the others'
    share of the gain over the base is measured (comparison.json's gain_kept); none: no such measure."""
    runs = load_runs(example_paths)
    sources = next(iter(runs.values()))[0]["sources"]
    subsets = {"overall": np.arange(len(sources))}
    subsets.update({name: np.flatnonzero(np.asarray(sources) == name) for name in sorted(set(sources))})
    rng = np.random.default_rng(seed)
    untrained = [m for m, seeds in runs.items() if seeds[0]["seed"] is None]  # scored once, without a seed
    result = {
        "bootstrap": {"samples": samples, "confidence": confidence, "seed": seed, "unit": "test prompt",
                      "paired": True, "seeds": "mean over seeds of each seed's score, recomputed per resample"},
        "n": {name: len(columns) for name, columns in subsets.items()},
        "seeds": {method: [r["seed"] for r in seeds] for method, seeds in runs.items()},
        "methods": {method: {} for method in runs},
        "untrained": untrained,
        "differences": {f"{a} - {b}": {} for a, b in pairs(list(runs), untrained)},
    }
    all_weights = resample_weights(sources, samples, rng)  # shared by every method (paired) and every subset
    for name, columns in subsets.items():
        weights = all_weights[:, columns]
        scores = {method: seed_mean_scores(seeds, weights, columns) for method, seeds in runs.items()}
        for method, score in scores.items():
            result["methods"][method][name] = summarize(score, confidence)
        for a, b in pairs(list(runs), untrained):
            result["differences"][f"{a} - {b}"][name] = difference(scores[a], scores[b], confidence)
        references = [f for f in full if f in runs] if name == "overall" and untrained else []
        for reference in references:
            others = [m for m in runs if m not in untrained and m != reference]
            result.setdefault("gain_kept", {})[reference] = gain_kept(scores, untrained[0], reference, others,
                                                                      confidence)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", required=True, help="example_scores.json of every run")
    parser.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--confidence", type=float, default=0.95, help="the intervals' confidence level")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--full", nargs="*", default=[],
                        help="the variants of kind full: each other variant's share of their gain is measured")
    parser.add_argument("--general-loss", nargs="*", default=[],
                        help="general_loss.json of every run (forgetting, peftbench.forgetting); none: not measured")
    parser.add_argument("--out", required=True, help="comparison.json to write")
    args = parser.parse_args(argv)
    if args.samples < 100 or not 0 < args.confidence < 1:
        raise UserError("bootstrap.samples must be at least 100 and bootstrap.confidence between 0 and 1")
    result = compare(args.examples, args.samples, args.confidence, args.seed, args.full)
    if args.general_loss:
        from peftbench.forgetting import compare_forgetting

        result["forgetting"] = compare_forgetting(args.general_loss, args.samples, args.confidence, args.seed)
    write_json(args.out, result)
    summary = {m: {k: round(v["overall"][k]["mean"], 2) for k in METRICS} for m, v in result["methods"].items()}
    print(json.dumps(summary))
