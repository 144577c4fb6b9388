"""The real Snakemake DAG, end to end, on the tiny Gemma 3 and small builtin data, for every method."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from peftbench.methods import METHODS
from peftbench.report import shown_differences
from peftbench.trainable import load_for_eval
from peftbench.variants import resolve

ROOT = Path(__file__).resolve().parents[1]
# Every kind of peftbench, three more variants of lora (another rank, DoRA, PiSSA) and one other peft method.
ALL_METHODS = ["base", "lora", "lora-r2", "dora", "pissa", "loha", "qlora", "galore", "hybrid", "full"]
VARIANTS = {"lora-r2": {"kind": "lora", "r": 2, "lora_alpha": 4}, "dora": {"kind": "lora", "use_dora": True},
            "pissa": {"kind": "lora", "init_lora_weights": "pissa"}, "loha": {"kind": "loha", "r": 4, "alpha": 8},
            "galore": {"rank": 8}, "hybrid": {"rank": 8}, "full": {"lr": 1.0e-4}}
TRAINED = len(ALL_METHODS) - 1
SEEDS = [0, 1]
RUNS = ["base"] + [f"{m}/seed{s}" for m in ALL_METHODS[1:] for s in SEEDS]
pytestmark = pytest.mark.integration


def snakemake(*args, check=True):
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--snakefile", str(ROOT / "Snakefile"), *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def overlay(tmp_path, model_dir, **changes):
    hf_path = json.loads((model_dir / "model.json").read_text())["path"]
    config = {
        "output_dir": str(tmp_path / "results"),
        "model": {"source": "local", "path": hf_path},
        "data": {"max_length": 480, "sources": [
            {"name": name, "builtin": name, "format": "alpaca" if name == "alpaca" else "messages",
             "train": {"split": split, "n": 8}, "validation": {"n": 2}, "test": {"split": test_split, "n": 3}}
            for name, split, test_split in [("alpaca", "train", "train"), ("tulu", "train", "train"),
                                            ("ultrachat", "train_sft", "test_sft")]]},
        "compare": ALL_METHODS,
        "seeds": SEEDS,
        "bootstrap": {"samples": 200, "confidence": 0.95},
        "training": {"epochs": 1, "batch_size": 4, "log_every": 1},
        "variants": VARIANTS,
        "generation": {"max_new_tokens": 8, "batch_size": 4},
        "tuning": "off",  # config.yaml's sweeps: tests/test_tuning_workflow.py
        # config.yaml's WikiText is a download: the package's own text, a few short passages
        "forgetting": {"text": "builtin", "passages": 6, "max_length": 48},
        # one thread per step and no GPU claim: two steps at a time on CI's 2 cores, as in the demo
        "threads": 1,
        "gpu_per_step": 0,
        **changes,
    }
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model_dir):
    tmp_path = tmp_path_factory.mktemp("workflow")
    config = overlay(tmp_path, model_dir)
    snakemake("--configfile", str(config))
    return tmp_path / "results", config


def test_report_has_every_method_with_scores_in_range(finished_run):
    results, _ = finished_run
    report = (results / "report.md").read_text()
    for method in ALL_METHODS:
        assert re.search(rf"^\| {method} +\|", report, re.M), f"no {method} row in the report"
    for run in RUNS:
        scores = json.loads((results / run / "scores.json").read_text())
        assert 0 <= scores["bleu"] <= 100 and 0 <= scores["rouge_l"] <= 100
        assert set(scores["per_source"]) == {"alpaca", "tulu", "ultrachat"}
        assert scores["n"] == 9
        generations = [json.loads(line) for line in (results / run / "generations.jsonl").read_text().splitlines()]
        assert {g["source"] for g in generations} == {"alpaca", "tulu", "ultrachat"}
        assert all(set(g) == {"id", "source", "prompt", "reference", "prediction"} for g in generations)
    for plot in ("loss.png", "cost.png", "scores.png", "pareto.png"):
        assert (results / plot).read_bytes().startswith(b"\x89PNG")
        assert f"]({plot})" in report
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in report
    assert report.startswith("# peftbench report\n\n## Verdict\n") and "general-text loss" in report


def test_report_has_seed_spread_intervals_and_significance(finished_run):
    results, _ = finished_run
    report = (results / "report.md").read_text()
    comparison = json.loads((results / "comparison.json").read_text())
    assert comparison["seeds"] == {"base": [None], **{m: SEEDS for m in ALL_METHODS[1:]}}
    lora = comparison["methods"]["lora"]["overall"]["bleu"]
    assert len(lora["per_seed"]) == 2 and lora["sd"] is not None and lora["ci"][0] <= lora["mean"] <= lora["ci"][1]
    assert len(comparison["differences"]) == TRAINED + TRAINED * (TRAINED - 1) // 2  # vs base, and every pair
    # Trained rows show kind, rate, and mean ± sd over the 2 seeds; the page lists each difference against the
    # base and against the best variant with its verdict (comparison.json has them all).
    assert re.search(r"^\| dora +\| lora +\| 0\.0002 +\| 2 +\| [\d.]+ +\| [\d.]+ ± [\d.]+ +\|", report, re.M)
    shown = shown_differences(comparison)
    assert len(shown) == TRAINED + TRAINED - 1
    for name in shown:
        assert re.search(rf"^\| {name} +\| [+-][\d.]+ \[[-\d.]+, [-\d.]+\] +\| (\*\*yes\*\*|no) \(p [=<] ", report, re.M)
    for source in ("alpaca", "tulu", "ultrachat"):
        assert f"{source} BLEU-4" in report
    for statement in ("95 % CI", "paired", "data sample is drawn once", "Token budget", "signature",
                      "Porter stemming", "greedy", "Libraries: torch", "lora/seed1/train"):
        assert statement in report, statement


def test_snakemake_builds_the_html_report(finished_run):
    results, config = finished_run
    html = results.parent / "snakemake-report.html"
    snakemake("--configfile", str(config), "--report", str(html))
    text = html.read_text()
    for name in ("report.html", "loss.png", "cost.png", "scores.png", "pareto.png", "paired bootstrap"):
        assert name in text, name
    page = (results / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page and "<strong>" in page


def test_train_metrics_are_complete(finished_run):
    results, _ = finished_run
    for run in RUNS[1:]:
        metrics = json.loads((results / run / "trained" / "train_metrics.json").read_text())
        assert metrics["steps"] == 6 and len(metrics["loss"]) == 6  # 24 examples, batch 4, 1 epoch
        assert metrics["train_seconds"] > 0 and metrics["tokens_per_s"] > 0 and metrics["peak_memory_gb"] > 0
        # config.yaml checkpoints GaLore's first 8 layers (all 2 of the tiny model's) and recomputes elementwise
        assert metrics["checkpointed_layers"] == (2 if run.startswith("galore/") else 0)
        assert metrics["recompute_elementwise"] == run.startswith("galore/")
        assert metrics["attention"] == "sdpa"  # a CPU; a GPU packs with FlashAttention (test_attention.py)
        assert metrics["cuda_graphs"] is None  # config.yaml's cuda_graphs: true is for a GPU (test_graphs.py)
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in metrics["loss"])


def test_forgetting_is_measured_for_every_run_against_the_base(finished_run):
    results, _ = finished_run
    forgetting = json.loads((results / "comparison.json").read_text())["forgetting"]
    assert forgetting["text"]["name"] == "builtin" and forgetting["text"]["passages"] == 6
    assert set(forgetting["methods"]) == set(ALL_METHODS)
    assert len(forgetting["methods"]["lora"]["per_seed"]) == len(SEEDS) and forgetting["methods"]["base"]["sd"] is None
    assert set(forgetting["differences"]) == {f"{m} - base" for m in ALL_METHODS[1:]}
    for run in RUNS:
        measured = json.loads((results / run / "general_loss.json").read_text())
        assert len(measured["nll"]) == 6 and all(t > 0 for t in measured["tokens"])


def test_trained_adapter_loads_and_changes_the_model(finished_run, model_dir):
    results, config = finished_run
    input_ids = torch.tensor([[2, 10, 20, 30, 40, 50]])
    base = load_for_eval(METHODS["base"], model_dir, None, {}, "cpu")
    with torch.no_grad():
        base_logits = base(input_ids=input_ids).logits
    from peftbench.config import load_config

    variants = resolve(load_config(ROOT / "config.yaml", config))
    assert variants["dora"].settings["use_dora"] and variants["lora-r2"].settings["r"] == 2
    for variant in list(variants.values())[1:]:
        model = load_for_eval(METHODS[variant.kind], model_dir, results / variant.name / "seed0" / "trained",
                              variant.settings, "cpu")
        with torch.no_grad():
            assert not torch.allclose(model(input_ids=input_ids).logits, base_logits), variant.name


def test_nothing_to_do_on_rerun_and_one_method_reruns_alone(finished_run):
    results, config = finished_run
    dry = snakemake("--configfile", str(config), "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    (results / "qlora" / "seed1" / "scores.json").unlink()
    rerun = snakemake(str(results / "qlora" / "seed1" / "scores.json"), "--configfile", str(config))
    log = rerun.stdout + rerun.stderr
    assert re.search(r"^score\s+1$", log, re.M) and not re.search(r"^(train|generate)\s+\d", log, re.M)


def test_bad_config_stops_the_workflow_with_one_line(tmp_path, model_dir):
    config = overlay(tmp_path, model_dir, compare=["base", "doora"])
    result = snakemake("--configfile", str(config), "-n", check=False)
    assert result.returncode != 0
    assert "peftbench: config error at compare: 'doora' is not defined under variants" in result.stdout + result.stderr


def changed_plan(finished_run, tmp_path, change):
    results, config = finished_run
    changed = yaml.safe_load(config.read_text())
    change(changed)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    return planned_jobs(snakemake("--configfile", str(path), "-n"))


def test_one_variants_learning_rate_reruns_that_variant_alone(finished_run, tmp_path):
    plan = changed_plan(finished_run, tmp_path, lambda c: c["variants"]["lora-r2"].update(lr=1e-3))
    assert plan == {"train": "2", "generate": "2", "general_loss": "2", "score": "2", "compare": "1", "report": "1",
                    "all": "1", "total": "11"}


def test_a_memory_knob_retrains_nothing(finished_run, tmp_path):
    def change(config):
        config["variants"]["galore"].update(checkpoint_layers=0, recompute_elementwise=False)
        config["training"].update(log_every=5, checkpoint_every=3)

    plan = changed_plan(finished_run, tmp_path, change)  # the report (seconds) reads the config: it reruns
    assert not {"train", "generate", "score", "compare"} & set(plan), plan


def test_a_shared_setting_reruns_every_variant(finished_run, tmp_path):
    plan = changed_plan(finished_run, tmp_path, lambda c: c["training"].update(warmup_ratio=0.5))
    assert plan["train"] == str(TRAINED * len(SEEDS)) and plan["generate"] == str(TRAINED * len(SEEDS))


def test_lint_is_clean():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def files_overlay(tmp_path, model_dir):
    """A study on a local alpaca file and a local copy of the tiny model: what a user edits in place."""
    import shutil

    data, model = tmp_path / "alpaca.jsonl", tmp_path / "my-model"
    data.write_text("".join(json.dumps({"instruction": f"Name the function number {i}.", "input": "",
                                        "output": f"It is f{i}."}) + "\n" for i in range(20)))
    shutil.copytree(json.loads((model_dir / "model.json").read_text())["path"], model)
    source = {"name": "alpaca", "files": {"train": str(data)}, "format": "alpaca",
              "train": {"split": "train", "n": 8}, "test": {"split": "train", "n": 3}}
    config = overlay(tmp_path, model_dir, model={"source": "local", "path": str(model)},
                     data={"max_length": 128, "sources": [source]})
    return config, data, model


def planned_jobs(result):
    return dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))


def test_editing_a_data_file_or_the_local_model_reruns_what_depends_on_it(tmp_path, model_dir):
    config, data, model = files_overlay(tmp_path, model_dir)
    manifest = str(tmp_path / "results" / "data" / "manifest.json")
    snakemake(manifest, "--configfile", str(config))
    assert "Nothing to be done" in snakemake(manifest, "--configfile", str(config), "-n").stdout
    time.sleep(1.1)  # a later mtime on file systems that keep whole seconds
    data.write_text(data.read_text().replace("Name the function", "Name the method"))
    plan = snakemake(manifest, "--configfile", str(config), "-n")
    assert planned_jobs(plan).get("prepare_data") == "1" and "prepare_model" not in planned_jobs(plan)
    assert f"Updated input files: {data}" in plan.stdout
    full = snakemake("--configfile", str(config), "-n")  # and everything downstream of the data
    assert {"prepare_data", "train", "generate", "score", "compare", "report"} <= set(planned_jobs(full))

    snakemake(manifest, "--configfile", str(config))
    time.sleep(1.1)
    (model / "config.json").write_text((model / "config.json").read_text() + "\n")
    plan = snakemake(manifest, "--configfile", str(config), "-n")
    assert planned_jobs(plan).get("prepare_model") == "1" and planned_jobs(plan).get("prepare_data") == "1"
    assert f"Updated input files: {model / 'config.json'}" in plan.stdout


def test_a_failed_steps_fix_reaches_the_console(tmp_path, model_dir):
    config, data, _ = files_overlay(tmp_path, model_dir)
    rows = data.read_text().splitlines()
    data.write_text("\n".join(rows[:2] + ['{"instruction": "broken'] + rows[2:]) + "\n")
    result = snakemake(str(tmp_path / "results" / "data" / "manifest.json"), "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert (f"peftbench prepare-data: error: source alpaca: file {data} line 3 is not valid JSON"
            in result.stdout + result.stderr)
    assert not (tmp_path / "results" / "data").exists()


def test_builtin_data_reruns_when_its_generator_or_python_changes():
    import hashlib
    import platform

    from peftbench import demo_data
    from peftbench.inputs import builtin_data_version

    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    assert builtin_data_version(demo["data"]) == {
        "generator": hashlib.sha256(Path(demo_data.__file__).read_bytes()).hexdigest()[:16],
        "python": platform.python_version()}
    study = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert builtin_data_version(study["data"]) is None  # hub sources: the revision is their version


def test_a_setting_peft_refuses_stops_the_run_before_any_step(tmp_path, model_dir):
    config = overlay(tmp_path, model_dir, compare=["base", "odd"], variants={"odd": {"kind": "loha", "rr": 8}})
    result = snakemake("--configfile", str(config), check=False)
    assert result.returncode != 0
    assert ("peftbench: config error at variants.odd: peft refuses its settings for kind loha"
            in result.stdout + result.stderr)
    assert not (tmp_path / "results" / "model").exists()  # nothing ran


# The other peft methods the README lists as tested, each through the whole workflow (one seed, few steps).
MORE_PEFT = {"rslora": {"kind": "lora", "use_rslora": True}, "olora": {"kind": "lora", "init_lora_weights": "olora"},
             "lokr": {"kind": "lokr", "r": 4, "alpha": 8}, "ia3": {"kind": "ia3"}, "vera": {"kind": "vera", "r": 8},
             "oft": {"kind": "oft", "oft_block_size": 16}}


def test_every_listed_peft_method_runs_through_the_workflow(tmp_path, model_dir):
    config = overlay(tmp_path, model_dir, compare=["base", *MORE_PEFT], seeds=[0], variants=MORE_PEFT,
                     generation={"max_new_tokens": 4, "batch_size": 4}, training={"epochs": 1, "batch_size": 8})
    snakemake("--configfile", str(config))
    results = tmp_path / "results"
    report = (results / "report.md").read_text()
    for name, settings in MORE_PEFT.items():
        assert re.search(rf"^\| {name} +\| {settings['kind']} +\|", report, re.M), name
        metrics = json.loads((results / name / "seed0" / "trained" / "train_metrics.json").read_text())
        assert metrics["kind"] == settings["kind"] and metrics["steps"] == 3 and metrics["trainable_params"] > 0
        assert json.loads((results / name / "seed0" / "scores.json").read_text())["n"] == 9


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_other_families_run_the_whole_dag_with_every_kind(tmp_path, model_dir, family):
    """A tiny random Llama (no padding token, a system header in every conversation) and Qwen2 (ChatML,
    sliding layers), each with its family's turn format: every kind trains, generates and is scored, the
    answers trained and stopped at are the family's own end of turn."""
    from tiny import make_tiny_model

    hf = make_tiny_model(tmp_path / f"tiny-{family}", family)
    methods = ["base", "lora", "qlora", "galore", "hybrid", "full"]
    config = overlay(tmp_path, model_dir, model={"source": "local", "path": str(hf)}, compare=methods,
                     seeds=[0], variants={"galore": {"rank": 8}, "hybrid": {"rank": 8}, "full": {"lr": 1.0e-4}},
                     generation={"max_new_tokens": 6, "batch_size": 4})
    snakemake("--configfile", str(config))
    results = tmp_path / "results"
    info = json.loads((results / "model" / "model.json").read_text())
    end_of_turn = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>"}[family]
    assert info["format"]["end_of_turn"] == end_of_turn and end_of_turn in info["format"]["turn_tokens"]
    report = (results / "report.md").read_text()
    assert f"an answer ends at `{end_of_turn}`, where generation stops" in report
    assert f"the chat template's turn tokens: {', '.join(info['format']['turn_tokens'])}" in report
    for method in methods:
        run = results / method if method == "base" else results / method / "seed0"
        assert re.search(rf"^\| {method} +\|", report, re.M), method
        assert json.loads((run / "scores.json").read_text())["n"] == 9
        if method != "base":
            metrics = json.loads((run / "trained" / "train_metrics.json").read_text())
            assert metrics["steps"] > 0 and metrics["trainable_params"] > 0
