"""report: one markdown page comparing the variants. It opens with a verdict computed from the numbers (the
best variant, the best within each memory budget, the cheapest not significantly worse, the share of full
fine-tuning's gain kept, forgetting), then scores before/after (mean ± spread over training seeds),
confidence intervals and significant differences (from `peftbench compare`), cost, per-source scores,
settings, and plots of the loss curves, of memory and time, of the scores with intervals and of quality
against cost (Pareto frontiers); with learning-rate sweeps (`--selections`), the rates each variant's sweep
tried and chose on validation data."""
import argparse
import base64
import csv
import json
import math
import os
import platform
import re
import statistics
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from peftbench.io import atomic_path, read_json
from peftbench.methods import METHODS
from peftbench.variants import differing_settings, learning_rate_keys, resolve

LIBRARIES = ["torch", "transformers", "peft", "bitsandbytes", "galore-torch", "sacrebleu", "rouge-score", "snakemake"]


def _library_versions():
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except Exception:
            versions[name] = "not installed"
    return versions


def _markdown(rows):
    """A markdown table; numbers stay as formatted ('0.0', not tabulate's '0')."""
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def _fmt(value, digits=1):
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _mean_sd(values, digits=1):
    """'mean ± sd' over seeds; the plain value when there is one."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return _fmt(values[0], digits)
    return f"{_fmt(statistics.fmean(values), digits)} ± {_fmt(statistics.stdev(values), digits)}"


def _ci(ci, digits=1):
    return f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _score(entry):
    """A score with its seed spread: '30.4 ± 1.2' (or '30.4' for one run)."""
    return _fmt(entry["mean"]) + (f" ± {_fmt(entry['sd'])}" if entry["sd"] is not None else "")


def _configured_lr(variant):
    kind = METHODS[variant.kind]
    rates = [f"{variant.settings[k]:g}" for k in learning_rate_keys(kind)] if kind.TRAINS else []
    return " / ".join(rates) or "—"


def _trained_lr(runs):
    """The rates the runs trained at (train_metrics.json's learning_rates; after tuning, the chosen ones);
    None for runs that predate the key."""
    used = dict.fromkeys(" / ".join(f"{rate:g}" for rate in m["learning_rates"].values())
                         for m in runs if m.get("learning_rates"))
    return ", ".join(used) or None


def _lr(variant, runs):
    return _trained_lr(runs) or _configured_lr(variant)


def main_table(comparison, metrics, variants):
    methods = comparison["methods"]
    untrained = comparison.get("untrained", [])
    base = methods[untrained[0]]["overall"] if untrained else None
    rows = []
    for method, result in methods.items():
        overall, runs, variant = result["overall"], metrics.get(method, []), variants[method]
        rows.append({
            "variant": method,
            "kind": variant.kind,
            "lr": _lr(variant, runs),
            "seeds": len(comparison["seeds"][method]) if METHODS[variant.kind].TRAINS else "—",
            "BLEU-4 before": _fmt(base["bleu"]["mean"]) if base else "—",
            "BLEU-4 after": _score(overall["bleu"]),
            "ROUGE-L before": _fmt(base["rouge_l"]["mean"]) if base else "—",
            "ROUGE-L after": _score(overall["rouge_l"]),
            "peak memory (GB)": _mean_sd([m["peak_memory_gb"] for m in runs], 2),
            "training time (s)": _mean_sd([m["train_seconds"] for m in runs], 0),
            "tokens/s": _mean_sd([m["tokens_per_s"] for m in runs], 0),
            "trainable params (M)": _fmt(runs[0]["trainable_params"] / 1e6, 2) if runs else "—",
            **({"general-text loss (nats/token)": forgetting_cell(comparison, method)}
               if comparison.get("forgetting") else {}),
        })
    return _markdown(rows)


def interval_table(comparison):
    level = f"{100 * comparison['bootstrap']['confidence']:g} % CI"
    rows = []
    for method, result in comparison["methods"].items():
        bleu, rouge = result["overall"]["bleu"], result["overall"]["rouge_l"]
        rows.append({"variant": method, "BLEU-4": _fmt(bleu["mean"]), f"BLEU-4 {level}": _ci(bleu["ci"]),
                     "ROUGE-L": _fmt(rouge["mean"]), f"ROUGE-L {level}": _ci(rouge["ci"])})
    return _markdown(rows)


def _difference(d):
    return f"{d['diff']:+.1f} {_ci(d['ci'])}"


def _p(d, samples):
    # No resample crossed zero: the bootstrap can only bound p by its resolution.
    return f"p < {1 / samples:.2g}" if d["p"] == 0 else f"p = {d['p']:.3f}"


def _significance(d, samples):
    return f"{'**yes**' if d['significant'] else 'no'} ({_p(d, samples)})"


ALL_PAIRS_UP_TO = 10  # more pairs than this: the page shows those against the base and the best only


def ranked(comparison):
    """The trained variants, best first: by mean BLEU-4, ROUGE-L breaking a tie."""
    trained = [m for m in comparison["methods"] if m not in comparison.get("untrained", [])]
    overall = {m: comparison["methods"][m]["overall"] for m in trained}
    return sorted(trained, key=lambda m: (overall[m]["bleu"]["mean"], overall[m]["rouge_l"]["mean"]), reverse=True)


def best_variant(comparison):
    """The trained variant with the highest mean BLEU-4 (ROUGE-L breaks a tie); None without one."""
    return next(iter(ranked(comparison)), None)


def shown_differences(comparison):
    """Every pair when there are few; else each variant against the base and against the best variant."""
    differences = comparison["differences"]
    if len(differences) <= ALL_PAIRS_UP_TO:
        return differences
    keep = set(comparison.get("untrained", [])[:1]) | {best_variant(comparison)}
    return {name: d for name, d in differences.items() if set(name.split(" - ")) & keep}


def differences_table(comparison):
    samples = comparison["bootstrap"]["samples"]
    rows = [{"difference": name, "ΔBLEU-4 [CI]": _difference(d["overall"]["bleu"]),
             "BLEU-4 significant": _significance(d["overall"]["bleu"], samples),
             "ΔROUGE-L [CI]": _difference(d["overall"]["rouge_l"]),
             "ROUGE-L significant": _significance(d["overall"]["rouge_l"], samples)}
            for name, d in shown_differences(comparison).items()]
    return _markdown(rows) if rows else "(only one variant: nothing to compare)"


def per_source_table(comparison):
    sources = [name for name in comparison["n"] if name != "overall"]
    rows = []
    for method, result in comparison["methods"].items():
        row = {"variant": method}
        for source in sources:
            for metric, label in (("bleu", "BLEU-4"), ("rouge_l", "ROUGE-L")):
                entry = result[source][metric]
                row[f"{source} {label}"] = f"{_fmt(entry['mean'])} {_ci(entry['ci'])}"
        rows.append(row)
    return _markdown(rows)


METRIC_LABELS = {"bleu": "BLEU-4", "rouge_l": "ROUGE-L"}
# Common accelerator memory sizes (GB): the budgets a reader is likely to hold.
GPU_BUDGETS_GB = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141)


def pair_difference(comparison, a, b, metric, subset="overall"):
    """a minus b on `metric`, from comparison.json's differences, whichever order it stored the pair in."""
    differences = comparison["differences"]
    if f"{a} - {b}" in differences:
        return differences[f"{a} - {b}"][subset][metric]
    d = differences[f"{b} - {a}"][subset][metric]
    return {**d, "diff": _negated(d["diff"]), "ci": [_negated(d["ci"][1]), _negated(d["ci"][0])]}


def _negated(x):
    return 0.0 - x  # not -x: a zero stays +0.0 and prints as '+0.0', not '-0.0'


def _level(comparison):
    return f"{100 * comparison['bootstrap']['confidence']:g} % CI"


def _claim(d, label, comparison):
    """'+1.2 BLEU-4 [-0.3, 2.6] (95 % CI), not significant (p = 0.410)'."""
    significance = "significant" if d["significant"] else "not significant"
    return (f"{d['diff']:+.1f} {label} {_ci(d['ci'])} ({_level(comparison)}), {significance} "
            f"({_p(d, comparison['bootstrap']['samples'])})")


def mean_costs(metrics):
    """{variant: (mean peak memory GB, mean training seconds)} over its seeds."""
    return {m: (statistics.fmean(r["peak_memory_gb"] for r in runs), statistics.fmean(r["train_seconds"] for r in runs))
            for m, runs in metrics.items() if runs}


def memory_kind(metrics):
    kinds = {r.get("memory_kind", "n/a") for runs in metrics.values() for r in runs}
    return ", ".join(sorted(kinds)) or "n/a"


def memory_on_gpu(metrics):
    """Whether every peak is a GPU's (train.py: 'CUDA max allocated'; on a CPU, 'CPU peak RSS')."""
    kinds = {r.get("memory_kind", "") for runs in metrics.values() for r in runs}
    return bool(kinds) and all(k.startswith("CUDA") for k in kinds)


def _best_lines(comparison, order):
    best, level = order[0], _level(comparison)
    entry = comparison["methods"][best]["overall"]
    lines = [f"- **Best overall: {best}**, BLEU-4 {_fmt(entry['bleu']['mean'])} {_ci(entry['bleu']['ci'])} and "
             f"ROUGE-L {_fmt(entry['rouge_l']['mean'])} {_ci(entry['rouge_l']['ci'])} ({level})."]
    if len(order) > 1:
        second = order[1]
        lead = [_claim(pair_difference(comparison, best, second, metric), label, comparison)
                for metric, label in METRIC_LABELS.items()]
        ahead = pair_difference(comparison, best, second, "bleu")["significant"]
        lines[0] += (f" By BLEU-4 it is {'significantly' if ahead else 'not significantly'} ahead of the second, "
                     f"**{second}**: the difference is {lead[0]}, and {lead[1]}.")
    return lines


def _memory_lines(comparison, order, costs, metrics):
    """On a GPU: the memory budgets that change which variant is the best that fits, from the measured peaks.
    On a CPU the peak is the process's RSS, which says little about GPU memory: the variants rank by time."""
    measured = [m for m in order if m in costs]  # in the ranking's order: the first that fits is the best
    if not measured:
        return []
    if not memory_on_gpu(metrics):
        by_time = sorted(measured, key=lambda m: costs[m][1])
        return [f"- **Memory:** the peaks were measured on a CPU ({memory_kind(metrics)}, the whole process), not "
                "on a GPU: they do not rank the methods' GPU memory, so no memory budget is derived from them. By "
                "training time instead (mean over seeds, fastest first): "
                + ", ".join(f"{m} {_fmt(costs[m][1], 0)} s" for m in by_time) + "."]
    best, kept = order[0], []
    for budget in GPU_BUDGETS_GB:
        fits = [m for m in measured if costs[m][0] <= budget]
        if fits and (not kept or fits[0] != kept[-1][1]):
            kept.append((budget, fits[0]))
    peaks = f"{memory_kind(metrics)}, mean over seeds, GB of 10^9 bytes"
    if not kept:
        return [f"- **Memory:** every trained variant peaked above {GPU_BUDGETS_GB[-1]} GB ({peaks})."]
    if len(kept) == 1:
        budget, fit = kept[0]
        return [f"- **Memory:** the best variant, {fit}, fits within {budget} GB (peak {_fmt(costs[fit][0], 2)} GB; "
                f"{peaks}), the smallest common GPU size that holds any variant: no budget trades quality for memory."]
    lines = [f"- **Memory budgets** (the common GPU sizes that change which variant is the best that fits; peaks "
             f"are {peaks}):"]
    for budget, fit in kept:
        line = f"  - within {budget} GB: **{fit}** (peak {_fmt(costs[fit][0], 2)} GB)"
        if fit == best:
            lines.append(line + ", the best overall")
        else:
            cost = _claim(pair_difference(comparison, fit, best, "bleu"), "BLEU-4", comparison)
            lines.append(f"{line}: against {best}, {cost}")
    above = [m for m in measured if costs[m][0] > GPU_BUDGETS_GB[-1]]
    if above:
        lines.append(f"  - above {GPU_BUDGETS_GB[-1]} GB: {', '.join(above)}")
    return lines


def not_worse(comparison, best, method):
    """Whether `method` is not significantly below `best` on either metric."""
    return all(not (d["significant"] and d["diff"] < 0)
               for d in (pair_difference(comparison, method, best, metric) for metric in METRIC_LABELS))


def _cheapest_lines(comparison, order, costs):
    """The fastest variant that is not significantly worse than the best on BLEU-4 or on ROUGE-L."""
    best = order[0]
    if best not in costs or len(order) < 2:
        return []
    tied = [m for m in order if m in costs and (m == best or not_worse(comparison, best, m))]
    cheapest = min(tied, key=lambda m: costs[m][1])

    def against_best(m):
        differences = {label: pair_difference(comparison, m, best, metric) for metric, label in METRIC_LABELS.items()}
        return ", ".join(f"{label} {d['diff']:+.1f} {_ci(d['ci'])}" for label, d in differences.items())

    others = [f"{m} {_fmt(costs[m][1], 0)} s ({against_best(m)})" for m in sorted(tied, key=lambda m: costs[m][1])
              if m not in (best, cheapest)]
    also = f" Also not significantly worse (against {best}): {'; '.join(others)}." if others else ""
    if cheapest == best:
        return [f"- **Cheapest (training time) not significantly worse than the best** on BLEU-4 or ROUGE-L: "
                f"**{best}** itself, {_fmt(costs[best][1], 0)} s (mean over seeds).{also}"]
    claims = [_claim(pair_difference(comparison, cheapest, best, metric), label, comparison)
              for metric, label in METRIC_LABELS.items()]
    return [f"- **Cheapest (training time) not significantly worse than the best** on BLEU-4 or ROUGE-L: "
            f"**{cheapest}**, {_fmt(costs[cheapest][1], 0)} s against {best}'s {_fmt(costs[best][1], 0)} s (mean "
            f"over seeds); against {best}: {claims[0]}, and {claims[1]}.{also}"]


def _share(entry):
    if entry["share"] is None:
        return "— (full fine-tuning gained nothing)"
    low, high = entry["ci"]
    interval = "" if low is None else f" [{100 * low:.0f}, {100 * high:.0f}]"
    return f"{100 * entry['share']:.0f} %{interval}"


def _gain_kept_lines(comparison, variants):
    """Each variant's share of full fine-tuning's gain over the base, with its interval (compare's gain_kept)."""
    lines = []
    for full, shares in comparison.get("gain_kept", {}).items():
        base = comparison["untrained"][0]
        gains = [pair_difference(comparison, full, base, metric) for metric in METRIC_LABELS]
        gained = ", ".join(f"{_fmt(d['diff'])} {label} {_ci(d['ci'])}"
                           for d, label in zip(gains, METRIC_LABELS.values()))
        if not all(d["significant"] and d["diff"] > 0 for d in gains):
            lines.append(f"- **Full fine-tuning's gain kept:** {full} did not gain significantly over {base} "
                         f"({gained}; {_level(comparison)}), so no share of its gain is stated.")
            continue
        lines.append(f"- **Full fine-tuning's gain kept** ({full} gained {gained} over {base}; share = (variant − "
                     f"{base}) / ({full} − {base}), {_level(comparison)} in %):")
        lines += [f"  - {m}: {_share(s['bleu'])} of the BLEU-4 gain, {_share(s['rouge_l'])} of the ROUGE-L gain"
                  for m, s in shares.items() if METHODS[variants[m].kind].TRAINS and variants[m].kind != "full"]
    return lines


def forgetting_change(forgetting, method, base):
    """The change of `method`'s general-text loss against the base (positive: it forgot), either key order."""
    differences = forgetting["differences"]
    if f"{method} - {base}" in differences:
        return differences[f"{method} - {base}"]
    d = differences.get(f"{base} - {method}")
    return d and {**d, "diff": _negated(d["diff"]), "ci": [_negated(d["ci"][1]), _negated(d["ci"][0])]}


def _loss_change(d):
    return f"{d['diff']:+.3f} nats/token {_ci(d['ci'], 3)}"


def _forgetting_lines(comparison, variants):
    forgetting = comparison.get("forgetting")
    untrained = comparison.get("untrained", [])
    if not forgetting or not untrained:
        return []
    base, level = untrained[0], _level(comparison)
    changes = {m: forgetting_change(forgetting, m, base) for m in ranked(comparison)}
    changes = {m: d for m, d in changes.items() if d}
    if not changes:
        return []
    forgot = [m for m, d in changes.items() if d["significant"] and d["diff"] > 0]
    text = forgetting["text"]["name"]
    if forgot:
        claims = "; ".join(f"{m} {_loss_change(changes[m])}" for m in forgot)
        quantized = [m for m in forgot if m in quantized_variants(comparison, variants)]
        rounding = (f" {', '.join(quantized)}: on a 4-bit base, so this includes the base's rounding, not only "
                    "fine-tuning (below the table)." if quantized else "")
        return [f"- **Forgetting:** significantly higher loss than {base} on general text ({text}; {level}): "
                f"{claims}.{rounding}"]
    largest = max(changes, key=lambda m: changes[m]["diff"])
    return [f"- **Forgetting:** no variant's loss on general text ({text}) is significantly above {base}'s; the "
            f"largest change is {largest}'s, {_loss_change(changes[largest])} ({level})."]


def forgetting_cell(comparison, method):
    """The general-text loss (± seed spread) and, for a trained variant, its change against the base."""
    forgetting, untrained = comparison["forgetting"], comparison.get("untrained", [])
    entry = forgetting["methods"].get(method)
    if entry is None:
        return "—"
    loss = _fmt(entry["loss"], 3) + (f" ± {_fmt(entry['sd'], 3)}" if entry.get("sd") is not None else "")
    change = forgetting_change(forgetting, method, untrained[0]) if untrained and method not in untrained else None
    if change is None:
        return f"{loss} {_ci(entry['ci'], 3)}"
    diff = f"{change['diff']:+.3f}"
    return f"{loss} ({'**' + diff + '**' if change['significant'] else diff} {_ci(change['ci'], 3)})"


def quantized_variants(comparison, variants):
    """The compared variants whose kind stores the frozen base in 4 bits (a quantization config)."""
    return [m for m in comparison["methods"] if m in variants and
            getattr(METHODS[variants[m].kind], "quantization", lambda settings: None)(variants[m].settings) is not None]


def forgetting_note(comparison, variants):
    forgetting = comparison.get("forgetting")
    if not forgetting:
        return []
    quantized = quantized_variants(comparison, variants)
    rounding = (f" {', '.join(f'**{m}**' for m in quantized)} {'is' if len(quantized) == 1 else 'are'} measured as "
                "trained, on a base stored in 4 bits: a rise there includes what the rounding of the base's weights "
                "costs, not only what fine-tuning changed (the unquantized base is the reference)." if quantized else "")
    text = forgetting["text"]
    revision = f", revision {text['revision']}" if text.get("revision") else ""
    return [f"General-text loss: each model's plain language-model loss (nats per token, no chat template) on "
            f"{text['passages']} passages ({text['tokens']:,} tokens) of {text['name']} ({text['origin']}{revision}), "
            "text none of them trained on; a trained variant whose loss there rose above the base's has forgotten "
            "some of what the base knew. A trained variant's cell holds its loss (mean over seeds ± their spread) "
            f"and, in brackets, its change against the base with its {_level(comparison)} (bold: significant); the "
            "base's holds its loss and its interval. The intervals come from a paired bootstrap over the passages "
            "(the same resampled passages for every model and seed)." + rounding, ""]


def verdict_lines(comparison, metrics, variants):
    """The report's opening: every sentence computed from comparison.json and the training metrics."""
    order = ranked(comparison)
    if not order:
        return ["## Verdict", "", "No variant trained: nothing to rank.", ""]
    costs = mean_costs(metrics)
    return [
        "## Verdict",
        "",
        f"Computed from the tables below. Variants rank by BLEU-4 (ROUGE-L breaks a tie); intervals are "
        f"{_level(comparison)}s of a paired bootstrap over test prompts; differences are the first variant minus "
        "the second.",
        "",
        *_best_lines(comparison, order),
        *_memory_lines(comparison, order, costs, metrics),
        *_cheapest_lines(comparison, order, costs),
        *_gain_kept_lines(comparison, variants),
        *_forgetting_lines(comparison, variants),
        "",
    ]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def _bar_figsize(bars):
    return (max(9, 1.1 * bars + 3), 3.5 if bars <= 5 else 4.5)


def _bar_labels(ax, bars):
    """Names stay legible with a dozen variants: slanted past five."""
    if bars > 5:
        ax.tick_params(axis="x", labelrotation=40)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def plot_loss(metrics, path):
    """Mean loss over seeds per step; the band spans the lowest to the highest seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, runs in metrics.items():
        steps = min(len(m["loss"]) for m in runs)
        losses = np.array([[h["loss"] for h in m["loss"][:steps]] for m in runs])
        x = [h["step"] for h in runs[0]["loss"][:steps]]
        (line,) = ax.plot(x, losses.mean(axis=0), label=f"{method} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(x, losses.min(axis=0), losses.max(axis=0), color=line.get_color(), alpha=0.2)
        validated = [m["validation"] for m in runs if m.get("validation")]
        if validated:
            points = min(len(v) for v in validated)
            # dtype float: a loss that was not finite (None) becomes a gap, not an error.
            validation = np.array([[p["loss"] for p in v[:points]] for v in validated], dtype=float)
            ax.plot([p["step"] for p in validated[0][:points]], validation.mean(axis=0), color=line.get_color(),
                    linestyle="--", marker="o", markersize=4, label=f"{method} validation")
    any_validation = any(m.get("validation") for runs in metrics.values() for m in runs)
    ax.set(xlabel="optimizer step", ylabel=f"{'loss' if any_validation else 'training loss'} (answer tokens)",
           title="Training and validation loss" if any_validation else "Training loss")
    entries = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize="small" if entries > 5 else None, ncol=2 if entries > 6 else 1)
    fig.tight_layout()
    _save(fig, path)


def plot_cost(metrics, path):
    """Peak memory and training time, mean over seeds with one standard deviation."""
    plt = _pyplot()
    methods = list(metrics)
    fig, axes = plt.subplots(1, 2, figsize=_bar_figsize(len(methods)))
    memory_kind = next(iter(metrics.values()), [{}])[0].get("memory_kind", "n/a")
    for ax, key, color, ylabel, title in ((axes[0], "peak_memory_gb", "tab:blue", f"GB ({memory_kind})", "Peak memory"),
                                          (axes[1], "train_seconds", "tab:orange", "seconds", "Training time")):
        values = [[m[key] for m in metrics[method]] for method in methods]
        ax.bar(methods, [np.mean(v) for v in values], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in values],
               capsize=4, color=color)
        ax.set(ylabel=ylabel, title=title)
        _bar_labels(ax, len(methods))
    fig.tight_layout()
    _save(fig, path)


def plot_scores(comparison, path):
    """Each method's scores with their bootstrap confidence intervals."""
    plt = _pyplot()
    methods = list(comparison["methods"])
    fig, axes = plt.subplots(1, 2, figsize=_bar_figsize(len(methods)))
    level = f"{100 * comparison['bootstrap']['confidence']:g} % CI"
    panels = ((axes[0], "bleu", "BLEU-4", "tab:green"), (axes[1], "rouge_l", "ROUGE-L", "tab:purple"))
    for ax, metric, label, color in panels:
        entries = [comparison["methods"][m]["overall"][metric] for m in methods]
        means = [e["mean"] for e in entries]
        errors = [[e["mean"] - e["ci"][0] for e in entries], [e["ci"][1] - e["mean"] for e in entries]]
        ax.bar(methods, means, yerr=errors, capsize=4, color=color)
        ax.set(ylabel=label, title=f"{label} (error bars: {level})")
        _bar_labels(ax, len(methods))
    fig.tight_layout()
    _save(fig, path)


def pareto_front(points):
    """The names of the points no other point dominates: (cost, quality), lower cost and higher quality better."""
    return [name for name, (cost, quality) in points.items()
            if not any(c <= cost and q >= quality and (c, q) != (cost, quality) for c, q in points.values())]


def plot_pareto(comparison, metrics, path):
    """Each score against peak memory and against training time; the frontier variants (none cheaper and
    better) joined by a step line and labelled, the others grey."""
    plt = _pyplot()
    costs = mean_costs(metrics)
    trained = [m for m in ranked(comparison) if m in costs]
    base = next(iter(comparison.get("untrained", [])), None)
    on_gpu = memory_on_gpu(metrics)
    memory_label = (f"peak memory, GB ({memory_kind(metrics)})" if on_gpu else
                    f"peak memory, GB ({memory_kind(metrics)}: not GPU memory, does not rank the methods)")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    for row, (metric, label) in enumerate(METRIC_LABELS.items()):
        for col, (key, xlabel) in enumerate((("peak_memory_gb", memory_label), ("train_seconds", "training time, s"))):
            ax = axes[row][col]
            cost = {m: costs[m][col] for m in trained}
            spread = {m: np.std([r[key] for r in metrics[m]], ddof=1) if len(metrics[m]) > 1 else 0 for m in trained}
            score = {m: comparison["methods"][m]["overall"][metric] for m in trained}
            front = pareto_front({m: (cost[m], score[m]["mean"]) for m in trained})
            for m in trained:
                color = "tab:blue" if m in front else "0.6"
                ax.errorbar(cost[m], score[m]["mean"], xerr=spread[m],
                            yerr=[[score[m]["mean"] - score[m]["ci"][0]], [score[m]["ci"][1] - score[m]["mean"]]],
                            fmt="o", color=color, capsize=3, zorder=3 if m in front else 2)
                ax.annotate(m, (cost[m], score[m]["mean"]), xytext=(5, 5), textcoords="offset points",
                            color="black" if m in front else "0.5", fontsize="small")
            front.sort(key=lambda m: cost[m])
            ax.plot([cost[m] for m in front], [score[m]["mean"] for m in front], drawstyle="steps-post",
                    color="tab:blue", linewidth=1.5, label="frontier")
            if base:
                ax.axhline(comparison["methods"][base]["overall"][metric]["mean"], color="0.6", linestyle=":",
                           label=f"{base} (untrained)")
            ax.set(xlabel=xlabel, ylabel=label, title=f"{label} against {xlabel.split(',')[0]}")
            ax.margins(x=0.12, y=0.1)  # room for the labels
            ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    _save(fig, path)


def plot_tuning(selections, path):
    """Each sweep's final validation loss against its learning rate, the chosen rate starred; a rate that
    diverged has no loss, so it is an x at the top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for selection in selections:
        finished = [p for p in selection["points"] if p["validation_loss"] is not None]
        (line,) = ax.plot([p["lr"] for p in finished], [p["validation_loss"] for p in finished], marker="o",
                          label=selection["variant"])
        for point in finished:
            if _is_chosen(point, selection):
                ax.plot(point["lr"], point["validation_loss"], marker="*", markersize=16, color=line.get_color(),
                        markeredgecolor="black", linestyle="none")
        diverged = [p["lr"] for p in selection["points"] if p["validation_loss"] is None]
        # x in data, y in axes coordinates: the top edge, whatever the losses' range.
        ax.plot(diverged, [0.97] * len(diverged), marker="x", markersize=9, color=line.get_color(),
                linestyle="none", transform=ax.get_xaxis_transform(), clip_on=False)
    ax.plot([], [], marker="*", markersize=12, color="gray", markeredgecolor="black", linestyle="none",
            label="chosen")
    if any(p["validation_loss"] is None for s in selections for p in s["points"]):
        ax.plot([], [], marker="x", color="gray", linestyle="none", label="diverged / no finite loss")
    ax.set_xscale("log")
    rates = sorted({p["lr"] for s in selections for p in s["points"]})
    if len(rates) <= 8:  # the grids' own rates read better than powers of ten, while they do not crowd
        ax.set_xticks(rates, [f"{lr:g}" for lr in rates])
        ax.minorticks_off()
    ax.set(xlabel="learning rate (lr)", ylabel="final validation loss (answer tokens, nats)",
           title="Learning rates tried on validation data")
    ax.legend(fontsize="small" if len(selections) > 5 else None, ncol=2 if len(selections) > 6 else 1)
    fig.tight_layout()
    _save(fig, path)


def _step_times(benchmarks, out_dir):
    rows = []
    for path in benchmarks:
        with open(path) as f:
            record = next(csv.DictReader(f, delimiter="\t"))
        step = Path(path).relative_to(Path(out_dir) / "benchmarks").with_suffix("")
        trains = step.name == "train"  # its own peak is in Results: one memory figure per step
        rows.append({"step": str(step), "wall time (s)": _fmt(float(record["s"]), 0),
                     "max RSS (MB)": "in Results" if trains else record.get("max_rss", "—")})
    return _markdown(rows) if rows else "(no benchmark files)"


def _budget_lines(metrics):
    """The token budget each trained method got: the same examples, epochs and batches at every seed."""
    if not metrics:
        return ["(no trained method)"]
    lines = []
    for method, runs in metrics.items():
        tokens = sorted({m["tokens_seen"] for m in runs})
        lines.append(f"- **{method}**: {runs[0]['examples']} examples × {runs[0]['epochs']} epochs = "
                     f"{runs[0]['steps']} optimizer steps, {', '.join(f'{t:,}' for t in tokens)} real (non-padding) "
                     f"tokens per seed")
    budgets = {(m["examples"], m["epochs"], m["steps"], m["tokens_seen"]) for runs in metrics.values() for m in runs}
    verdict = ("The budget is identical for every method and seed." if len(budgets) <= 1 else
               "**The budgets differ**: the methods did not train on the same tokens, so their scores are not "
               "directly comparable.")
    return lines + ["", verdict]


def _memory_knob_lines(metrics):
    """Which variants recomputed activations in backward: the same results, less memory, more time."""
    lines = []
    for method, runs in metrics.items():
        run = runs[0]
        layers, checkpointed = run.get("decoder_layers"), run.get("checkpointed_layers", 0)
        if checkpointed:
            knob = "training.gradient_checkpointing" if checkpointed == layers else "checkpoint_layers"
            lines.append(f"- **{method}** recomputed the forward of {checkpointed} of its {layers} decoder layers "
                         f"in backward (`{knob}`)")
        if run.get("recompute_elementwise") and checkpointed != layers:
            lines.append(f"- **{method}** recomputed the elementwise work of its other layers in backward "
                         "(`recompute_elementwise`)")
        if run.get("micro_batch_tokens") and run.get("micro_batched_steps"):
            lines.append(f"- **{method}** ran the forward and backward of {run['micro_batched_steps']:,} of its "
                         f"{run['steps']:,} batches in groups of at most {run['micro_batch_tokens']:,} tokens, "
                         "their gradients summed into one step (`micro_batch_tokens`)")
    if not lines:
        return []
    return ["**Memory knobs:** these recompute in backward what the forward did not keep, or hold one part of "
            "a batch's activations at a time; the results are the same, the peak memory lower and the training "
            "time longer than without:", "", *lines, ""]


def _is_chosen(point, selection):
    return selection["chosen_lr"] is not None and math.isclose(point["lr"], selection["chosen_lr"], rel_tol=1e-9)


def _grid_cell(selection):
    """Each rate of the grid with its final validation loss; the chosen one bold."""
    cells = []
    for point in selection["points"]:
        if point.get("diverged_at_step") is not None:
            outcome = f"diverged at step {point['diverged_at_step']}"
        else:
            outcome = _fmt(point["validation_loss"], 3)
        cell = f"{point['lr']:g}: {outcome}"
        cells.append(f"**{cell}**" if _is_chosen(point, selection) else cell)
    return ", ".join(cells)


TIME_UNITS = (("h", 3600), ("min", 60), ("s", 1))


def _time_unit(seconds):
    """The largest unit of which `seconds` makes at least 1.5: '2.5 h' and '40.0 min' read better than seconds."""
    return next((unit for unit in TIME_UNITS if seconds >= 1.5 * unit[1]), TIME_UNITS[-1])


def _in_unit(seconds, unit):
    name, size = unit
    return f"{seconds / size:.{0 if name == 's' else 1}f} {name}"


def _devices(records):
    """'CPU' or the GPU's name, of each record (sweep point or run) that names its device."""
    return {"CPU" if str(r["device"]).lower() == "cpu" else str(r["device"]) for r in records if r.get("device")}


def _further_seeds_seconds(selection, runs, seeds):
    """Training time of the variant's runs besides the sweep's reused one (runs[i] is the run of seeds[i])."""
    return sum(m["train_seconds"] for seed, m in zip(seeds, runs) if seed != selection["seed"])


def _chosen_lr(selection, variant, runs):
    """The rates the final runs trained at; for runs without learning_rates, the chosen rate with the kind's
    other rates scaled by the same factor."""
    if _trained_lr(runs) or selection["chosen_lr"] is None:
        return _trained_lr(runs) or "—"
    factor = selection["chosen_lr"] / selection["configured_lr"]
    return " / ".join(f"{variant.settings[k] * factor:g}" for k in selection["learning_rates"])


def tuning_lines(selections, metrics, variants, seeds):
    """The section on learning-rate selection: how, each sweep's grid and choice, its cost and warnings."""
    sweep_seeds = list(dict.fromkeys(s["seed"] for s in selections))
    sweep_seed = ", ".join(map(str, sweep_seeds))
    other_seeds = ", ".join(str(s) for s in seeds if s not in sweep_seeds) or "none"
    examples = sorted({m["validation_examples"] for s in selections for m in metrics.get(s["variant"], [])
                       if m.get("validation_examples")})
    lines = [
        "## Learning rates, chosen on validation data",
        "",
        f"How: every variant below trained once per rate of its grid (training seed {sweep_seed}), and the rate "
        "with the lowest final validation loss (mean loss on the answer tokens of the "
        f"{'/'.join(map(str, examples)) + ' ' if examples else ''}validation examples, nats) was chosen; the "
        f"other seeds ({other_seeds}) then trained at that rate, and the seed-{sweep_seed} run at the chosen rate "
        "is reused as that seed's result. The test prompts play no part in the choice.",
        "",
    ]
    for selection in selections:
        names = [f"`{n}`" for n in selection["learning_rates"]]
        if len(names) > 1:
            lines += [f"**{selection['variant']}** trains {len(names)} rates ({', '.join(names)}): its grid lists "
                      f"{names[0]} and scales {', '.join(names[1:])} by the same factor, keeping their ratio.", ""]
    untuned = [m for m in metrics if m not in {s["variant"] for s in selections}]
    if untuned:
        lines += [f"{', '.join(f'**{m}**' for m in untuned)} trained at the configured rate (no sweep).", ""]

    sweep_seconds = {s["variant"]: s["sweep_seconds"] for s in selections}
    further_seconds = {s["variant"]: _further_seeds_seconds(s, metrics.get(s["variant"], []), seeds)
                       for s in selections}
    unit = _time_unit(max([*sweep_seconds.values(), *further_seconds.values()]))
    devices = _devices([p for s in selections for p in s["points"]] +
                       [m for s in selections for m in metrics.get(s["variant"], [])])
    # One device labels the columns and the total; with several, each time names its own.
    on_device = f" ({next(iter(devices))})" if len(devices) == 1 else ""

    def time_cell(seconds, records):
        return _in_unit(seconds, unit) + ("" if on_device else f" ({', '.join(sorted(_devices(records))) or 'n/a'})")

    rows = []
    for selection in selections:
        name, runs = selection["variant"], metrics.get(selection["variant"], [])
        rows.append({
            "variant": name,
            "grid: lr → final validation loss": _grid_cell(selection),
            "chosen lr": _chosen_lr(selection, variants[name], runs),
            "configured lr": _configured_lr(variants[name]),
            f"sweep time{on_device}": time_cell(sweep_seconds[name], selection["points"]),
            f"further seeds' time{on_device}": time_cell(further_seconds[name], runs),
        })
    lines += [_markdown(rows), ""]
    edges = [s for s in selections if s.get("edge")]
    if edges:
        lines += [f"- ⚠ {s['variant']}: the best rate is the {s['edge']} of its grid: widen "
                  f"`tuning.grids.{s['variant']}` (or `tuning.multiples`)" for s in edges] + [""]
    sweeps, further = sum(sweep_seconds.values()), sum(further_seconds.values())
    unit = _time_unit(max(sweeps, further))
    ratio = f": the sweeps cost {sweeps / further:.1f}× the further seeds' training" if further else ""
    lines += [f"**Total{on_device}:** the sweeps took {_in_unit(sweeps, unit)}, the further seeds' runs at the "
              f"chosen rates {_in_unit(further, unit)}{ratio}. Both count training loops only (the sweeps' time sums "
              "their runs' training time, as the table above reports it).",
              "",
              "![validation loss against learning rate](tuning.png)",
              "",
              f"*{CAPTIONS['tuning']}*",
              ""]
    return lines


# Under each plot in report.md (and so report.html), as workflow/report/*.rst are under it in Snakemake's report.
CAPTIONS = {
    "loss": "Training loss on the answer tokens per optimizer step, for each trained variant: the line is the mean "
            "over the training seeds, the band spans the lowest to the highest seed; dashed: validation loss.",
    "cost": "Peak memory and training time of each trained variant: bars are means over the training seeds, error "
            "bars one standard deviation across seeds. On a CPU, peak memory is the process's peak RSS.",
    "scores": "BLEU-4 (sacrebleu corpus BLEU) and ROUGE-L (F1, stemmed) of each variant, mean over training seeds; "
              "error bars are {level}s from a paired bootstrap over test prompts.",
    "pareto": "Quality against cost: BLEU-4 (top) and ROUGE-L (bottom) against peak memory (left) and training time "
              "(right), means over training seeds. Blue and joined by a step line: the frontier, the variants that "
              "no other variant beats on both quality and cost; grey: the others. Vertical bars: the score's {level}; "
              "horizontal bars: one standard deviation of the cost across seeds; dotted: the untrained base.",
    "tuning": "Final validation loss at every learning rate of each tuned variant's grid (log scale); the star marks "
              "the chosen rate, an x at the top a rate that diverged.",
}


def _plot_lines(comparison, metrics):
    level = _level(comparison)
    cpu = ("" if memory_on_gpu(metrics) else
           f" The memory here is {memory_kind(metrics)}, measured on a CPU: it does not rank the methods' GPU memory.")
    plots = (("loss", "training loss", ""), ("cost", "peak memory and training time", ""),
             ("scores", "scores with confidence intervals", ""), ("pareto", "quality against memory and time", cpu))
    lines = []
    for name, alt, note in plots:
        lines += [f"![{alt}]({name}.png)", "", f"*{CAPTIONS[name].format(level=level)}{note}*", ""]
    return lines


HTML_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>peftbench report</title><style>
body {{ font-family: sans-serif; max-width: 80em; margin: 2em auto; line-height: 1.4; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; }}
img {{ max-width: 100%; }} code {{ background: #f4f4f4; }}
</style></head><body>
{body}
</body></html>
"""


def write_html(markdown_text, plot_dir, out_path):
    """report.md as one self-contained HTML page (plots inlined), for Snakemake's HTML report, which shows
    HTML pages but not markdown."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    for plot in sorted(set(re.findall(r'src="([\w.-]+\.png)"', body))):  # the plots the page shows
        data = base64.b64encode((Path(plot_dir) / plot).read_bytes()).decode()
        body = body.replace(f'src="{plot}"', f'src="data:image/png;base64,{data}"')
    with atomic_path(out_path) as tmp:
        tmp.write_text(HTML_PAGE.format(body=body))


def _variant_line(variant, runs):
    kind = METHODS[variant.kind]
    differs = differing_settings(variant)
    settings = (f" — differs from its kind's defaults in `{json.dumps(differs)}`" if differs
                else " — its kind's defaults" if kind.TRAINS else "")
    params = f"; {runs[0]['trainable_params'] / 1e6:.2f} M trainable parameters" if runs else ""
    return f"- **{variant.name}** (kind `{variant.kind}`): {kind.SUMMARY}{settings}{params}"


def _dropped(counts):
    return ", ".join(f"{n} {reason}" for reason, n in counts.items()) or "0"


def build_report(config, comparison, metrics, manifest, benchmarks, out_path, selections=None):
    """metrics: {method: [train_metrics of each seed, in the order of config's seeds]}; selections: the
    learning-rate sweeps' results (tuning.py's selection of each tuned variant), None or empty when the rates
    were not tuned."""
    out_path = Path(out_path)
    plot_loss(metrics, out_path.parent / "loss.png")
    plot_cost(metrics, out_path.parent / "cost.png")
    plot_scores(comparison, out_path.parent / "scores.png")
    plot_pareto(comparison, metrics, out_path.parent / "pareto.png")
    order = list(comparison["methods"])
    selections = sorted(selections or [], key=lambda s: order.index(s["variant"]) if s["variant"] in order
                        else len(order))
    if selections:
        plot_tuning(selections, out_path.parent / "tuning.png")
    else:  # one left by an earlier, tuned report would show other runs' sweeps
        (out_path.parent / "tuning.png").unlink(missing_ok=True)
    any_metrics = next(iter(metrics.values()), [{}])[0]
    training, generation, model = config["training"], config["generation"], config["model"]
    bootstrap = comparison["bootstrap"]
    level = f"{100 * bootstrap['confidence']:g} %"
    n_test = comparison["n"]["overall"]
    seeds = ", ".join(map(str, config["seeds"]))
    data_lines = [
        f"| {name} | {s['origin']} | {s.get('revision') or '—'} | {s['kept']['train']} | "
        f"{s['kept'].get('validation', 0)} | {s['kept']['test']} | "
        f"{_dropped(s['dropped'])} | {s['tokens']['train'].get('mean', '—')} | {s['near_duplicate_prompts']} |"
        for name, s in manifest["sources"].items()
    ]
    variants = resolve(config)
    methods_lines = [_variant_line(variants[m], metrics.get(m, [])) for m in comparison["methods"]]
    lines = [
        "# peftbench report",
        "",
        *verdict_lines(comparison, metrics, variants),
        "## Results",
        "",
        f"Model **{model.get('id') or model.get('path')}** ({model['source']}), {training['epochs']} epochs, "
        f"batch {training['batch_size']}, max length {config['data']['max_length']} tokens, training seeds "
        f"{seeds}. Scores are on {n_test} held-out test prompts: 'before' is the untrained base model, "
        "'after' the model each variant trained.",
        "",
        main_table(comparison, metrics, variants),
        "",
        "Scores, memory, time and tokens/s of a trained method are the mean ± standard deviation over its "
        "training seeds. The base model is untrained and decodes greedily, so it ran once: its scores do not "
        f"depend on a seed. {_compute_note(metrics)} Training time counts the training loop only (no model "
        "loading); tokens/s counts real (non-padding) tokens." + _tuned_note(metrics),
        "",
        *forgetting_note(comparison, variants),
        *(tuning_lines(selections, metrics, variants, config["seeds"]) if selections else []),
        f"## Confidence intervals ({level}, paired bootstrap over test prompts)",
        "",
        interval_table(comparison),
        "",
        "Differences (first variant minus second) with their interval; a difference is significant when its "
        f"interval excludes zero (p is the two-sided bootstrap p-value)"
        + ("" if len(shown_differences(comparison)) == len(comparison["differences"]) else
           f". With {len(comparison['methods'])} variants, the page shows each against the base and against the "
           f"best variant by BLEU-4 (**{best_variant(comparison)}**); `comparison.json` holds every pair") + ":",
        "",
        differences_table(comparison),
        "",
        f"How: {bootstrap['samples']} resamples of the {n_test} test prompts (with replacement, resampling seed "
        f"{bootstrap['seed']}); every method and every seed is scored on the same resampled prompts (paired). "
        "A method with several seeds scores as the mean over its seeds of each seed's corpus BLEU-4 (and mean "
        "ROUGE-L), recomputed on every resample, so an interval sits around the number in the table above. "
        "BLEU-4 is recomputed from summed per-prompt n-gram statistics, as sacrebleu computes corpus BLEU. The "
        "interval covers the test prompts' sampling; the ± above is the spread across training seeds.",
        "",
        f"## Scores per source (mean [{level} CI])",
        "",
        per_source_table(comparison),
        "",
        "`comparison.json` holds the per-source differences and p-values as well.",
        "",
        "## Plots",
        "",
        *_plot_lines(comparison, metrics),
        "## Variants",
        "",
        "Each variant is a kind with settings; a line names the settings in which it differs from its kind's "
        "defaults.",
        "",
        *methods_lines,
        "",
        "**Where the memory goes** on a GPU: activations (identical for every method at the same batch and "
        "length) are most of the peak; the methods differ in weights, gradients and optimizer state:",
        "",
        *[f"- **{m}** ({variants[m].kind}): {METHODS[variants[m].kind].MEMORY}" for m in comparison["methods"]
          if METHODS[variants[m].kind].TRAINS],
        "",
        *_memory_knob_lines(metrics),
        "**Fairness:** every trained method sees the same batches in the same order (one seeded "
        "permutation per epoch, grouped by length within windows of 8 batches), the same epochs, batch size "
        "and maximum length, and trains the same "
        f"turn-token embedding rows ({_turn_tokens_text(training['trainable_tokens'], manifest)}) so that it can "
        "learn to end its turn (peft trains them beside LoRA adapters, peftbench beside other peft methods' "
        "adapters; full fine-tuning trains the whole embedding, these rows included, at its own learning "
        "rate). The loss covers the assistant's answers only.",
        "",
        *_chat_format_lines(manifest),
        f"**Seeds:** the data sample is drawn once (config `seed: {config['seed']}`) and is the same for every "
        f"training seed; a training seed ({seeds}) sets the batch order and the initialization of adapters, "
        "and every method uses the same seeds.",
        "",
        "**Token budget per method:**",
        "",
        *_budget_lines(metrics),
        "",
        "## Data",
        "",
        *_builtin_data_note(manifest),
        "| source | origin | revision | train | validation | test | dropped (by reason) | mean train tokens "
        "| near-duplicate prompts |",
        "|---|---|---|---|---|---|---|---|---|",
        *data_lines,
        "",
        "No test prompt appears in train or validation (exact match after normalization); near-duplicates "
        "counts train and validation prompts that match a test prompt up to case, punctuation and spacing. "
        "The test split is written only after every learning rate is chosen. Files: "
        f"train.jsonl sha256 `{manifest['files']['train.jsonl'][:16]}…`, "
        f"test.jsonl sha256 `{(manifest.get('test_sha256') or manifest['files']['test.jsonl'])[:16]}…`.",
        "",
        "## Evaluation settings",
        "",
        f"- Decoding: greedy, at most {generation['max_new_tokens']} new tokens, stops at `<end_of_turn>`.",
        f"- BLEU-4: sacrebleu corpus BLEU on detokenized text, 0-100, signature `{comparison['bleu_signature']}` "
        "(1-4-gram precisions over the whole test set with a brevity penalty; not the character-level "
        "sentence BLEU averaged over examples that some tools report, whose numbers are not comparable).",
        f"- ROUGE-L: rouge-score F1 with Porter stemming (`{json.dumps(comparison['rouge'])}`), mean over "
        "examples, 0-100; its tokenizer keeps only a-z and 0-9, so text in other scripts scores 0.",
        f"- Intervals: paired bootstrap, {bootstrap['samples']} resamples, {level} percentile intervals.",
        "",
        "## Environment",
        "",
        f"- Hardware: {any_metrics.get('device', 'n/a')}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}; training computed in "
        f"{_compute_dtype(metrics)}; training attention: "
        f"{any_metrics.get('attention', 'n/a')}{_graphs_note(metrics)}.",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in _library_versions().items()) + ".",
        "",
        "## Wall time of each step",
        "",
        "Snakemake's record of each step: its wall time, and the largest resident memory of its processes as "
        "Snakemake sampled it (a training step's memory is the peak in Results, measured by the step itself).",
        "",
        _step_times(benchmarks, out_path.parent),
        "",
    ]
    write_html("\n".join(lines), out_path.parent, out_path.with_suffix(".html"))
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines))


def _compute_dtype(metrics):
    """What training computed in (train_metrics.json's compute_dtype; runs before it: float32 on a CPU)."""
    dtypes = {run.get("compute_dtype") or ("float32" if run.get("device") == "cpu" else "bfloat16")
              for runs in metrics.values() for run in runs}
    return ", ".join(sorted(dtypes)) or "n/a"


def _turn_tokens_text(tokens, manifest=None):
    if tokens == "auto":
        found = ((manifest or {}).get("chat_format") or {}).get("turn_tokens")
        return f"the chat template's turn tokens: {', '.join(found)}" if found else "the chat template's turn tokens"
    return ", ".join(tokens) or "none"


def _chat_format_lines(manifest):
    """How conversations became tokens: the model's chat template, where answers end, what became of system
    turns (kept, or folded into the first user turn where the template has no system role)."""
    fmt = (manifest or {}).get("chat_format")
    if not fmt:
        return []
    systems = manifest.get("system_turns", 0)
    system = ("" if not systems else
              f" {systems} training conversations open with a system turn, kept as the template's system turn."
              if fmt["system_role"] == "kept" else
              f" {systems} training conversations open with a system turn; the template has no system role, so "
              "it was folded into the first user turn.")
    return [f"**Chat format:** conversations are rendered with the model's own chat template; an answer ends "
            f"at `{fmt['end_of_turn']}`, where generation stops.{system}", ""]


def _compute_note(metrics):
    """What the memory and time columns measured, from the runs: a CPU's peak is its process's RSS and its
    times move with whatever else the machine runs."""
    if not metrics:
        return ""
    dtype = _compute_dtype(metrics)
    if memory_on_gpu(metrics):
        return (f"Training computed in {dtype} (autocast) on {', '.join(sorted(_devices(_all_runs(metrics))))}; peak "
                "memory is the GPU's maximum allocated memory during training (GB, CUDA graphs' held activations "
                "included).")
    threads = sorted({run["cpu_threads"] for run in _all_runs(metrics) if run.get("cpu_threads")})
    sharing = (f" Each training used {'/'.join(map(str, threads))} CPU thread{'s' * (threads != [1])} (config "
               "`threads`); with fewer threads than Snakemake's --cores, steps ran side by side and each one's time "
               "includes sharing the machine with the others." if threads else "")
    return (f"Training ran on a CPU and computed in {dtype}: peak memory is the training process's peak RSS (GB, model "
            "loading included), which does not rank the methods' GPU memory; CPU times move between runs with "
            "whatever else the machine runs, so read a ranking by time against the seeds' spread." + sharing)


def _all_runs(metrics):
    return [run for runs in metrics.values() for run in runs]


def _builtin_data_note(manifest):
    """The demo's builtin data is easy to learn: say so wherever it was used, so its gains are read as a check
    that the pipeline works, not as what fine-tuning does on real instructions."""
    builtin = [name for name, s in manifest["sources"].items() if str(s.get("origin", "")).startswith("builtin:")]
    if not builtin:
        return []
    return [f"**Builtin demo data** ({', '.join(builtin)}): its answers are templated from Python's documentation "
            "and easy to learn, so the gains on it show that the pipeline works, not what fine-tuning does on real "
            "instructions; run the comparison on your own data for that (README, Quickstart).", ""]


def _tuned_note(metrics):
    """Which variants' lr column holds a rate chosen on validation data (train_metrics.json's tuned)."""
    tuned = [m for m, runs in metrics.items() if any(run.get("tuned") for run in runs)]
    if not tuned:
        return ""
    others = "; the other variants' is the configured one" if len(tuned) < len(metrics) else ""
    return f" The lr of {', '.join(f'**{m}**' for m in tuned)} was chosen on validation data (next section){others}."


def _graphs_note(metrics):
    """Whether the decoder trained as replayed CUDA graphs (train_metrics.json's cuda_graphs), and what that cost."""
    graphed = [run["cuda_graphs"] for runs in metrics.values() for run in runs if run.get("cuda_graphs")]
    if not graphed:
        return ""
    return (f"; the decoder's forward and backward replayed as CUDA graphs, rows padded to a multiple of "
            f"{graphed[0]['token_multiple']} tokens (up to {max(g['row_lengths'] for g in graphed)} row lengths "
            f"captured per run, {max(g['capture_seconds'] for g in graphed):.0f} s at most, inside the training time)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the whole config, as JSON")
    parser.add_argument("--comparison", required=True, help="comparison.json from `peftbench compare`")
    parser.add_argument("--scores", nargs="+", required=True, help="scores.json of every run")
    parser.add_argument("--metrics", nargs="*", default=[], help="train_metrics.json of every trained run")
    parser.add_argument("--manifest", required=True, help="data/manifest.json from prepare_data")
    parser.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmark files")
    parser.add_argument("--selections", nargs="*", default=[],
                        help="each tuned variant's learning-rate selection (JSON); none: the rates were not tuned")
    parser.add_argument("--out", required=True, help="report.md to write (report.html and the plots beside it)")
    args = parser.parse_args(argv)
    comparison = read_json(args.comparison)
    any_scores = read_json(args.scores[0])
    comparison.update(bleu_signature=any_scores["bleu_signature"], rouge=any_scores["rouge"])
    metrics = defaultdict(list)
    for m in map(read_json, args.metrics):
        metrics[m["method"]].append(m)
    build_report(json.loads(args.config), comparison, dict(metrics), read_json(args.manifest), args.benchmarks,
                 args.out, [read_json(path) for path in args.selections])
