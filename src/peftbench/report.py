"""report: one markdown page comparing the variants: scores before/after (mean ± spread over training
seeds), confidence intervals and significant differences (from `peftbench compare`), cost, per-source
scores, settings, and plots of the loss curves, of memory and time, and of the scores with intervals; with
learning-rate sweeps (`--selections`), the rates each variant's sweep tried and chose on validation data."""
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


def _significance(d, samples):
    # No resample crossed zero: the bootstrap can only bound p by its resolution.
    p = f"p < {1 / samples:.2g}" if d["p"] == 0 else f"p = {d['p']:.3f}"
    return f"{'**yes**' if d['significant'] else 'no'} ({p})"


ALL_PAIRS_UP_TO = 10  # more pairs than this: the page shows those against the base and the best only


def best_variant(comparison):
    """The trained variant with the highest mean BLEU-4 (ROUGE-L breaks a tie); None without one."""
    trained = [m for m in comparison["methods"] if m not in comparison.get("untrained", [])]
    overall = {m: comparison["methods"][m]["overall"] for m in trained}
    return max(trained, key=lambda m: (overall[m]["bleu"]["mean"], overall[m]["rouge_l"]["mean"]), default=None)


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
        rows.append({"step": str(step), "wall time (s)": _fmt(float(record["s"]), 0),
                     "max RSS (MB)": record.get("max_rss", "—")})
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
    if not lines:
        return []
    return ["**Memory knobs:** these recompute in backward what the forward did not keep; the results are the "
            "same, the peak memory lower and the training time longer than without:", "", *lines, ""]


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
              ""]
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
        f"Model **{model.get('id') or model.get('path')}** ({model['source']}), {training['epochs']} epochs, "
        f"batch {training['batch_size']}, max length {config['data']['max_length']} tokens, training seeds "
        f"{seeds}. Scores are on {n_test} held-out test prompts: 'before' is the untrained base model, "
        "'after' the model each variant trained.",
        "",
        "## Results",
        "",
        main_table(comparison, metrics, variants),
        "",
        "Scores, memory, time and tokens/s of a trained method are the mean ± standard deviation over its "
        "training seeds. The base model is untrained and decodes greedily, so it ran once: its scores do not "
        f"depend on a seed. Peak memory is {any_metrics.get('memory_kind', 'n/a')} during training; training "
        "time counts the training loop only (no model loading); tokens/s counts real (non-padding) tokens."
        + _tuned_note(metrics),
        "",
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
        "![training loss](loss.png)",
        "",
        "![peak memory and training time](cost.png)",
        "",
        "![scores with confidence intervals](scores.png)",
        "",
        "## Variants",
        "",
        "Each variant is a kind with settings; a line names the settings in which it differs from its kind's "
        "defaults.",
        "",
        *methods_lines,
        "",
        "**Where the memory goes:** activations (identical for every method at the same batch and length) "
        "are most of the peak; the methods differ in weights, gradients and optimizer state:",
        "",
        *[f"- **{m}** ({variants[m].kind}): {METHODS[variants[m].kind].MEMORY}" for m in comparison["methods"]
          if METHODS[variants[m].kind].TRAINS],
        "",
        *_memory_knob_lines(metrics),
        "**Fairness:** every trained method sees the same batches in the same order (one seeded "
        "permutation per epoch, grouped by length within windows of 8 batches), the same epochs, batch size "
        "and maximum length, and trains the same two "
        f"turn-token embedding rows ({', '.join(training['trainable_tokens']) or 'none'}) so that it can learn "
        "to end its turn (peft trains them beside LoRA adapters, peftbench beside other peft methods' "
        "adapters; full fine-tuning trains the whole embedding, these rows included, at its own learning "
        "rate). The loss covers the assistant's answers only.",
        "",
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
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}; training attention: "
        f"{any_metrics.get('attention', 'n/a')}{_graphs_note(metrics)}.",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in _library_versions().items()) + ".",
        "",
        "## Wall time of each step",
        "",
        _step_times(benchmarks, out_path.parent),
        "",
    ]
    write_html("\n".join(lines), out_path.parent, out_path.with_suffix(".html"))
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines))


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
