"""The README's Snakemake commands for running parts of a study and resuming one do what it says, for the
study and the demo: each is dry-run (`-n`) in a copy of the workflow, and plans only its own config's
outputs (a demo command that Snakemake reads as the study's, or whose target `--configfile` swallowed,
would plan other paths or fail)."""
import json
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


def test_ci_runs_the_readmes_test_command_which_may_install():
    """.ci/run is exactly the README's test command, and that command lets the tests install system packages
    (tests/system_installs.py): CI runs the SLURM and browser tests rather than skipping them."""
    text = (ROOT / "README.md").read_text()
    command = re.search(r"^Run the tests\b.*?\n```bash\n(.+?)\n```", text, re.S | re.M).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == command
    assert "PEFTBENCH_TEST_INSTALL=1 .venv/bin/python -m pytest" in command


def test_a_target_read_as_a_config_file_fails_with_one_line(workflow_copy):
    """`--configfile configs/demo.yaml results/demo/x/scores.json`: the option takes the target as a second
    config file; once the target exists (a rerun), its keys would merge into the config. It stops with one line."""
    target = workflow_copy / "results" / "demo" / "qlora" / "seed0" / "scores.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text('{"bleu": 40.0, "rouge_l": 55.0}')
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--configfile",
                             "configs/demo.yaml", str(target.relative_to(workflow_copy))],
                            cwd=workflow_copy, capture_output=True, text=True)
    assert result.returncode != 0
    assert re.search(r"peftbench: \S*results/demo/qlora/seed0/scores\.json was given as a config file \(--configfile "
                     r"takes every word after it\): put targets before --configfile, or write --configfile=FILE before "
                     r"the target", result.stdout + result.stderr)


def test_the_own_data_command_plans_the_demo_on_a_local_file(workflow_copy):
    """The README's command for one's own instruction file: with a file of Alpaca rows in place, it plans the
    demo's whole comparison on that file, into its own output folder (and its config passes the schema)."""
    text = (ROOT / "README.md").read_text()
    command = next(line.strip() for line in text.splitlines() if "configs/own-data.yaml" in line
                   and line.strip().startswith(".venv/bin/snakemake"))
    rows = [{"instruction": f"Name a use of the number {i}.", "input": "", "output": f"{i} counts things."}
            for i in range(200)]
    (workflow_copy / "my-instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = shlex.split(command)[1:] + ["-n"]
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workflow_copy, capture_output=True,
                            text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    planned = [o for line in re.findall(r"^\s*output: (.+)$", log, re.M) for o in line.split(", ")]
    assert "results/own-data/report.md" in planned
    assert all(o.startswith("results/own-data/") for o in planned), planned


def test_the_readme_one_target_demo_command_runs_as_written(tmp_path, model_dir):
    """The README's one-target demo command, run for real as written (in a copy whose configs/demo.yaml points
    at the tiny model, with tiny sizes): it makes that run's scores and nothing the target does not need."""
    import yaml

    command = next(c for c in readme_commands() if "configs/demo.yaml" in c and c.endswith("scores.json"))
    for name in ("Snakefile", "config.yaml", "environment.yml"):  # the rules name their conda environment
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("workflow", "configs", "profiles"):
        shutil.copytree(ROOT / name, tmp_path / name)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo["model"] = {"source": "local", "path": json.loads((model_dir / "model.json").read_text())["path"]}
    for source in demo["data"]["sources"]:
        source.update(train={**source["train"], "n": 8}, validation={"n": 2}, test={**source["test"], "n": 2})
    demo["training"].update(epochs=1, batch_size=4)
    demo["generation"].update(max_new_tokens=8, batch_size=4)
    demo["forgetting"].update(passages=4, max_length=32)
    (tmp_path / "configs" / "demo.yaml").write_text(yaml.safe_dump(demo))
    result = subprocess.run([sys.executable, "-m", "snakemake", *shlex.split(command)[1:]], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    target = tmp_path / next(a for a in shlex.split(command) if a.endswith("scores.json"))
    assert json.loads(target.read_text())["n"] == 6
    assert not (tmp_path / "results" / "demo" / "report.md").exists()
    assert not (tmp_path / "results" / "demo" / "lora").exists()  # only what the target needs


@pytest.mark.parametrize("model_id", ["meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"])
def test_changing_the_model_id_is_the_only_edit_another_family_needs(model_id, workflow_copy):
    """config.yaml with only model.id changed plans the same study as with Gemma: every job, nothing else."""
    def plan(config):
        result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", config],
                                cwd=workflow_copy, capture_output=True, text=True)
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-3000:]
        return sorted(o for line in re.findall(r"^\s*output: (.+)$", log, re.M) for o in line.split(", "))

    text = (workflow_copy / "config.yaml").read_text()
    edited = re.sub(r"^(  id: )google/gemma-3-1b-it", rf"\g<1>{model_id}", text, count=1, flags=re.M)
    assert edited != text
    (workflow_copy / "config-other.yaml").write_text(edited)
    study = plan("config.yaml")
    assert len(study) > 100 and plan("config-other.yaml") == study
