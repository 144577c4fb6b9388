"""report: one markdown page comparing the methods: scores before/after, cost, per-source scores,
settings, and plots of the loss curves and of memory and time per method."""
import argparse
import csv
import json
import platform
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from peftbench.io import atomic_path, read_json
from peftbench.methods import METHODS

LIBRARIES = ["torch", "transformers", "peft", "bitsandbytes", "galore-torch", "sacrebleu", "rouge-score", "snakemake"]


def _library_versions():
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except Exception:
            versions[name] = "not installed"
    return versions


def _fmt(value, digits=1):
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def main_table(scores, metrics):
    base = scores.get("base")
    rows = []
    for method, s in scores.items():
        m = metrics.get(method, {})
        rows.append({
            "method": method,
            "BLEU-4 before": _fmt(base["bleu"]) if base else "—",
            "BLEU-4 after": _fmt(s["bleu"]),
            "ROUGE-L before": _fmt(base["rouge_l"]) if base else "—",
            "ROUGE-L after": _fmt(s["rouge_l"]),
            "peak memory (GB)": _fmt(m.get("peak_memory_gb"), 2),
            "training time (s)": _fmt(m.get("train_seconds"), 0),
            "tokens/s": _fmt(m.get("tokens_per_s"), 0),
            "trainable params (M)": _fmt(m["trainable_params"] / 1e6, 2) if m else "—",
        })
    return pd.DataFrame(rows).to_markdown(index=False)


def per_source_table(scores):
    rows = []
    for method, s in scores.items():
        row = {"method": method}
        for source, v in s["per_source"].items():
            row[f"{source} BLEU-4"] = _fmt(v["bleu"])
            row[f"{source} ROUGE-L"] = _fmt(v["rouge_l"])
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False)


def plot_loss(metrics, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, m in metrics.items():
        ax.plot([h["step"] for h in m["loss"]], [h["loss"] for h in m["loss"]], label=method)
    ax.set(xlabel="optimizer step", ylabel="training loss (answer tokens)", title="Training loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_cost(metrics, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(metrics)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.bar(methods, [metrics[m]["peak_memory_gb"] for m in methods], color="tab:blue")
    left.set(ylabel=f"GB ({next(iter(metrics.values()))['memory_kind']})", title="Peak memory")
    right.bar(methods, [metrics[m]["train_seconds"] for m in methods], color="tab:orange")
    right.set(ylabel="seconds", title="Training time")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _step_times(benchmarks):
    rows = []
    for path in benchmarks:
        with open(path) as f:
            record = next(csv.DictReader(f, delimiter="\t"))
        rows.append({"step": Path(path).stem, "wall time (s)": _fmt(float(record["s"]), 0),
                     "max RSS (MB)": record.get("max_rss", "—")})
    return pd.DataFrame(rows).to_markdown(index=False) if rows else "(no benchmark files)"


def build_report(config, scores, metrics, manifest, benchmarks, out_path):
    out_path = Path(out_path)
    plot_loss(metrics, out_path.parent / "loss.png")
    plot_cost(metrics, out_path.parent / "cost.png")
    any_scores = next(iter(scores.values()))
    any_metrics = next(iter(metrics.values()), {})
    training, generation, model = config["training"], config["generation"], config["model"]
    data_lines = [
        f"| {name} | {s['origin']} | {s['kept']['train']} | {s['kept']['test']} | "
        f"{sum(s['dropped'].values())} | {s['tokens']['train'].get('mean', '—')} | {s['near_duplicate_prompts']} |"
        for name, s in manifest["sources"].items()
    ]
    methods_lines = [f"- **{m}**: {METHODS[m].SUMMARY}" + (
        f" — settings `{json.dumps(config['method_settings'][m])}`" if m in config["method_settings"] else "")
        for m in scores]
    lines = [
        "# peftbench report",
        "",
        f"Model **{model.get('id') or model.get('path')}** ({model['source']}), {training['epochs']} epochs, "
        f"batch {training['batch_size']}, max length {config['data']['max_length']} tokens. "
        f"Scores are on {any_scores['n']} held-out test prompts: 'before' is the untrained base model, "
        "'after' the model each method trained.",
        "",
        "## Results",
        "",
        main_table(scores, metrics),
        "",
        f"Peak memory is {any_metrics.get('memory_kind', 'n/a')} during training; training time counts "
        "the training loop only (no model loading); tokens/s counts real (non-padding) tokens.",
        "",
        "## Scores per source",
        "",
        per_source_table(scores),
        "",
        "## Plots",
        "",
        "![training loss](loss.png)",
        "",
        "![peak memory and training time](cost.png)",
        "",
        "## Methods",
        "",
        *methods_lines,
        "",
        "**Where the memory goes:** activations (identical for every method at the same batch and length) "
        "are most of the peak; the methods differ in weights, gradients and optimizer state:",
        "",
        *[f"- **{m}**: {METHODS[m].MEMORY}" for m in scores if METHODS[m].TRAINS],
        "",
        "**Fairness:** every trained method sees the same batches in the same order (one seeded "
        "permutation per epoch, grouped by length within windows of 8 batches), the same epochs, batch size "
        "and maximum length, and trains the same two "
        f"turn-token embedding rows ({', '.join(training['trainable_tokens']) or 'none'}) so that it can learn "
        "to end its turn. The loss covers the assistant's answers only.",
        "",
        "## Data",
        "",
        "| source | origin | train | test | dropped | mean train tokens | near-duplicate prompts |",
        "|---|---|---|---|---|---|---|",
        *data_lines,
        "",
        f"No test prompt appears in train (exact match after normalization). Files: "
        f"train.jsonl sha256 `{manifest['files']['train.jsonl'][:16]}…`, "
        f"test.jsonl sha256 `{manifest['files']['test.jsonl'][:16]}…`.",
        "",
        "## Evaluation settings",
        "",
        f"- Decoding: greedy, at most {generation['max_new_tokens']} new tokens, stops at `<end_of_turn>`.",
        f"- BLEU-4: sacrebleu corpus BLEU on detokenized text, signature `{any_scores['bleu_signature']}` "
        "(not the character-level sentence BLEU some tools report).",
        f"- ROUGE-L: rouge-score F1 with Porter stemming, mean over examples, x100.",
        "",
        "## Environment",
        "",
        f"- Hardware: {any_metrics.get('device', 'n/a')}; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}.",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in _library_versions().items()) + ".",
        "",
        "## Wall time of each step",
        "",
        _step_times(benchmarks),
        "",
    ]
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the whole config, as JSON")
    parser.add_argument("--scores", nargs="+", required=True, help="scores.json of each method")
    parser.add_argument("--metrics", nargs="*", default=[], help="train_metrics.json of each trained method")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmark files")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    scores = {s["method"]: s for s in map(read_json, args.scores)}
    metrics = {m["method"]: m for m in map(read_json, args.metrics)}
    build_report(json.loads(args.config), scores, metrics, read_json(args.manifest), args.benchmarks, args.out)
