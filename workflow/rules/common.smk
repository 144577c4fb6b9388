import json
import os
import sys

from peftbench.config import validate_config
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
REPORT = f"{OUT}/report.md"
# Steps run the `peftbench` command of the environment that runs Snakemake, activated or not.
shell.prefix(f'set -euo pipefail; export PATH="{os.path.dirname(sys.executable)}:$PATH"; ')


wildcard_constraints:
    method="|".join(METHOD_NAMES),


def as_json(section):
    """A config section as a shell-quoted-ready JSON string: a changed value reruns the rule (params trigger)."""
    return json.dumps(section, sort_keys=True)


def method_settings(wildcards):
    return as_json(config["method_settings"].get(wildcards.method, {}))


def trained_dir(wildcards):
    """The train step's output for a trained method; nothing for the untrained baseline."""
    if METHODS[wildcards.method].TRAINS:
        return f"{OUT}/{wildcards.method}/trained"
    return []


def step_benchmarks(wildcards):
    """Snakemake's benchmark files of the finished steps, for the report's wall-time table."""
    steps = ["prepare_model", "prepare_data"]
    steps += [f"train_{m}" for m in TRAINED] + [f"{s}_{m}" for s in ("generate", "score") for m in METHOD_NAMES]
    return [f"{OUT}/benchmarks/{s}.tsv" for s in steps if os.path.exists(f"{OUT}/benchmarks/{s}.tsv")]
