"""A new kind is one file plus one registry line, and the workflow and the tests pick it up.

In a copy of the package (the source tree is left alone), the test writes methods/attention_lora.py, a kind
that puts LoRA on the attention projections only, adds its name to KIND_MODULES, and runs the real DAG
with a variant of it: its row reaches the report, and what trained is what the kind says. The kinds'
parametrized tests then include it without an edit.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_workflow import overlay

ROOT = Path(__file__).resolve().parents[1]
KIND = '''"""attention_lora: LoRA adapters on the attention projections only."""
from peftbench.methods import lora

NAME = "attention_lora"
SUMMARY = "LoRA adapters on the attention projections only"
MEMORY = lora.MEMORY
TRAINS = True
DEFAULTS = {**lora.DEFAULTS, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
SETTINGS = lora.SETTINGS
PEFT_KEYWORDS = True
quantization = lora.quantization
peft_config = lora.peft_config
full_rank_targets = lora.full_rank_targets
optimizer = lora.optimizer
'''
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def package_with_new_kind(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(ROOT / "src" / "peftbench", src / "peftbench", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "peftbench" / "methods" / "attention_lora.py").write_text(KIND)
    registry = src / "peftbench" / "methods" / "__init__.py"
    text = registry.read_text()
    line = next(line for line in text.splitlines() if line.startswith("KIND_MODULES = ["))
    registry.write_text(text.replace(line, line.replace("]", ', "attention_lora"]')))  # the one registry line
    return src, {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}


def test_a_new_kind_runs_through_the_workflow(package_with_new_kind, tmp_path, model_dir):
    _, env = package_with_new_kind
    config = overlay(tmp_path, model_dir, compare=["base", "attn"], seeds=[0],
                     variants={"attn": {"kind": "attention_lora", "r": 4}})
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--snakefile", str(ROOT / "Snakefile"),
                             "--configfile", str(config)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results"
    report = (results / "report.md").read_text()
    assert re.search(r"^\| attn +\| attention_lora +\|", report, re.M)
    assert "- **attn** (kind `attention_lora`): LoRA adapters on the attention projections only" in report
    adapter = json.loads((results / "attn" / "seed0" / "trained" / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"] and adapter["r"] == 4


def test_the_kinds_tests_include_a_new_kind(package_with_new_kind):
    _, env = package_with_new_kind
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "tests" / "test_methods.py"), "-k", "attention_lora"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    assert passed >= 3, result.stdout[-2000:]  # trainable set, one step, reload, memory knobs: each kind's tests
