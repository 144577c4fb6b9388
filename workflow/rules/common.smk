import json
import os
import sys

from peftbench.config import validate_config
from peftbench.inputs import builtin_data_version, data_files, embedded_model_version, model_files
from peftbench.methods import METHODS
from peftbench.errors import UserError

# Validate before anything runs: a bad key stops the workflow with one line that names it.
try:
    validate_config(config)
except UserError as error:
    raise WorkflowError(f"peftbench: {error}")

OUT = config["output_dir"]
METHOD_NAMES = config["methods"]
TRAINED = [m for m in METHOD_NAMES if METHODS[m].TRAINS]
SEEDS = config["seeds"]
# One run per trained method and seed (`lora/seed0`); the untrained base decodes greedily, so its one
# run (`base`) does not depend on a seed.
RUNS = [run for m in METHOD_NAMES for run in ([f"{m}/seed{s}" for s in SEEDS] if METHODS[m].TRAINS else [m])]
REPORT = f"{OUT}/report.md"
# Steps run the `peftbench` command of the environment that runs Snakemake, activated or not.
shell.prefix(f'set -euo pipefail; export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')


wildcard_constraints:
    method="|".join(TRAINED) or "(?!)",
    seed=r"\d+",
    run="|".join(RUNS),


def run_method(wildcards):
    return wildcards.run.split("/")[0]


def run_seed_arg(wildcards):
    """`--seed k` for a trained run (`lora/seedk`), nothing for the base."""
    return f"--seed {wildcards.run.rpartition('seed')[2]}" if METHODS[run_method(wildcards)].TRAINS else ""


def as_json(section):
    """A config section as a shell-quoted-ready JSON string: a changed value reruns the rule (params trigger)."""
    return json.dumps(section, sort_keys=True)


def method_settings(wildcards):
    method = wildcards.method if "method" in wildcards.keys() else run_method(wildcards)
    return as_json(config["method_settings"].get(method, {}))


def trained_dir(wildcards):
    """The train step's output for a trained run (`lora/seed0`); nothing for the untrained baseline."""
    if METHODS[run_method(wildcards)].TRAINS:
        return f"{OUT}/{wildcards.run}/trained"
    return []


def step_benchmarks(wildcards):
    """Snakemake's benchmark files of the finished steps, for the report's wall-time table."""
    steps = ["prepare_model", "prepare_data"]
    steps += [f"{r}/{s}" for r in RUNS for s in ("train", "generate", "score")]  # base has no train.tsv
    steps += ["compare"]
    return [f"{OUT}/benchmarks/{s}.tsv" for s in steps if os.path.exists(f"{OUT}/benchmarks/{s}.tsv")]


def local_model_files():
    """A local model folder's files: editing one reruns prepare_model and everything after it."""
    return model_files(config["model"])


def local_data_files():
    """The local data files the sources read: editing one reruns prepare_data and everything after it."""
    return data_files(config["data"])
