"""Learning-rate selection on validation data (peftbench.tuning): the grids a config asks for, the choice from
a sweep's runs, the reuse of the chosen run, and the validation loss and divergence of the train step."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import peftbench.train as train_module
from peftbench.config import validate_config
from peftbench.errors import UserError
from peftbench.methods import find_kind
from peftbench.tuning import adopt, grids, select_rate
from peftbench.variants import at_rate, resolve

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "lr": 1e-3}
TRAINING = {"epochs": 1, "batch_size": 4, "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "gradient_checkpointing": False, "trainable_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "trainable_tokens_lr": 1e-3, "log_every": 1, "checkpoint_every": 0, "eval_every": 1}


def with_validation(config, n=4):
    for source in config["data"]["sources"]:
        source["validation"] = {"n": n}
    return config


def test_grids_scale_each_variants_rate_or_take_its_own(demo_config):
    config = with_validation(demo_config)
    config["tuning"] = {"multiples": [0.5, 1, 2], "grids": {"galore": [3e-5, 1e-5, 1e-4]}}
    found = grids(validate_config(config), resolve(config))
    assert list(found) == ["lora", "qlora", "galore", "hybrid"]  # trained variants only, in compare's order
    assert found["lora"] == [2.5e-4, 5e-4, 1e-3]
    assert found["galore"] == [1e-5, 3e-5, 1e-4]  # sorted
    assert found["hybrid"] == [2.5e-4, 5e-4, 1e-3]  # its main rate; galore_lr follows (at_rate)
    for off in (False, "off"):
        assert grids({**config, "tuning": off}, resolve(config)) == {}
    assert grids({k: v for k, v in config.items() if k != "tuning"}, resolve(config)) == {}


def test_a_kind_with_two_rates_scales_both():
    hybrid = find_kind("hybrid")
    settings = {**hybrid.DEFAULTS, "lr": 2e-4, "galore_lr": 1e-5}
    scaled = at_rate(hybrid, settings, 8e-4)
    assert scaled["lr"] == 8e-4 and scaled["galore_lr"] == pytest.approx(4e-5)
    assert at_rate(find_kind("lora"), {"lr": 2e-4, "r": 8}, 1e-3) == {"lr": 1e-3, "r": 8}


@pytest.mark.parametrize("change, message", [
    ({"tuning": {"grids": {"base": [1e-3]}}}, "config error at tuning.grids.base: not a trained variant"),
    ({"tuning": {"multiples": [0.5, 1]}, "no_validation": True}, "learning rates are chosen on validation data"),
    ({"tuning": {"multiples": [-1]}}, r"config error at tuning.multiples.0: -1 is less than or equal to"),
    ({"tuning": {"multiple": [1, 2]}}, r"config error at tuning: unknown key \('multiple' was unexpected\)"),
    ({"tuning": "on"}, r"config error at tuning: give off, or \{multiples"),
])
def test_bad_tuning_configs_name_the_fix(demo_config, change, message):
    config = with_validation(demo_config, n=0 if change.pop("no_validation", False) else 4)
    with pytest.raises(UserError, match=message):
        validate_config({**config, **change})


def write_run(folder, lr, loss, diverged=None, seconds=10.0):
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(os.urandom(64))
    (folder / "train_metrics.json").write_text(json.dumps({
        "learning_rates": {"lr": lr}, "validation_loss": loss, "diverged_at_step": diverged,
        "train_seconds": seconds, "device": "cpu", "tuned": False}))
    return folder


def test_the_lowest_final_validation_loss_wins_and_edges_are_flagged(tmp_path):
    runs = [write_run(tmp_path / "a", 1e-4, 2.0), write_run(tmp_path / "b", 1e-3, 1.5),
            write_run(tmp_path / "c", 1e-2, None, diverged=3)]
    selection = select_rate("lora", "lora", 1e-4, runs, seed=0)
    assert selection["chosen_lr"] == 1e-3 and selection["chosen_run"] == str(tmp_path / "b")
    assert selection["edge"] is None  # the diverged rate above it is part of the grid
    assert selection["sweep_seconds"] == 30.0
    assert [p["lr"] for p in selection["points"]] == [1e-4, 1e-3, 1e-2]
    at_top = select_rate("lora", "lora", 1e-4, runs[:2], seed=0)
    assert at_top["edge"] == "highest"
    at_bottom = select_rate("lora", "lora", 1e-4, [runs[0], write_run(tmp_path / "d", 1e-5, 2.5)], seed=0)
    assert at_bottom["chosen_lr"] == 1e-4 and at_bottom["edge"] == "highest"
    assert select_rate("lora", "lora", 1e-4, [runs[0], write_run(tmp_path / "e", 1e-3, 3.0)], 0)["edge"] == "lowest"


def test_a_sweep_where_every_rate_diverged_names_the_fix(tmp_path):
    runs = [write_run(tmp_path / "a", 1e-1, None, diverged=2), write_run(tmp_path / "b", 1.0, None, diverged=1)]
    with pytest.raises(UserError, match=r"variant lora: every rate of its grid diverged .*tuning\.grids\.lora"):
        select_rate("lora", "lora", 1e-1, runs, seed=0)


def test_the_chosen_run_is_adopted_by_links_and_marked_tuned(tmp_path):
    runs = [write_run(tmp_path / "sweep" / "a", 1e-4, 2.0), write_run(tmp_path / "sweep" / "b", 1e-3, 1.5)]
    (runs[1] / ".snakemake_timestamp").touch()  # Snakemake's mark: linked, touching it would date the sweep's run
    (tmp_path / "selection.json").write_text(json.dumps(select_rate("lora", "lora", 1e-4, runs, seed=0)))
    adopt(tmp_path / "selection.json", tmp_path / "final")
    assert os.path.samefile(tmp_path / "final" / "weights.bin", runs[1] / "weights.bin")  # stored once
    assert not (tmp_path / "final" / ".snakemake_timestamp").exists()
    final = json.loads((tmp_path / "final" / "train_metrics.json").read_text())
    assert final["tuned"] is True and final["reused_from_sweep"] == str(runs[1])
    assert json.loads((runs[1] / "train_metrics.json").read_text())["tuned"] is False  # the sweep's own record


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tuning-data")
    rows = [{"messages": [{"role": "user", "content": f"What does function {i} return?"},
                          {"role": "assistant", "content": f"It returns {i}."}]} for i in range(12)]
    for name, part in (("train", rows[:8]), ("validation", rows[8:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder / "train.jsonl", folder / "validation.jsonl"


def train(model_dir, data_paths, out, settings=LORA, kind="lora", **kwargs):
    train_path, validation_path = data_paths
    return train_module.train("lora", kind, model_dir, train_path, settings, TRAINING, out, seed=0, device="cpu",
                              validation_path=validation_path, **kwargs)


# qlora: bitsandbytes repacks 4-bit weights for good on a CPU forward in eval mode (train.validation_loss)
@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_validation_is_measured_without_changing_what_is_learned(kind, model_dir, data_paths, tmp_path):
    measured = train(model_dir, data_paths, tmp_path / "measured", kind=kind)
    plain = train_module.train("lora", kind, model_dir, data_paths[0], LORA, TRAINING, tmp_path / "plain", seed=0,
                               device="cpu")
    assert [v["step"] for v in measured["validation"]] == [1, 2]  # every step (eval_every 1), the last included
    assert measured["validation_loss"] == measured["validation"][-1]["loss"] > 0
    assert measured["validation_examples"] == 4 and plain["validation"] == [] and plain["validation_loss"] is None
    assert measured["loss"] == plain["loss"]  # eval mode, no gradients: training is bitwise the same
    adapter = "adapter/adapter_model.safetensors"
    a, b = load_file(tmp_path / "measured" / adapter), load_file(tmp_path / "plain" / adapter)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert measured["learning_rates"] == {"lr": 1e-3}


def test_a_diverging_sweep_point_is_recorded_and_a_final_run_stops(model_dir, data_paths, tmp_path, monkeypatch):
    real_step = train_module.training_step

    def step_that_diverges(*args, **kwargs):  # a rate so high the loss overflows at the second step
        loss, tokens = real_step(*args, **kwargs)
        return (torch.tensor(float("nan")) if len(losses) == 1 else loss), tokens

    losses = []
    monkeypatch.setattr(train_module, "training_step",
                        lambda *a, **k: (lambda out: (losses.append(out[0]), out)[1])(step_that_diverges(*a, **k)))
    metrics = train(model_dir, data_paths, tmp_path / "sweep", tuning=True)
    assert metrics["diverged_at_step"] == 2 and metrics["validation_loss"] is None
    assert (tmp_path / "sweep" / "train_metrics.json").exists()  # a whole output: the selection reads it
    losses.clear()
    with pytest.raises(UserError, match=r"loss is nan at step 2: lower the learning rate \(variants\.lora\.lr\)"):
        train(model_dir, data_paths, tmp_path / "final")
    assert not (tmp_path / "final").exists()
