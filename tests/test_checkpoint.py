"""Training checkpoints in-process on the tiny Gemma 3: an interrupted run resumes to bitwise the same
weights for every method; stale, foreign and corrupted checkpoints are handled; nothing is unpickled."""
import json
import logging
import pickle
import time

import pytest
import torch
from safetensors.torch import load_file

import peftbench.train as train_module
from peftbench.checkpoint import TENSORS, Checkpoints
from peftbench.methods import TRAINED_KINDS
from peftbench.trainable import ADAPTER_DIR, FULL_WEIGHTS, TURN_TOKENS

SETTINGS = {
    "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"], "lr": 1e-2},
    "qlora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"], "lr": 1e-2},
    # update_proj_gap 3: the projectors are recomputed after the resume point too
    "galore": {"rank": 4, "update_proj_gap": 3, "scale": 0.25, "target_modules": ["q_proj", "down_proj"], "lr": 1e-2},
    "hybrid": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lr": 1e-2, "rank": 4, "update_proj_gap": 3, "scale": 0.25,
               "galore_lr": 1e-2},
    "full": {"lr": 1e-3},
    # a peft method without trainable_token_indices: peftbench's own turn-token rows are checkpointed too
    "loha": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "lr": 1e-2},
}
KINDS = [*TRAINED_KINDS, "loha"]
TRAINING = {"epochs": 2, "batch_size": 4, "warmup_ratio": 0.2, "weight_decay": 0.01, "max_grad_norm": 1.0,
            "gradient_checkpointing": False, "trainable_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "trainable_tokens_lr": 1e-2, "log_every": 1, "checkpoint_every": 1, "eval_every": 2}
STEPS = 6  # 12 examples, batch 4, 2 epochs


class Killed(Exception):
    """Stands in for a kill: raised inside the training loop, so nothing after it runs."""


@pytest.fixture(scope="module")
def train_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What does function number {i} return?" + " really" * (i % 5)},
                          {"role": "assistant", "content": f"It returns the value {i} of the argument."}]}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def validation_path(train_path):
    path = train_path.with_name("validation.jsonl")
    rows = [{"messages": [{"role": "user", "content": f"Which value does function {i} give back?"},
                          {"role": "assistant", "content": f"The value {i}."}]} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(method, model_dir, train_path, out, checkpoints, training=TRAINING, kill_after=None, monkeypatch=None,
        validation=None):
    """train(); with kill_after, the step after that many steps raises Killed instead of running."""
    if kill_after is not None:
        real_step, calls = train_module.training_step, []

        def step(*args, **kwargs):
            calls.append(1)
            if len(calls) > kill_after:
                raise Killed
            return real_step(*args, **kwargs)

        monkeypatch.setattr(train_module, "training_step", step)
        with pytest.raises(Killed):
            train_module.train(method, method, model_dir, train_path, SETTINGS[method], training, out,
                               seed=1, device="cpu", checkpoint_dir=checkpoints, validation_path=validation)
        monkeypatch.setattr(train_module, "training_step", real_step)
        assert not out.exists()  # a killed run leaves no output behind
        return None
    return train_module.train(method, method, model_dir, train_path, SETTINGS[method], training, out, seed=1,
                              device="cpu", checkpoint_dir=checkpoints, validation_path=validation)


def trained_tensors(folder):
    files = [folder / FULL_WEIGHTS, folder / ADAPTER_DIR / "adapter_model.safetensors", folder / TURN_TOKENS]
    return {f"{f.name}:{k}": v for f in files if f.exists() for k, v in load_file(f).items()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("method", KINDS)
def test_interrupted_training_resumes_to_the_same_weights(method, model_dir, train_path, validation_path, tmp_path,
                                                          monkeypatch):
    reference = run(method, model_dir, train_path, tmp_path / "ref", tmp_path / "ref-ckpt", validation=validation_path)
    assert not (tmp_path / "ref-ckpt").exists()  # removed once the output is saved
    kill_after = 4  # mid-second epoch, after a GaLore projector update (steps 3 and 6 recompute it)
    run(method, model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", kill_after=kill_after,
        monkeypatch=monkeypatch, validation=validation_path)
    (key_dir,) = (tmp_path / "ckpt").iterdir()
    assert sorted(p.name for p in key_dir.glob("step-*")) == ["step-00000003", "step-00000004"]  # last two kept
    resumed = run(method, model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", validation=validation_path)
    assert_bitwise_equal(trained_tensors(tmp_path / "ref"), trained_tensors(tmp_path / "out"))
    assert resumed["loss"] == reference["loss"] and len(resumed["loss"]) == STEPS
    assert resumed["tokens_seen"] == reference["tokens_seen"]
    assert resumed["resumed_at_steps"] == [kill_after] and reference["resumed_at_steps"] == []
    # the validation losses measured before the kill come back from the checkpoint; none is measured twice
    assert [v["step"] for v in resumed["validation"]] == [2, 4, 6]
    assert [(v["step"], v["loss"]) for v in resumed["validation"]] == [(v["step"], v["loss"]) for v in
                                                                       reference["validation"]]
    assert resumed["validation_loss"] == reference["validation"][-1]["loss"]
    assert not (tmp_path / "ckpt").exists()


def test_corrupted_checkpoint_falls_back_to_the_one_before(model_dir, train_path, tmp_path, monkeypatch, caplog):
    reference = run("lora", model_dir, train_path, tmp_path / "ref", None)
    run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", kill_after=5, monkeypatch=monkeypatch)
    (key_dir,) = (tmp_path / "ckpt").iterdir()
    newest = key_dir / "step-00000005" / TENSORS
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensors
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        resumed = run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt")
    warning = next(r.getMessage() for r in caplog.records if "unusable" in r.getMessage())
    assert "does not match its sha256" in warning and "resuming from step 4" in warning and "\n" not in warning
    assert resumed["resumed_at_steps"] == [4]
    assert_bitwise_equal(trained_tensors(tmp_path / "ref"), trained_tensors(tmp_path / "out"))
    assert resumed["loss"] == reference["loss"]


def test_unreadable_checkpoints_restart_from_scratch(model_dir, train_path, tmp_path, monkeypatch, caplog):
    run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", kill_after=2, monkeypatch=monkeypatch)
    (key_dir,) = (tmp_path / "ckpt").iterdir()
    (key_dir / "step-00000002" / "state.json").write_text("{ truncated")
    (key_dir / "step-00000001" / TENSORS).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        resumed = run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt")
    messages = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(messages) == 2 and messages[-1].endswith("training starts afresh")
    assert resumed["resumed_at_steps"] == [] and len(resumed["loss"]) == STEPS


def test_checkpoints_of_other_settings_are_removed(model_dir, train_path, tmp_path, monkeypatch, caplog):
    run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", kill_after=3, monkeypatch=monkeypatch)
    (old_key,) = (tmp_path / "ckpt").iterdir()
    changed = {**TRAINING, "warmup_ratio": 0.5}
    run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", training=changed, kill_after=1,
        monkeypatch=monkeypatch)
    warning = next(r.getMessage() for r in caplog.records if "other settings" in r.getMessage())
    assert "training.warmup_ratio differ" in warning and "removed, training starts afresh" in warning
    (new_key,) = (tmp_path / "ckpt").iterdir()
    assert new_key.name != old_key.name


def test_checkpoint_copied_from_another_config_is_ignored(model_dir, train_path, tmp_path, monkeypatch, caplog):
    run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "a", kill_after=2, monkeypatch=monkeypatch)
    changed = {**TRAINING, "weight_decay": 0.0}
    run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "b", training=changed, kill_after=1,
        monkeypatch=monkeypatch)
    (a_key,), (b_key,) = (tmp_path / "a").iterdir(), (tmp_path / "b").iterdir()
    (a_key / "step-00000002").rename(b_key / "step-00000002")  # someone copies checkpoints between configs
    with caplog.at_level(logging.WARNING):
        resumed = run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "b", training=changed)
    warning = next(r.getMessage() for r in caplog.records if "unusable" in r.getMessage())
    assert "made with other settings" in warning and "resuming from step 1" in warning
    assert resumed["resumed_at_steps"] == [1]


def test_resume_unpickles_nothing(model_dir, train_path, tmp_path, monkeypatch):
    run("galore", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", kill_after=4, monkeypatch=monkeypatch)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    resumed = run("galore", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt")
    assert resumed["resumed_at_steps"] == [4]


def test_foreign_folders_under_the_checkpoint_root_are_left_alone(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    (tmp_path / "0123456789abcdef").mkdir()  # looks like a key folder, but has no settings.json: not ours
    Checkpoints(tmp_path, {"a": 1})
    assert (tmp_path / "notes" / "keep.txt").exists() and (tmp_path / "0123456789abcdef").exists()


def test_a_killed_folder_write_leaves_nothing_the_next_write_keeps(tmp_path):
    from peftbench.io import atomic_dir

    leftover = tmp_path / ".trained.tmp-killed"  # what a kill inside atomic_dir leaves
    leftover.mkdir()
    (leftover / "half.safetensors").write_bytes(b"half")
    with atomic_dir(tmp_path / "trained") as tmp:
        (tmp / "done.txt").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trained"]


def test_training_time_counts_each_second_once(model_dir, train_path, tmp_path, monkeypatch):
    """Checkpoints store the running training time; a later step must not add it a second time, in one run
    or across a kill and resume (the report's training time and tokens/s come from it)."""
    started = time.perf_counter()
    whole = run("lora", model_dir, train_path, tmp_path / "ref", tmp_path / "ref-ckpt")
    assert 0 < whole["train_seconds"] <= time.perf_counter() - started
    started = time.perf_counter()
    run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", kill_after=4, monkeypatch=monkeypatch)
    resumed = run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt")
    assert 0 < resumed["train_seconds"] <= time.perf_counter() - started
    assert resumed["tokens_per_s"] == pytest.approx(resumed["tokens_seen"] / resumed["train_seconds"])


def test_a_changed_memory_knob_resumes_rather_than_restarts(model_dir, train_path, tmp_path, monkeypatch):
    """Memory knobs and how often to log change how a run goes, not what it learns: a run killed under one
    setting resumes under another (the workflow does not even rerun a finished one: test_workflow.py)."""
    run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", kill_after=2, monkeypatch=monkeypatch)
    knobs = {**TRAINING, "checkpoint_layers": 1, "recompute_elementwise": True, "log_every": 3}
    metrics = run("lora", model_dir, train_path, tmp_path / "out", tmp_path / "ckpt", training=knobs)
    assert metrics["resumed_at_steps"] == [2] and metrics["checkpointed_layers"] == 1
