"""The README's Snakemake commands for running parts of a study and resuming one do what it says, for the
study and the demo: each is dry-run (`-n`) in a copy of the workflow, and plans only its own config's
outputs (a demo command that Snakemake reads as the study's, or whose target `--configfile` swallowed,
would plan other paths or fail)."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("## Running parts of it", "## Interrupted runs")
pytestmark = pytest.mark.integration


def readme_commands():
    text = (ROOT / "README.md").read_text()
    commands = []
    for heading in SECTIONS:
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        for block in re.findall(r"```bash\n(.*?)```", section, re.S):
            for line in block.splitlines():
                command = line.split("#", 1)[0].strip()
                if command.startswith("snakemake "):
                    commands.append(command)
    return commands


def test_the_sections_hold_commands_for_both_configs():
    commands = readme_commands()
    assert len(commands) >= 6
    assert any("--configfile=configs/demo.yaml" in c and "--rerun-incomplete" in c for c in commands)
    assert any("--configfile=configs/demo.yaml" in c and "scores.json" in c for c in commands)


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    copy = tmp_path_factory.mktemp("readme")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, copy / name)
    for name in ("workflow", "configs", "profiles"):
        shutil.copytree(ROOT / name, copy / name)
    return copy


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_plans_its_own_configs_outputs(command, workflow_copy):
    args = shlex.split(command)[1:]
    if "--unlock" not in args:
        args.append("-n")
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workflow_copy, capture_output=True,
                            text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    planned = [o for line in re.findall(r"^\s*output: (.+)$", log, re.M) for o in line.split(", ")]
    demo = "configs/demo.yaml" in command
    if "--unlock" in args:
        return
    assert planned, log[-3000:]
    assert all(o.startswith("results/demo/") == demo for o in planned), planned
    target = next((a for a in args if a.endswith(".json")), None)
    if target:  # a one-target command plans that target, and not the report
        assert target in planned and not any(o.endswith("report.md") for o in planned)
