"""Tests of the builtin offline demo data: schemas, sizes, uniqueness and byte-for-byte determinism."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftbench import demo_data
from peftbench.demo_data import ALPACA_INTRO, ALPACA_WITH_INPUT, MAX_MESSAGE_CHARS, SYSTEM_PROMPT

SRC_DIR = Path(__file__).resolve().parents[1] / "src"
N_ROWS = 300  # each source must be able to give at least this many


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{source: {split: rows}} for every source at N_ROWS rows, plus the folders they were written to."""
    rows, dirs = {}, {}
    for source in demo_data.SOURCES:
        dirs[source] = tmp_path_factory.mktemp(source)
        paths = demo_data.write_demo_source(source, dirs[source], N_ROWS, seed=0)
        assert all(path == dirs[source] / f"{split}.jsonl" for split, path in paths.items())
        rows[source] = {split: read_jsonl(path) for split, path in paths.items()}
    return rows, dirs


def check_messages(messages, allow_system):
    assert isinstance(messages, list) and messages
    for message in messages:
        assert set(message) == {"role", "content"}
        assert isinstance(message["role"], str) and isinstance(message["content"], str) and message["content"]
    if allow_system and messages[0]["role"] == "system":
        assert messages[0]["content"] == SYSTEM_PROMPT
        messages = messages[1:]
    # alternating user/assistant, ending with the assistant
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
    assert len(messages) % 2 == 0
    return len(messages) // 2


def test_split_sizes(written):
    rows, dirs = written
    assert {split: len(r) for split, r in rows["alpaca"].items()} == {"train": N_ROWS}
    assert {split: len(r) for split, r in rows["tulu"].items()} == {"train": N_ROWS}
    assert {split: len(r) for split, r in rows["ultrachat"].items()} == {"train_sft": N_ROWS, "test_sft": N_ROWS // 3}
    for folder in dirs.values():  # nothing but the split files: no temp files left behind
        assert sorted(p.name for p in folder.iterdir()) in (["train.jsonl"], ["test_sft.jsonl", "train_sft.jsonl"])


def test_small_ultrachat_test_split(tmp_path):
    paths = demo_data.write_demo_source("ultrachat", tmp_path, 5)
    assert len(read_jsonl(paths["train_sft"])) == 5
    assert len(read_jsonl(paths["test_sft"])) == 8


def test_alpaca_schema(written):
    rows = written[0]["alpaca"]["train"]
    for row in rows:
        assert list(row) == ["instruction", "input", "output", "text"]
        assert all(isinstance(value, str) for value in row.values())
        assert row["instruction"] and row["output"]
        intro = ALPACA_INTRO.format(ALPACA_WITH_INPUT if row["input"] else "")
        middle = f"### Input:\n{row['input']}\n\n" if row["input"] else ""
        assert row["text"] == f"{intro}### Instruction:\n{row['instruction']}\n\n{middle}### Response:\n{row['output']}"
    assert rows[0]["text"].startswith("Below is an instruction that describes a task. Write a response")
    with_input = sum(bool(row["input"]) for row in rows)
    assert 0 < with_input < len(rows)  # both prompt variants occur


def test_tulu_schema(written):
    rows = written[0]["tulu"]["train"]
    for row in rows:
        assert list(row) == ["dataset", "id", "messages"]
        assert row["dataset"] == "peftbench_pydoc" and isinstance(row["id"], str)
        assert check_messages(row["messages"], allow_system=True) == 1
    assert len({row["id"] for row in rows}) == len(rows)
    with_system = sum(row["messages"][0]["role"] == "system" for row in rows)
    assert 0 < with_system < len(rows) // 2  # a minority


def test_ultrachat_schema(written):
    for split, rows in written[0]["ultrachat"].items():
        exchanges = []
        for row in rows:
            assert list(row) == ["prompt", "prompt_id", "messages"]
            assert row["prompt"] == row["messages"][0]["content"]
            assert row["prompt_id"] == hashlib.sha256(row["prompt"].encode("utf-8")).hexdigest()
            exchanges.append(check_messages(row["messages"], allow_system=False))
        assert min(exchanges) >= 2 and max(exchanges) <= 3
    all_exchanges = [len(r["messages"]) // 2 for rows in written[0]["ultrachat"].values() for r in rows]
    assert {2, 3} <= set(all_exchanges)


def user_prompts(source, rows):
    if source == "alpaca":
        return [(row["instruction"], row["input"]) for row in rows]
    return [next(m["content"] for m in row["messages"] if m["role"] == "user") for row in rows]


def test_no_duplicate_prompts(written):
    for source, splits in written[0].items():
        for split, rows in splits.items():
            prompts = user_prompts(source, rows)
            assert len(set(prompts)) == len(prompts), (source, split)
    ultrachat = written[0]["ultrachat"]
    train = set(user_prompts("ultrachat", ultrachat["train_sft"]))
    assert train.isdisjoint(user_prompts("ultrachat", ultrachat["test_sft"]))


def test_messages_are_short(written):
    for source, splits in written[0].items():
        for rows in splits.values():
            for row in rows:
                texts = [row["instruction"], row["input"], row["output"]] if source == "alpaca" \
                    else [m["content"] for m in row["messages"]]
                assert max(map(len, texts)) <= MAX_MESSAGE_CHARS


def test_rows_vary(written):
    # the first rows use many different callables and templates, not one item over and over
    outputs = [row["output"] for row in written[0]["alpaca"]["train"][:50]]
    assert len(set(outputs)) >= 45
    instructions = {row["instruction"].split("`")[0] for row in written[0]["alpaca"]["train"]}
    assert len(instructions) >= 5


def run_cli(source, out_dir, hash_seed):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")]),
               PYTHONHASHSEED=str(hash_seed))  # a different hash seed: output must not depend on hash()
    subprocess.run([sys.executable, "-m", "peftbench.demo_data", "--source", source, "--out-dir", str(out_dir),
                    "--rows", "120", "--seed", "3"], check=True, env=env, capture_output=True)
    return {p.name: p.read_bytes() for p in sorted(Path(out_dir).iterdir())}


@pytest.mark.parametrize("source", demo_data.SOURCES)
def test_byte_identical_across_processes(source, tmp_path):
    first = run_cli(source, tmp_path / "a", hash_seed=1)
    second = run_cli(source, tmp_path / "b", hash_seed=2)
    assert first and first == second
    # in-process writes agree with the CLI too
    demo_data.write_demo_source(source, tmp_path / "c", 120, seed=3)
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "c").iterdir())} == first


def test_seed_changes_rows(tmp_path):
    a = demo_data.write_demo_source("tulu", tmp_path / "a", 50, seed=0)["train"].read_bytes()
    b = demo_data.write_demo_source("tulu", tmp_path / "b", 50, seed=1)["train"].read_bytes()
    assert a != b


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown demo source"):
        demo_data.write_demo_source("dolly", tmp_path, 10)
    with pytest.raises(ValueError, match="distinct rows"):
        demo_data.write_demo_source("ultrachat", tmp_path, 100_000)
    with pytest.raises(ValueError):
        demo_data.write_demo_source("alpaca", tmp_path, 0)
    assert list(tmp_path.iterdir()) == []  # nothing written on failure
