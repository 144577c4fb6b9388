"""Forgetting (peftbench/forgetting.py): the passages, one model's loss on them, and the paired bootstrap that
compares each trained model with the base; a model trained at a huge learning rate is caught forgetting."""
import json

import numpy as np
import pytest
import torch

from peftbench import cli
from peftbench.errors import UserError
from peftbench.forgetting import (compare_forgetting, draw_passages, general_loss, passage_ids,
                                  prepare_general_text, summed_nll, usable)
from peftbench.methods import METHODS
from peftbench.trainable import load_for_eval
from peftbench.train import train

BUILTIN = {"text": "builtin", "passages": 12, "max_length": 64}
TRAINING = {"epochs": 1, "batch_size": 2, "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "gradient_checkpointing": False, "trainable_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "trainable_tokens_lr": 1e-3, "log_every": 1, "checkpoint_every": 0}


def loss_file(path, method, seed, nll, tokens, sha="abc"):
    path.write_text(json.dumps({
        "method": method, "seed": seed, "text": {"name": "t", "origin": "builtin", "revision": None, "sha256": sha},
        "max_length": 64, "passages": [f"p{i}" for i in range(len(nll))], "nll": np.asarray(nll, dtype=float).tolist(),
        "tokens": np.asarray(tokens).tolist()}))
    return path


def test_comparison_schema_and_a_planted_higher_loss_is_significant(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 60, size=50)
    base = tokens * rng.normal(3.0, 0.3, size=50)
    paths = [loss_file(tmp_path / "base.json", "base", None, base, tokens)]
    for seed in (0, 1):  # `same`: the base's loss plus noise; `forgot`: 10 % more on every passage
        paths.append(loss_file(tmp_path / f"same{seed}.json", "same", seed,
                               base + tokens * rng.normal(0, 0.02, size=50), tokens))
        paths.append(loss_file(tmp_path / f"forgot{seed}.json", "forgot", seed, base * (1.1 + 0.01 * seed), tokens))
    result = compare_forgetting(paths, samples=500, confidence=0.95, seed=0)
    assert result["text"] == {"name": "t", "origin": "builtin", "revision": None, "passages": 50,
                              "tokens": int(tokens.sum())}
    assert set(result["methods"]) == {"base", "same", "forgot"}
    for method, entry in result["methods"].items():
        assert set(entry) == {"loss", "ci", "per_seed", "sd"}
        assert entry["ci"][0] <= entry["loss"] <= entry["ci"][1]
    assert result["methods"]["base"]["loss"] == pytest.approx(base.sum() / tokens.sum())
    assert result["methods"]["base"]["sd"] is None and len(result["methods"]["forgot"]["per_seed"]) == 2
    assert result["methods"]["forgot"]["loss"] == pytest.approx(np.mean(result["methods"]["forgot"]["per_seed"]))
    assert set(result["differences"]) == {"same - base", "forgot - base"}  # each trained method against the base
    forgot, same = result["differences"]["forgot - base"], result["differences"]["same - base"]
    assert set(forgot) == {"diff", "ci", "p", "significant"}
    assert forgot["diff"] > 0 and forgot["significant"] and forgot["p"] < 0.01 and forgot["ci"][0] > 0
    assert not same["significant"] and same["ci"][0] < 0 < same["ci"][1]
    json.dumps(result)  # plain JSON types only


def test_runs_on_other_passages_are_refused(tmp_path):
    paths = [loss_file(tmp_path / "base.json", "base", None, [3.0, 4.0], [1, 2]),
             loss_file(tmp_path / "lora.json", "lora", 0, [3.0, 4.0], [1, 2], sha="other")]
    with pytest.raises(UserError, match="lora seed 0 measured other general text than base: rerun general_loss"):
        compare_forgetting(paths, samples=100)


def test_passages_are_paragraphs_drawn_with_the_seed_and_the_builtin_text_is_general_english(tmp_path):
    assert usable([" = Robert Boulter = ", "", " = = Career = = ", "  Robert  Boulter is an actor . ", "x", "x"]) \
        == ["Robert Boulter is an actor .", "x"]  # WikiText's headings and blank lines go; duplicates count once
    text = prepare_general_text(BUILTIN, tmp_path / "a.json", seed=0)
    again = prepare_general_text(BUILTIN, tmp_path / "b.json", seed=0)
    other = prepare_general_text(BUILTIN, tmp_path / "c.json", seed=1)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert text["sha256"] != other["sha256"]
    passages = json.loads((tmp_path / "a.json").read_text())
    assert (passages["name"], passages["origin"], passages["revision"]) == ("builtin", "builtin", None)
    assert len(passages["passages"]) == 12 and len({p["id"] for p in passages["passages"]}) == 12
    words = " ".join(p["text"] for p in passages["passages"]).lower()
    assert "python" not in words and "def " not in words  # not the demo's training data
    assert draw_passages(["a", "b", "c"], 2, 0) == draw_passages(["c", "b", "a"], 2, 0)  # file order is no matter


def test_summed_nll_is_the_models_own_loss_whatever_the_batching(model_dir, tokenizer, tmp_path):
    prepare_general_text(BUILTIN, tmp_path / "passages.json", seed=0)
    passages = json.loads((tmp_path / "passages.json").read_text())["passages"]
    ids = passage_ids(tokenizer, passages, 40)
    # as the tokenizer encodes plain text (Gemma's adds its BOS; the tiny one adds none), cut to 40 tokens
    assert ids == [tokenizer(p["text"])["input_ids"][:40] for p in passages] and max(map(len, ids)) == 40
    model = load_for_eval(METHODS["base"], model_dir, None, {}, "cpu")
    batched, tokens = summed_nll(model, ids, 5, tokenizer.pad_token_id, "cpu")
    alone, _ = summed_nll(model, ids, 1, tokenizer.pad_token_id, "cpu")
    assert tokens == [len(i) - 1 for i in ids]
    assert batched == pytest.approx(alone, rel=1e-5)  # padding changes nothing
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids[0]]), labels=torch.tensor([ids[0]])).loss.item()
    assert batched[0] / tokens[0] == pytest.approx(reference, rel=1e-5)


def test_a_model_trained_at_a_huge_learning_rate_forgets(model_dir, tmp_path):
    """The planted forgetful model: full fine-tuning of the tiny model at lr 0.1 on a few chat examples
    (8 steps) loses its general text, significantly; at lr 1e-3 the loss barely moves."""
    rows = [{"messages": [{"role": "user", "content": f"What does function number {i} return?"},
                          {"role": "assistant", "content": f"It returns the value {i} of the argument."}]}
            for i in range(16)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    passages = tmp_path / "passages.json"
    prepare_general_text({**BUILTIN, "passages": 20}, passages, seed=0)
    paths = [tmp_path / "base.json"]
    general_loss("base", model_dir, None, passages, {}, 64, paths[0], "base", device="cpu")
    for name, lr in (("normal", 1e-3), ("forgetful", 1e-1)):
        train(name, "full", model_dir, tmp_path / "train.jsonl", {"lr": lr}, TRAINING, tmp_path / name, seed=0,
              device="cpu")
        paths.append(tmp_path / f"{name}.json")
        general_loss("full", model_dir, tmp_path / name, passages, {"lr": lr}, 64, paths[-1], name, 0, device="cpu")
    result = compare_forgetting(paths, samples=500)
    forgetful, normal = result["differences"]["forgetful - base"], result["differences"]["normal - base"]
    assert forgetful["significant"] and forgetful["diff"] > 0.5 and forgetful["ci"][0] > 0
    assert abs(normal["diff"]) < forgetful["diff"] / 50 and not (normal["significant"] and normal["diff"] > 0)
    saved = json.loads(paths[-1].read_text())
    assert (saved["method"], saved["seed"], len(saved["passages"])) == ("forgetful", 0, 20)


@pytest.mark.parametrize("text, passages, message", [
    ("missing.txt", 5, "peftbench general-text: error: forgetting.text: file {path} is missing or empty: give a "
                       "text file with paragraphs separated by blank lines"),
    ("empty.txt", 5, "peftbench general-text: error: forgetting.text: file {path} is missing or empty"),
    ("short.txt", 5, "peftbench general-text: error: forgetting.text short: only 2 usable passages, 5 asked: "
                     "lower forgetting.passages or give a longer text"),
    ("builtin", 500, "peftbench general-text: error: forgetting.text builtin: only 42 usable passages, 500 asked: "
                     "lower forgetting.passages"),
])
def test_a_general_text_too_short_or_missing_names_the_fix(text, passages, message, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("One paragraph.\n\n = Heading = \n\nAnother one.\n")
    path = text if text == "builtin" else str(tmp_path / text)
    out = tmp_path / "out" / "passages.json"
    argv = ["general-text", "--forgetting", json.dumps({"text": path, "passages": passages, "max_length": 64}),
            "--out", str(out)]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message.format(path=path))
    assert not out.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("forgetting, message", [
    ({"text": "builtin", "passages": 4, "max_length": 64, "batch": 2}, "config error at forgetting: unknown key"),
    ({"text": {"name": "w", "hub": "Salesforce/wikitext", "split": "test", "confg": "x"}, "passages": 4,
      "max_length": 64}, r"config error at forgetting.text: unknown key \('confg' was unexpected\)"),
    ({"text": 3, "passages": 4, "max_length": 64}, "config error at forgetting.text: give builtin, a local .txt"),
    ({"text": "builtin", "passages": 0, "max_length": 64}, "config error at forgetting.passages: 0 is less than"),
    ("on", r"config error at forgetting: give off, or \{text: "),
])
def test_a_bad_forgetting_config_names_the_key(forgetting, message, demo_config):
    from peftbench.config import validate_config

    with pytest.raises(UserError, match=message):
        validate_config({**demo_config, "forgetting": forgetting})
    for off in ("off", False):
        validate_config({**demo_config, "forgetting": off})


def test_the_study_measures_wikitext_and_the_demos_the_builtin_text(study_config, demo_config):
    assert study_config["forgetting"]["text"] == {"name": "wikitext", "hub": "Salesforce/wikitext",
                                                  "config": "wikitext-103-raw-v1", "split": "test", "revision": "main"}
    assert demo_config["forgetting"]["text"] == "builtin" and demo_config["forgetting"]["passages"] <= 42


def test_a_hub_dataset_gives_its_paragraphs_without_headings(tmp_path):
    """The hub path (config.yaml's WikiText), offline: a local dataset folder in WikiText's shape, one line per row."""
    folder = tmp_path / "wikitext"
    folder.mkdir()
    lines = ["", " = Valkyria Chronicles = \n", "", " Senjō no Valkyria is a tactical role @-@ playing game . \n",
             " = = Gameplay = = \n", " The game 's battles are turn @-@ based . \n", " It was well received . \n"]
    (folder / "test.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    source = {"name": "wiki", "hub": str(folder), "split": "test"}
    text = prepare_general_text({"text": source, "passages": 3, "max_length": 64}, tmp_path / "passages.json", seed=0)
    assert (text["name"], text["origin"], text["revision"]) == ("wiki", f"{folder}:test", None)
    drawn = sorted(p["text"] for p in json.loads((tmp_path / "passages.json").read_text())["passages"])
    assert drawn == ["It was well received .", "Senjō no Valkyria is a tactical role @-@ playing game .",
                     "The game 's battles are turn @-@ based ."]
