"""select-rate and adopt-tuned: each trained variant at its best learning rate, chosen on validation data.

With `tuning` in the config, every trained variant first trains once per rate of its grid (the first
training seed, the whole training budget; `peftbench train --tuning`). `select-rate` reads those runs and
chooses the rate with the lowest final validation loss (answer tokens, nats per token). The other seeds then
train at that rate, and `adopt-tuned` makes the sweep's run at the chosen rate the first seed's final run
(hard links: nothing is trained or stored twice). The test split is written only after every selection
(data.py), so nothing chosen here can have seen it.

    tuning:
      multiples: [0.25, 0.5, 1, 2, 4]   # the grid: these multiples of each variant's configured lr
      grids: {galore: [1.0e-5, 3.0e-5, 1.0e-4]}   # a variant's own grid, instead
    tuning: off                          # each variant at its configured rate

A kind with two learning rates (the hybrid's LoRA and GaLore rates) has both scaled by one factor: its grid
names the main rate (`lr`) and the other keeps its ratio to it (variants.at_rate).
"""
import argparse
import json
import os
import shutil
from pathlib import Path

from peftbench.errors import UserError
from peftbench.io import atomic_dir, read_json, write_json
from peftbench.methods import find_kind
from peftbench.variants import learning_rate_keys

DEFAULT_MULTIPLES = [0.25, 0.5, 1, 2, 4]
METRICS = "train_metrics.json"


def rate_label(lr: float) -> str:
    """A rate as it appears in a path (`lr0.0002`) and in the grid: six significant digits."""
    return f"{lr:g}"


def grids(config: dict, variants: dict) -> dict:
    """{variant: [learning rates, ascending]} for every trained variant the config compares; {} when tuning
    is off. UserError (one line) for a grid that names no trained variant, or tuning without validation data."""
    tuning = config.get("tuning", False)
    if tuning in (False, None, "off"):
        return {}
    tuning = {} if tuning is True else tuning
    trained = {name: v for name, v in variants.items() if find_kind(v.kind).TRAINS}
    for name in tuning.get("grids", {}):
        if name not in trained:
            raise UserError(f"config error at tuning.grids.{name}: not a trained variant of compare "
                            f"(trained: {', '.join(trained) or 'none'})")
    if trained and not any(source.get("validation", {}).get("n", 0) for source in config["data"]["sources"]):
        raise UserError("config error at tuning: learning rates are chosen on validation data, and no source has "
                        "any: give data.sources[].validation: {n: 100} (or set tuning: off)")
    multiples = tuning.get("multiples", DEFAULT_MULTIPLES)
    result = {}
    for name, variant in trained.items():
        configured = variant.settings[learning_rate_keys(find_kind(variant.kind))[0]]
        rates = tuning.get("grids", {}).get(name) or [configured * m for m in multiples]
        result[name] = sorted({float(rate_label(rate)) for rate in rates})
    return result


def select_rate(variant, kind_name, configured_lr, runs, seed) -> dict:
    """The sweep's outcome from its runs' train_metrics.json: every point, the chosen rate (lowest final
    validation loss) and whether it sits at an edge of the grid (then the best may lie outside it)."""
    points = []
    for run in runs:
        metrics = read_json(Path(run) / METRICS)
        points.append({"lr": metrics["learning_rates"][learning_rate_keys(find_kind(kind_name))[0]],
                       "validation_loss": metrics.get("validation_loss"),
                       "diverged_at_step": metrics.get("diverged_at_step"),
                       "train_seconds": metrics["train_seconds"], "device": metrics["device"], "run": str(run)})
    points.sort(key=lambda p: p["lr"])
    usable = [p for p in points if p["validation_loss"] is not None and p["diverged_at_step"] is None]
    if not usable:
        raise UserError(f"variant {variant}: every rate of its grid diverged or gave no validation loss "
                        f"({', '.join(rate_label(p['lr']) for p in points)}): give lower rates "
                        f"(tuning.grids.{variant}), or check data.sources[].validation")
    chosen = min(usable, key=lambda p: (p["validation_loss"], p["lr"]))
    edge = None
    if len(points) > 1:
        edge = "lowest" if chosen is points[0] else "highest" if chosen is points[-1] else None
    return {"variant": variant, "kind": kind_name, "learning_rates": list(learning_rate_keys(find_kind(kind_name))),
            "configured_lr": configured_lr, "seed": seed, "points": points, "chosen_lr": chosen["lr"],
            "chosen_run": chosen["run"], "edge": edge, "sweep_seconds": sum(p["train_seconds"] for p in points)}


def adopt(selection_path, out_dir):
    """Make the sweep's run at the chosen rate a final run: its files hard-linked into out_dir (copied where
    links cannot be made), its metrics marked as tuned."""
    selection = read_json(selection_path)
    chosen = Path(selection["chosen_run"])
    with atomic_dir(out_dir) as tmp:
        for path in chosen.iterdir():
            # not Snakemake's .snakemake_timestamp: touching a linked one would make the sweep's run newer
            if path.name == METRICS or path.name.startswith("."):
                continue
            if path.is_dir():
                shutil.copytree(path, tmp / path.name, copy_function=_link_or_copy)
            else:
                _link_or_copy(path, tmp / path.name)
        metrics = read_json(chosen / METRICS)
        write_json(tmp / METRICS, {**metrics, "tuned": True, "reused_from_sweep": str(chosen)})
    return selection


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def select_main(argv=None):
    parser = argparse.ArgumentParser(description="choose a variant's learning rate from its sweep's runs")
    parser.add_argument("--variant", required=True, help="the variant's name")
    parser.add_argument("--kind", required=True, help="the variant's kind")
    parser.add_argument("--configured-lr", type=float, required=True, help="the rate the config gives it")
    parser.add_argument("--seed", type=int, required=True, help="the training seed the sweep ran with")
    parser.add_argument("--runs", nargs="+", required=True, help="the sweep's trained folders, one per rate")
    parser.add_argument("--out", required=True, help="selection.json to write")
    args = parser.parse_args(argv)
    selection = select_rate(args.variant, args.kind, args.configured_lr, args.runs, args.seed)
    write_json(args.out, selection)
    print(json.dumps({k: selection[k] for k in ("variant", "chosen_lr", "edge")}))


def adopt_main(argv=None):
    parser = argparse.ArgumentParser(description="make the sweep's run at the chosen rate a final run")
    parser.add_argument("--selection", required=True, help="selection.json from `peftbench select-rate`")
    parser.add_argument("--out", required=True, help="the final run's trained folder")
    args = parser.parse_args(argv)
    selection = adopt(args.selection, args.out)
    print(json.dumps({k: selection[k] for k in ("variant", "chosen_lr", "chosen_run")}))
