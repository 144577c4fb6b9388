"""prepare_data on local files written in the exact schemas of the three hub datasets."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from peftbench.data import normalize, prepare_data
from peftbench.errors import UserError


def alpaca_rows(n):
    return [{"instruction": f"Explain item number {i}.", "input": "" if i % 2 else f"context {i}",
             "output": f"Item {i} is an item.", "text": "ignored"} for i in range(n)]


def ultrachat_rows(n, offset=0):
    rows = []
    for i in range(offset, offset + n):
        prompt = f"Tell me about topic {i}."
        rows.append({"prompt": prompt, "prompt_id": f"{i:064x}", "messages": [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": f"Topic {i} is broad."},
            {"role": "user", "content": "And more?"}, {"role": "assistant", "content": f"More on {i}."}]})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def data_config(tmp_path, alpaca, ultrachat_train, ultrachat_test, max_length=128, n_train=6, n_test=3,
                n_validation=0):
    return {"max_length": max_length, "sources": [
        {"name": "alpaca", "format": "alpaca", "files": {"train": write_jsonl(tmp_path / "alpaca.jsonl", alpaca)},
         "train": {"split": "train", "n": n_train}, "validation": {"n": n_validation},
         "test": {"split": "train", "n": n_test}},
        {"name": "ultrachat", "format": "messages",
         "files": {"train_sft": write_jsonl(tmp_path / "uc_train.jsonl", ultrachat_train),
                   "test_sft": write_jsonl(tmp_path / "uc_test.jsonl", ultrachat_test)},
         "train": {"split": "train_sft", "n": n_train}, "validation": {"n": n_validation},
         "test": {"split": "test_sft", "n": n_test}},
    ]}


@pytest.mark.parametrize("row, fmt, reason", [
    ({"instruction": "Q", "input": ""}, "alpaca", "missing field"),
    ({"instruction": "Q", "input": "", "output": "   "}, "alpaca", "empty response"),
    ({"instruction": "Q", "input": 3, "output": "A"}, "alpaca", "non-string content"),
    ({"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}]}, "messages",
     "turns out of order"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]}, "messages",
     "empty response"),
    ({"messages": [{"role": "user", "content": ["Q"]}, {"role": "assistant", "content": "A"}]}, "messages",
     "non-string content"),
    ({"dataset": "x", "id": "1"}, "messages", "missing field"),
])
def test_bad_rows_are_dropped_with_a_reason(row, fmt, reason):
    assert normalize(row, fmt) == (None, reason)


def test_a_system_turn_is_kept_as_a_turn_and_a_trailing_question_is_cut():
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]}
    messages, reason = normalize(row, "messages")
    assert reason is None
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                        {"role": "assistant", "content": "A1"}]
    empty = {"messages": [{"role": "system", "content": " "}, *row["messages"][1:3]]}
    assert normalize(empty, "messages") == (messages[1:], None)


def test_the_data_format_version_is_a_param_of_the_data_rules():
    """A peftbench that writes data rows differently bumps FORMAT_VERSION: cached data is prepared again."""
    rules = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "data.smk").read_text()
    assert rules.count("data_format=DATA_FORMAT_VERSION") == 2


def test_alpaca_input_joins_the_instruction():
    messages, _ = normalize({"instruction": "Translate.", "input": "bonjour", "output": "hello"}, "alpaca")
    assert messages[0]["content"] == "Translate.\n\nbonjour"


def test_prepare_data_counts_drops_and_is_leak_free(tmp_path, model_dir):
    alpaca = alpaca_rows(12) + [{"instruction": "Bad", "input": "", "output": ""},
                                {"instruction": "Long " * 300, "input": "", "output": "x"}]
    uc_test = ultrachat_rows(4)
    # A planted leak: a train row whose prompt is a test prompt (answer differs).
    leak = json.loads(json.dumps(uc_test[0]))
    leak["messages"][-1]["content"] = "A different answer."
    uc_train = ultrachat_rows(8, offset=100) + [leak]
    cfg = data_config(tmp_path, alpaca, uc_train, uc_test, n_validation=2)
    manifest = prepare_data(cfg, model_dir, tmp_path / "out", seed=1)
    train, validation, test = ([json.loads(line) for line in (tmp_path / f"out/{split}.jsonl").read_text().splitlines()]
                               for split in ("train", "validation", "test"))
    assert len(train) == 12 and len(validation) == 4 and len(test) == 6
    prompts = lambda rows: {json.dumps(r["messages"][:-1]) for r in rows}  # noqa: E731
    assert not prompts(train) & prompts(test) and not prompts(validation) & (prompts(train) | prompts(test))
    alpaca_m = manifest["sources"]["alpaca"]
    assert alpaca_m["dropped"].get("empty response", 0) + alpaca_m["dropped"].get("longer than max_length", 0) <= 2
    assert alpaca_m["kept"] == {"train": 6, "validation": 2, "test": 3}
    uc = manifest["sources"]["ultrachat"]
    assert uc["kept"] == {"train": 6, "validation": 2, "test": 3}
    assert set(manifest["files"]) == {"train.jsonl", "validation.jsonl", "test.jsonl"}
    assert all(r["messages"][-1]["role"] == "assistant" for r in train + validation + test)


def test_the_test_split_written_alone_later_is_the_same_draw(tmp_path, model_dir):
    cfg = data_config(tmp_path, alpaca_rows(14), ultrachat_rows(9, offset=100), ultrachat_rows(4), n_validation=2)
    prepare_data(cfg, model_dir, tmp_path / "all", seed=1)
    manifest = prepare_data(cfg, model_dir, tmp_path / "out", seed=1, splits=("train", "validation"))
    assert not (tmp_path / "out/test.jsonl").exists()  # what the workflow has before rates are chosen
    assert manifest["test_sha256"] == hashlib.sha256((tmp_path / "all/test.jsonl").read_bytes()).hexdigest()
    prepare_data(cfg, model_dir, tmp_path / "out", seed=1, splits=("test",))
    for split in ("train", "validation", "test"):
        assert (tmp_path / f"out/{split}.jsonl").read_bytes() == (tmp_path / f"all/{split}.jsonl").read_bytes()
    # data that changed under the manifest gives another test draw: refused, not written
    (tmp_path / "out/test.jsonl").unlink()
    changed = data_config(tmp_path, alpaca_rows(14), ultrachat_rows(9, offset=100), ultrachat_rows(4, offset=500),
                          n_validation=2)
    with pytest.raises(UserError, match="the test draw differs from the one .* recorded .*: rerun prepare_data"):
        prepare_data(changed, model_dir, tmp_path / "out", seed=1, splits=("test",))
    assert not (tmp_path / "out/test.jsonl").exists()


def test_a_short_validation_draw_names_the_fix(tmp_path, model_dir):
    cfg = data_config(tmp_path, alpaca_rows(11), ultrachat_rows(12), ultrachat_rows(3, offset=70), n_validation=4)
    with pytest.raises(UserError, match="source alpaca: only 2 usable validation examples of 4 asked .*lower "
                                        "validation.n or train.n"):
        prepare_data(cfg, model_dir, tmp_path / "out")


def test_leaked_prompt_is_dropped_and_counted(tmp_path, model_dir):
    uc_test = ultrachat_rows(3)
    leak = json.loads(json.dumps(uc_test[1]))
    leak["messages"][-1]["content"] = "A different answer."
    cfg = data_config(tmp_path, alpaca_rows(9), ultrachat_rows(6, offset=50) + [leak], uc_test, n_train=6, n_test=3)
    manifest = prepare_data(cfg, model_dir, tmp_path / "out")
    assert manifest["sources"]["ultrachat"]["dropped"] == {"prompt also in test": 1}


def test_bad_rows_of_every_kind_are_counted(tmp_path, model_dir):
    # (Non-string content cannot reach here: Arrow gives a column one type; normalize() is tested above.)
    bad = [{"instruction": "E", "input": "", "output": " "}, {"instruction": "M", "input": ""},
           {"instruction": "", "input": "", "output": "x"}, {"instruction": "Long " * 300, "input": "", "output": "x"}]
    cfg = data_config(tmp_path, alpaca_rows(9) + bad, ultrachat_rows(6), ultrachat_rows(3, offset=70))
    manifest = prepare_data(cfg, model_dir, tmp_path / "out")
    assert manifest["sources"]["alpaca"]["dropped"] == {
        "empty response": 1, "missing field": 1, "empty prompt": 1, "longer than max_length": 1}


def test_shortfall_is_an_error_and_writes_nothing(tmp_path, model_dir):
    cfg = data_config(tmp_path, alpaca_rows(5), ultrachat_rows(6), ultrachat_rows(3, offset=70))
    with pytest.raises(UserError, match="source alpaca: only 2 usable train examples of 6 asked"):
        prepare_data(cfg, model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_same_config_gives_byte_identical_files_across_processes(tmp_path, model_dir):
    cfg = data_config(tmp_path, alpaca_rows(12), ultrachat_rows(8), ultrachat_rows(4, offset=70))
    outputs = []
    for run, hash_seed in enumerate(["1", "2"]):
        out = tmp_path / f"run{run}"
        subprocess.run([sys.executable, "-m", "peftbench", "prepare-data", "--data", json.dumps(cfg),
                        "--model-dir", str(model_dir), "--out", str(out), "--seed", "3"],
                       check=True, env={**__import__("os").environ, "PYTHONHASHSEED": hash_seed},
                       capture_output=True)
        outputs.append([(out / f).read_bytes() for f in ("train.jsonl", "test.jsonl", "manifest.json")])
    assert outputs[0] == outputs[1]


def test_builtin_demo_sources_follow_the_hub_schemas(tmp_path, model_dir, demo_config):
    manifest = prepare_data(demo_config["data"], model_dir, tmp_path / "out")
    assert {name: s["kept"] for name, s in manifest["sources"].items()} == {
        name: {"train": 32, "validation": 8, "test": 8} for name in ("alpaca", "tulu", "ultrachat")}


def write_hub_repository(root, repo_id, splits, readme=None):
    """A local folder laid out like the dataset's hub repository (data/<split>-*.parquet)."""
    import pandas as pd

    folder = root / repo_id
    (folder / "data").mkdir(parents=True)
    for split, rows in splits.items():
        pd.DataFrame(rows).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    if readme:
        (folder / "README.md").write_text(readme)
    return str(folder)


ULTRACHAT_README = """---
configs:
- config_name: default
  data_files:
  - split: train_sft
    path: data/train_sft-*
  - split: test_sft
    path: data/test_sft-*
---
"""


def test_study_sources_load_through_the_hub_code_path(tmp_path, model_dir, study_config):
    """The study config's three sources, each pointed at a local folder in its hub repository's layout and
    schema, go through the same datasets.load_dataset call as the hub ids (only the path differs)."""
    tulu = [{"dataset": "sharegpt", "id": f"sharegpt_{i}", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": f"Answer {i}."}]} for i in range(12)]
    tulu.append({"dataset": "oasst", "id": "bad", "messages": [{"role": "assistant", "content": "Hi"},
                                                               {"role": "user", "content": "Q"}]})
    local = {
        "tatsu-lab/alpaca": write_hub_repository(tmp_path, "tatsu-lab/alpaca", {"train": alpaca_rows(12)}),
        "allenai/tulu-v2-sft-mixture": write_hub_repository(tmp_path, "allenai/tulu-v2-sft-mixture",
                                                            {"train": tulu}),
        "HuggingFaceH4/ultrachat_200k": write_hub_repository(
            tmp_path, "HuggingFaceH4/ultrachat_200k",
            {"train_sft": ultrachat_rows(8), "test_sft": ultrachat_rows(4, offset=70)}, ULTRACHAT_README),
    }
    data = study_config["data"]
    for source in data["sources"]:
        source["hub"] = local[source["hub"]]
        source["train"]["n"], source["validation"], source["test"]["n"] = 6, {"n": 1}, 3
    manifest = prepare_data(dict(data, max_length=256), model_dir, tmp_path / "out")
    assert {n: s["kept"] for n, s in manifest["sources"].items()} == {
        n: {"train": 6, "validation": 1, "test": 3} for n in ("alpaca", "tulu", "ultrachat")}
    assert manifest["sources"]["tulu"]["dropped"] == {"turns out of order": 1}
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    tulu_first = next(r for r in rows if r["source"] == "tulu")["messages"][:2]
    assert tulu_first[0] == {"role": "system", "content": "Be brief."} and tulu_first[1]["role"] == "user"
    assert all(s["revision"] == "main" for s in manifest["sources"].values())  # local folders: as configured


def test_a_branch_revision_is_kept_when_the_hub_cannot_be_asked(monkeypatch):
    from peftbench.data import resolve_revision

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = {"name": "alpaca", "hub": "tatsu-lab/alpaca", "revision": "main"}
    assert resolve_revision(source) == "main"
    pinned = dict(source, revision="0" * 40)
    assert resolve_revision(pinned) == "0" * 40
