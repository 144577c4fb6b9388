"""Learning-rate selection through the real Snakemake DAG on the tiny Gemma 3: a variant configured with a
rate far too low gets a higher one chosen on validation data and scores better than when it is not tuned; the
test split does not exist before every rate is chosen; a changed grid reruns only its own new jobs."""
import json
import os

import pytest
import yaml

from test_workflow import planned_jobs, snakemake

pytestmark = pytest.mark.integration
TOO_LOW = 1.0e-7  # full fine-tuning of the tiny model barely moves at this rate
GRID = [TOO_LOW, 1.0e-3, 3.0e-3, 1.0e-2]


def overlay(tmp_path, model_dir, name, **changes):
    hf_path = json.loads((model_dir / "model.json").read_text())["path"]
    config = {
        "output_dir": str(tmp_path / name),
        "model": {"source": "local", "path": hf_path},
        # the templated demo answers, learned over 320 steps: enough for the tiny model to answer in their words
        "data": {"max_length": 480, "sources": [
            {"name": "alpaca", "builtin": "alpaca", "format": "alpaca", "train": {"split": "train", "n": 64},
             "validation": {"n": 8}, "test": {"split": "train", "n": 8}}]},
        "compare": ["base", "full"],
        "seeds": [0, 1],
        "bootstrap": {"samples": 200, "confidence": 0.95},
        "training": {"epochs": 40, "batch_size": 8, "log_every": 20, "warmup_ratio": 0.1, "eval_every": 80,
                     "trainable_tokens_lr": 1.0e-3},
        "variants": {"full": {"kind": "full", "lr": TOO_LOW}},
        "generation": {"max_new_tokens": 24, "batch_size": 8},
        "tuning": {"grids": {"full": GRID}},
        "forgetting": "off",  # measured in tests/test_workflow.py and tests/test_forgetting.py
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tmp_path / name


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory, model_dir):
    tmp_path = tmp_path_factory.mktemp("tuning")
    config, results = overlay(tmp_path, model_dir, "tuned")
    # First only the sweep and its choice: the test split must not exist yet.
    snakemake(str(results / "tuning/full/selection.json"), "--configfile", str(config))
    test_existed_before_the_final_runs = (results / "data/test.jsonl").exists()
    snakemake("--configfile", str(config))
    return tmp_path, config, results, test_existed_before_the_final_runs


def test_the_test_split_is_written_only_after_every_rate_is_chosen(tuned_run):
    _, _, results, test_existed_before_the_final_runs = tuned_run
    assert not test_existed_before_the_final_runs
    assert (results / "data/validation.jsonl").exists() and (results / "data/train.jsonl").exists()
    selection_written = (results / "tuning/full/selection.json").stat().st_mtime
    assert (results / "data/test.jsonl").stat().st_mtime >= selection_written


def test_a_rate_far_too_low_is_replaced_and_the_tuned_variant_scores_better(tuned_run, model_dir):
    tmp_path, _, results, _ = tuned_run
    selection = json.loads((results / "tuning/full/selection.json").read_text())
    assert [p["lr"] for p in selection["points"]] == GRID
    assert selection["chosen_lr"] > TOO_LOW
    losses = {p["lr"]: p["validation_loss"] for p in selection["points"]}
    assert losses[selection["chosen_lr"]] == min(losses.values())
    # the sweep's seed-0 run at the chosen rate is the final seed-0 run, stored once; seed 1 trained at that rate
    chosen_run = results / f"tuning/full/lr{selection['chosen_lr']:g}/trained"
    final = results / "full/seed0/trained"
    shared = [p.name for p in final.iterdir() if p.is_file() and not p.name.startswith((".", "train_metrics"))]
    assert shared and all(os.path.samefile(final / name, chosen_run / name) for name in shared)
    seed1 = json.loads((results / "full/seed1/trained/train_metrics.json").read_text())
    assert seed1["learning_rates"] == {"lr": selection["chosen_lr"]} and seed1["tuned"]
    assert seed1["validation_loss"] is not None

    untuned_config, untuned = overlay(tmp_path, model_dir, "untuned", tuning="off", seeds=[0])
    snakemake("--configfile", str(untuned_config))
    tuned_scores = json.loads((results / "full/seed0/scores.json").read_text())
    untuned_scores = json.loads((untuned / "full/seed0/scores.json").read_text())
    kept = {"chosen_lr": selection["chosen_lr"], "configured_lr": TOO_LOW,
            "tuned": {k: tuned_scores[k] for k in ("bleu", "rouge_l")},
            "untuned": {k: untuned_scores[k] for k in ("bleu", "rouge_l")}}
    print("tuned against untuned:", json.dumps(kept))
    assert tuned_scores["bleu"] > untuned_scores["bleu"] and tuned_scores["rouge_l"] > untuned_scores["rouge_l"], kept

    report = (results / "report.md").read_text()
    assert "## Learning rates, chosen on validation data" in report and (results / "tuning.png").exists()
    assert f"**{selection['chosen_lr']:g}: " in report  # the chosen rate in bold in the grid


def test_a_changed_grid_reruns_only_that_variants_new_points_and_final_runs(tuned_run, tmp_path):
    _, config, results, _ = tuned_run
    unchanged = snakemake("--configfile", str(config), "-n")
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr, planned_jobs(unchanged)
    changed = yaml.safe_load(config.read_text())
    changed["tuning"]["grids"]["full"] = GRID + [3.0e-2]
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    plan = planned_jobs(snakemake("--configfile", str(path), "-n"))
    # one new sweep point, the choice, the final runs (seed 0 adopted, seed 1 trained); the test split stays
    assert plan == {"tune": "1", "select_rate": "1", "adopt_tuned": "1", "train": "1", "generate": "2",
                    "score": "2", "compare": "1", "report": "1", "all": "1", "total": "11"}, plan


def test_tuning_off_plans_the_untuned_dag(tmp_path, model_dir):
    config, _ = overlay(tmp_path, model_dir, "off", tuning="off")
    plan = planned_jobs(snakemake("--configfile", str(config), "-n"))
    assert plan == {"prepare_model": "1", "prepare_data": "1", "prepare_test": "1", "train": "2", "generate": "3",
                    "score": "3", "compare": "1", "report": "1", "all": "1", "total": "14"}, plan
