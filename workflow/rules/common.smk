import json
import os
import re
import sys

from peftbench.config import validate_config
from peftbench.data import FORMAT_VERSION as DATA_FORMAT_VERSION
from peftbench.inputs import builtin_data_version, data_files, embedded_model_version, general_text_files, model_files
from peftbench.methods import find_kind
from peftbench.errors import UserError
from peftbench.tuning import grids, rate_label
from peftbench.variants import at_rate, check_with_peft, learned_training, learning_rate_keys, resolve, run_knobs

# `--configfile a.yaml results/x.json` reads the target as one more config file (the option takes every word
# after it): one that exists would merge its keys into the config. Config files are YAML; say so in one line.
for _path in map(str, workflow.configfiles):
    if not _path.endswith((".yaml", ".yml")):
        raise WorkflowError(f"peftbench: {_path} was given as a config file (--configfile takes every word after "
                            "it): put targets before --configfile, or write --configfile=FILE before the target")

# Validate before anything runs: a bad key stops the workflow with one line that names it.
try:
    validate_config(config)
    VARIANTS = resolve(config)
    # {variant: its learning-rate grid} when the config tunes (peftbench/tuning.py); {} when it does not
    TUNING = grids(config, VARIANTS)
except UserError as error:
    raise WorkflowError(f"peftbench: {error}")



onstart:
    # peft checks each variant's settings once the run starts (not on a dry run: importing peft takes seconds)
    try:
        check_with_peft(VARIANTS)
    except UserError as error:
        raise WorkflowError(f"peftbench: {error}")


OUT = config["output_dir"]
TRAINED = [name for name, v in VARIANTS.items() if find_kind(v.kind).TRAINS]
SEEDS = config["seeds"]
# One run per trained variant and seed (`lora/seed0`); an untrained variant decodes greedily, so its one
# run (`base`) does not depend on a seed.
RUNS = [run for name in VARIANTS for run in ([f"{name}/seed{s}" for s in SEEDS] if name in TRAINED else [name])]
REPORT = f"{OUT}/report.md"
# Steps run the `peftbench` command of the environment that runs Snakemake, activated or not.
shell.prefix(f'set -euo pipefail; export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')


# forgetting (peftbench/forgetting.py): every run's loss on general text; `forgetting: off` (or absent): none
FORGETTING = config.get("forgetting") not in (None, False, "off")


FIRST_SEED = SEEDS[0]  # a sweep trains with it, and its run at the chosen rate is that seed's final run


wildcard_constraints:
    variant="|".join(map(re.escape, TRAINED)) or "(?!)",
    seed=r"\d+",
    rate=r"[0-9.e+-]+",
    run="|".join(map(re.escape, RUNS)),


def run_variant(wildcards):
    """The variant of a run (`lora-r64/seed0` -> lora-r64; `base` -> base)."""
    return VARIANTS[wildcards.run.split("/")[0]]


def run_seed_arg(wildcards):
    """`--seed k` for a trained run (`lora/seedk`), nothing for an untrained variant."""
    return f"--seed {wildcards.run.rpartition('seed')[2]}" if run_variant(wildcards).name in TRAINED else ""


def as_json(section):
    """A config section as a shell-quoted-ready JSON string: a changed value reruns the rule (params trigger)."""
    return json.dumps(section, sort_keys=True)


def variant_settings(wildcards):
    """What the variant learns with (its kind's defaults filled in): tracked, so changing it reruns it alone."""
    variant = VARIANTS[wildcards.variant] if "variant" in wildcards.keys() else run_variant(wildcards)
    return as_json(variant.settings)


def variant_knobs(wildcards, output):
    """What changes only how a run goes (memory knobs, compile, logging). A param derived from the output is
    not tracked by Snakemake's params trigger: changing a knob retrains nothing that finished."""
    return as_json(run_knobs(VARIANTS[wildcards.variant], config["training"]))


def sweep_runs(variant):
    """A tuned variant's sweep: one trained folder per rate of its grid."""
    return [f"{OUT}/tuning/{variant}/lr{rate_label(rate)}/trained" for rate in TUNING[variant]]


def selection(variant):
    """A tuned variant's chosen rate (peftbench select-rate)."""
    return f"{OUT}/tuning/{variant}/selection.json"


SELECTIONS = [selection(variant) for variant in TUNING]


def settings_at_rate(wildcards):
    """A sweep run's settings: its variant's, at the rate of its folder (a second rate of the kind scaled too)."""
    variant = VARIANTS[wildcards.variant]
    return as_json(at_rate(find_kind(variant.kind), variant.settings, float(wildcards.rate)))


def main_rate(variant):
    return variant.settings[learning_rate_keys(find_kind(variant.kind))[0]]


def trained_dir(wildcards):
    """The train step's output for a trained run (`lora/seed0`); nothing for an untrained variant."""
    if run_variant(wildcards).name in TRAINED:
        return f"{OUT}/{wildcards.run}/trained"
    return []


def step_benchmarks(wildcards):
    """Snakemake's benchmark files of the finished steps, for the report's wall-time table."""
    steps = ["prepare_model", "prepare_data", "prepare_test", "prepare_general_text"]
    steps += [f"tuning/{v}/lr{rate_label(rate)}/train" for v, rates in TUNING.items() for rate in rates]
    steps += [f"{r}/{s}" for r in RUNS for s in ("train", "generate", "score", "general_loss")]  # base has no train.tsv
    steps += ["compare"]
    return [f"{OUT}/benchmarks/{s}.tsv" for s in steps if os.path.exists(f"{OUT}/benchmarks/{s}.tsv")]


def local_model_files():
    """A local model folder's files: editing one reruns prepare_model and everything after it."""
    return model_files(config["model"])


def local_data_files():
    """The local data files the sources read: editing one reruns prepare_data and everything after it."""
    return data_files(config["data"])


def local_general_text_files():
    """forgetting's text when it is a file (local or the builtin one): editing it redraws the passages."""
    return general_text_files(config.get("forgetting"))
