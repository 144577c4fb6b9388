"""Every bad input stops with one line that names the fix, and leaves nothing half-written.

Where each bad input is tested:

| bad input | what happens | test |
|---|---|---|
| unknown config key, wrong type, unknown method | `config error at <key>: ...` before anything runs | test_config.py::test_bad_config_names_the_key_in_one_line, test_workflow.py::test_bad_config_stops_the_workflow_with_one_line |
| a compared name without a variant, a variant without (or with an unknown) kind, an unknown setting of its kind | `config error at variants.galore: unknown setting 'r' (kind galore takes: ...)` | test_config.py::test_bad_config_names_the_key_in_one_line |
| an old-style config (`methods`, `method_settings`) | `config error: methods and method_settings are replaced by compare ... see docs/variants.md` | test_config.py::test_an_old_style_config_names_the_migration |
| model id not found (with or without a token) | `model X not found ...: check model.id ... or set HF_TOKEN` | test_hub_model_errors_name_the_fix |
| gated model, no token / a token without access | `model X is gated and no HF_TOKEN is set: accept its terms ... and set HF_TOKEN` | test_hub_model_errors_name_the_fix |
| hub model or dataset not cached, offline | `... connect to the internet or unset HF_HUB_OFFLINE` | test_hub_errors.py |
| malformed data rows | dropped, counted by reason in manifest.json | test_data.py::test_bad_rows_of_every_kind_are_counted, test_bad_rows_are_dropped_with_a_reason |
| a source left empty (empty file, or no usable row) | `source X: file ... is missing or empty` / `only 0 usable test examples ...` | test_empty_source_is_an_error, test_source_with_no_usable_row_is_an_error |
| test.n (or train.n) larger than the data | `only 12 usable test examples of 50 asked (split 'train' has 12 rows; ...): lower test.n ...`; for train, how many rows the test draw took | test_a_source_smaller_than_asked_names_the_split_that_ran_short |
| a malformed JSON line, a JSON file with a syntax error, a row that is not an object | `source X: file F line 5 is not valid JSON (...): fix or remove that line` | test_malformed_json_names_the_file_and_line |
| a byte that is not UTF-8 | `source X: file F line 4 is not UTF-8 text (byte 0xe9 at column 9): save the file as UTF-8` | test_non_utf8_byte_names_the_file_line_and_column |
| local model folder without tokenizer, weights or config; pickled weights only | `model.path X holds no *.safetensors weights ...: save it with model.save_pretrained(folder)` | test_incomplete_local_model_folder_is_refused, test_pickled_weights_are_named |
| hub model not cached, offline or not | `... connect to the internet or unset HF_HUB_OFFLINE` only when it is set, else `... or run once with internet access` | test_uncached_model_names_the_offline_switch_only_when_set |
| any step failing inside the workflow | the one-line fix on the terminal (and as the log's last line); an unexpected error's type and message, traceback in the log | test_with_a_log_file_only_the_fix_reaches_the_terminal, test_an_unexpected_error_reaches_the_terminal_as_one_line, test_workflow.py::test_a_failed_steps_fix_reaches_the_console |
| a data file or local model edited after a run | the dry run plans prepare_data (prepare_model) and everything after it | test_workflow.py::test_editing_a_data_file_or_the_local_model_reruns_what_depends_on_it |
| NaN or infinite loss | `loss is nan at step N: lower the learning rate ...`, no output | test_non_finite_loss_stops_and_names_the_step |
| NaN loss in a learning-rate sweep | not an error: the run stops, records `diverged_at_step`, and the sweep chooses among the others | test_tuning.py::test_a_diverging_sweep_point_is_recorded_and_a_final_run_stops |
| every rate of a sweep diverged | `variant X: every rate of its grid diverged ...: give lower rates (tuning.grids.X)` | test_tuning.py::test_a_sweep_where_every_rate_diverged_names_the_fix |
| `tuning` without validation data; a grid for a variant that does not train | `config error at tuning: ... give data.sources[].validation: {n: 100} (or set tuning: off)`; `config error at tuning.grids.base: not a trained variant` | test_tuning.py::test_bad_tuning_configs_name_the_fix |
| forgetting's general text missing or empty (a local `forgetting.text` file) | `forgetting.text: file F is missing or empty: give a text file with paragraphs separated by blank lines, a .jsonl file of {"text": ...} rows, or builtin`, no passages.json | test_forgetting.py::test_a_general_text_too_short_or_missing_names_the_fix |
| forgetting.passages larger than the text has | `forgetting.text X: only 42 usable passages, 500 asked: lower forgetting.passages or give a longer text`, no passages.json | test_forgetting.py::test_a_general_text_too_short_or_missing_names_the_fix |
| a bad `forgetting` section (unknown key, a text that is neither builtin, a file nor a hub dataset) | `config error at forgetting.text: unknown key ('confg' was unexpected)` | test_forgetting.py::test_a_bad_forgetting_config_names_the_key |
| a target after `--configfile` (read as a config file) | `X was given as a config file (--configfile takes every word after it): put targets before --configfile, or write --configfile=FILE before the target` | test_readme_commands.py::test_a_target_read_as_a_config_file_fails_with_one_line |
| general-text losses of different passages compared | `lora seed 0 measured other general text than base: rerun general_loss on the same passages.json and max_length` | test_forgetting.py::test_runs_on_other_passages_are_refused |
| validation.n larger than what train leaves | `source X: only 2 usable validation examples of 4 asked (...): lower validation.n or train.n` | test_data.py::test_a_short_validation_draw_names_the_fix |
| data changed between prepare_data and the later test split | `the test draw differs from the one manifest.json recorded (...): rerun prepare_data`, no test split written | test_data.py::test_the_test_split_written_alone_later_is_the_same_draw |
| CUDA out of memory in training | `... set variants.NAME.micro_batch_tokens (e.g. 2048) or training.gradient_checkpointing: true (the same results, less memory), or lower training.batch_size or data.max_length` | test_out_of_memory_in_training_is_one_line |
| CUDA out of memory in generation | `... lower generation.batch_size ... or generation.max_new_tokens` | test_out_of_memory_in_generation_names_the_fix |
| checkpoint folder from another config | warning, stale checkpoints removed, training starts afresh | test_checkpoint.py::test_checkpoints_of_other_settings_are_removed, test_checkpoint_copied_from_another_config_is_ignored |
| corrupted checkpoint | warning, resumes from the one before or from scratch | test_checkpoint.py::test_corrupted_checkpoint_falls_back_to_the_one_before, test_unreadable_checkpoints_restart_from_scratch |
| a model without a chat template (a base model) | `X has no chat template: set model.chat_template to a built-in (gemma) or a .jinja file`, at prepare_model, no model folder | test_a_chat_template_that_cannot_be_trained_on_stops_prepare_model |
| a chat template whose earlier turns change when a turn is added; one that ends answers with no special token | `X's chat template re-renders a conversation differently once the answer is added: set model.chat_template to a template whose turns only append` / `... ends an answer with no special token: ...`, at prepare_model, no model folder | test_a_chat_template_that_cannot_be_trained_on_stops_prepare_model |
| an unknown `model.chat_template` (neither a built-in name nor a .jinja file) | `model.chat_template 'llama9' is neither a built-in template (gemma) nor a .jinja file: fix model.chat_template` | test_chat_format.py::test_an_unknown_template_setting_is_refused_in_one_line |
| HF token | never in any log, output or message | test_kill_resume.py::test_hf_token_never_written, test_hub_model_errors_name_the_fix, test_hf_token_is_not_printed_when_the_hub_fails |
"""
import importlib
import json
import os
import subprocess
import sys

import huggingface_hub
import huggingface_hub.errors as hub_errors
import pytest
import torch

import peftbench.generate as generate_module
import peftbench.train as train_module
from peftbench import cli
from peftbench.data import prepare_data
from peftbench.errors import UserError
from peftbench.model import prepare_model

FAKE_TOKEN = "hf_peftbenchFakeToken0123456789abcdef"
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "lr": 1e-2}
TRAINING = {"epochs": 1, "batch_size": 2, "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "gradient_checkpointing": False, "trainable_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "trainable_tokens_lr": 1e-2, "log_every": 1, "checkpoint_every": 1}


def hub_error(kind):
    """A huggingface_hub error as snapshot_download raises it (they carry the HTTP response)."""
    http = importlib.import_module(hub_errors.Response.__module__.split(".")[0])
    response = hub_errors.Response(401, request=http.Request("GET", "https://huggingface.co/api/models/x"))
    return getattr(hub_errors, kind)("401 Client Error", response=response)


@pytest.mark.parametrize("kind, token, message", [
    ("RepositoryNotFoundError", None, "model google/gemma-3-1b-it not found, or private and no HF_TOKEN is set: "
                                      "check model.id in the config, or set HF_TOKEN"),
    ("RepositoryNotFoundError", FAKE_TOKEN, "model google/gemma-3-1b-it not found: check model.id in the config"),
    ("GatedRepoError", None, "model google/gemma-3-1b-it is gated and no HF_TOKEN is set: accept its terms on "
                             "huggingface.co/google/gemma-3-1b-it and set HF_TOKEN (environment or .env)"),
    ("GatedRepoError", FAKE_TOKEN, "model google/gemma-3-1b-it is gated and your HF_TOKEN has no access: accept "
                                   "its terms on huggingface.co/google/gemma-3-1b-it with the account of that token"),
])
def test_hub_model_errors_name_the_fix(kind, token, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    seen = {}

    def snapshot_download(repo_id, **kwargs):
        seen["token"] = kwargs.get("token")
        raise hub_error(kind)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = {"source": "hub", "id": "google/gemma-3-1b-it", "revision": "main", "dtype": "bfloat16"}
    with pytest.raises(UserError) as error:
        prepare_model(model, tmp_path / "model")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert FAKE_TOKEN not in str(error.value)
    assert seen["token"] == token  # the token reaches the hub, and only the hub
    assert not (tmp_path / "model").exists()


def test_hf_token_is_not_printed_when_the_hub_fails(tmp_path):
    model = {"source": "hub", "id": "google/gemma-3-1b-it", "revision": "main", "dtype": "bfloat16"}
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-m", "peftbench", "prepare-model", "--model", json.dumps(model),
                             "--out", str(tmp_path / "model")], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "error: model google/gemma-3-1b-it" in result.stderr
    assert FAKE_TOKEN not in result.stdout + result.stderr


def alpaca_source(path, n=2):
    return {"name": "alpaca", "format": "alpaca", "files": {"train": str(path)},
            "train": {"split": "train", "n": n}, "test": {"split": "train", "n": 1}}


def test_empty_source_is_an_error(tmp_path, model_dir):
    empty = tmp_path / "alpaca.jsonl"
    empty.write_text("")
    fix = r"^source alpaca: file .*alpaca.jsonl is missing or empty: fix its files: entry$"
    with pytest.raises(UserError, match=fix):
        prepare_data({"max_length": 128, "sources": [alpaca_source(empty)]}, model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_source_with_no_usable_row_is_an_error(tmp_path, model_dir):
    bad = tmp_path / "alpaca.jsonl"
    bad.write_text("".join(json.dumps({"instruction": f"Q{i}", "input": "", "output": " "}) + "\n" for i in range(4)))
    with pytest.raises(UserError) as error:
        prepare_data({"max_length": 128, "sources": [alpaca_source(bad)]}, model_dir, tmp_path / "out")
    message = str(error.value)
    assert message.startswith("source alpaca: only 0 usable test examples of 1 asked (split 'train' has 4 rows; "
                              "{'empty response'")
    assert message.endswith("lower test.n or raise data.max_length")
    assert not (tmp_path / "out").exists()


def alpaca_rows(n):
    return [json.dumps({"instruction": f"Name function {i}.", "input": "", "output": f"It is f{i}."}) for i in range(n)]


@pytest.mark.parametrize("train_n, test_n, message", [
    (4, 50, "only 12 usable test examples of 50 asked (split 'train' has 12 rows; {} dropped): lower test.n or "
            "raise data.max_length"),
    (10, 5, "only 7 usable train examples of 10 asked (split 'train' has 12 rows, 5 of them drawn for test; {} "
            "dropped): lower train.n (or test.n) or raise data.max_length"),
])
def test_a_source_smaller_than_asked_names_the_split_that_ran_short(train_n, test_n, message, tmp_path, model_dir):
    """test.n larger than the data blames test.n (the test draw comes first); a train draw left short by the
    test draw says how many rows the test took."""
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(alpaca_rows(12)) + "\n")
    source = {**alpaca_source(path, n=train_n), "test": {"split": "train", "n": test_n}}
    with pytest.raises(UserError) as error:
        prepare_data({"max_length": 128, "sources": [source]}, model_dir, tmp_path / "out")
    assert str(error.value) == "source alpaca: " + message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", lambda rows: rows[:4] + ['{"instruction": "x", "output": "y",'] + rows[4:],
     "file {path} line 5 is not valid JSON (Expecting property name enclosed in double quotes at column 36): "
     "fix or remove that line"),
    ("bad.json", lambda rows: ["["] + [r + "," for r in rows[:3]] + ['{"instruction": "x" "output": "y"}', "]"],
     "file {path} line 5 is not valid JSON (Expecting ',' delimiter at column 21): fix that line"),
    ("bad.jsonl", lambda rows: rows[:2] + ['["a list", "not a row"]'] + rows[2:],
     "file {path} line 3 is a JSON list, not an object: one row per line"),
])
def test_malformed_json_names_the_file_and_line(name, content, message, tmp_path, model_dir):
    path = tmp_path / name
    path.write_text("\n".join(content(alpaca_rows(8))) + "\n")
    with pytest.raises(UserError) as error:
        prepare_data({"max_length": 128, "sources": [alpaca_source(path)]}, model_dir, tmp_path / "out")
    assert str(error.value) == "source alpaca: " + message.format(path=path)
    assert not (tmp_path / "out").exists()


def test_non_utf8_byte_names_the_file_line_and_column(tmp_path, model_dir):
    path = tmp_path / "latin1.jsonl"
    rows = alpaca_rows(6)
    rows[3] = rows[3].replace("Name", "Nam\u00e9")
    path.write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    with pytest.raises(UserError) as error:
        prepare_data({"max_length": 128, "sources": [alpaca_source(path)]}, model_dir, tmp_path / "out")
    column = rows[3].index("\u00e9") + 1
    assert str(error.value) == (f"source alpaca: file {path} line 4 is not UTF-8 text (byte 0xe9 at column {column}): "
                                "save the file as UTF-8")


@pytest.mark.parametrize("remove, message", [
    (["tokenizer.json"], "holds no tokenizer (tokenizer.json or tokenizer.model or tiktoken.model): save it with "
                         "tokenizer.save_pretrained(folder)"),
    (["model.safetensors"], "holds no *.safetensors weights: save it with model.save_pretrained(folder)"),
    (["config.json"], "holds no config.json: point it at a Hugging Face model folder"),
])
def test_incomplete_local_model_folder_is_refused(remove, message, tmp_path, model_dir):
    import shutil

    source = json.loads((model_dir / "model.json").read_text())["path"]
    folder = tmp_path / "copied-model"
    shutil.copytree(source, folder)
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(UserError) as error:
        prepare_model({"source": "local", "path": str(folder), "dtype": "bfloat16"}, tmp_path / "model")
    assert str(error.value) == f"model.path {folder} {message}"
    assert not (tmp_path / "model").exists()


def test_pickled_weights_are_named(tmp_path, model_dir):
    import shutil

    folder = tmp_path / "copied-model"
    shutil.copytree(json.loads((model_dir / "model.json").read_text())["path"], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"holds no \*.safetensors weights \(found pytorch_model.bin: peftbench "
                                        r"loads safetensors only, never pickles\)"):
        prepare_model({"source": "local", "path": str(folder), "dtype": "bfloat16"}, tmp_path / "model")


@pytest.mark.parametrize("offline, fix", [("1", "unset HF_HUB_OFFLINE"), (None, "run once with internet access")])
def test_uncached_model_names_the_offline_switch_only_when_set(offline, fix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def snapshot_download(repo_id, **kwargs):
        raise hub_errors.LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(UserError) as error:
        prepare_model({"source": "hub", "id": "google/gemma-3-1b-it", "revision": "main", "dtype": "bfloat16"},
                      tmp_path / "model")
    assert str(error.value) == ("model google/gemma-3-1b-it is not in the local cache and the hub cannot be reached: "
                                f"connect to the internet or {fix}")


def test_with_a_log_file_only_the_fix_reaches_the_terminal(tmp_path):
    """What a workflow rule runs: `peftbench <step> ... --log FILE`. The log gets everything, the terminal
    (where Snakemake shows a job's stderr) gets the one line that names the fix."""
    log = tmp_path / "logs" / "prepare_model.log"
    model = {"source": "local", "path": str(tmp_path / "nowhere"), "dtype": "bfloat16"}
    result = subprocess.run([sys.executable, "-m", "peftbench", "prepare-model", "--model", json.dumps(model),
                             "--out", str(tmp_path / "model"), "--log", str(log)], capture_output=True, text=True)
    line = f"peftbench prepare-model: error: model.path {tmp_path / 'nowhere'} holds no config.json: point it at a " \
           "Hugging Face model folder"
    assert result.returncode == 1 and result.stderr == line + "\n" and result.stdout == ""
    assert log.read_text().strip().splitlines()[-1] == line


def test_an_unexpected_error_reaches_the_terminal_as_one_line(tmp_path):
    log = tmp_path / "score.log"
    result = subprocess.run([sys.executable, "-m", "peftbench", "score", "--generations", str(tmp_path / "none.jsonl"),
                             "--variant", "base", "--out", str(tmp_path / "s.json"), "--examples",
                             str(tmp_path / "e.json"), "--log", str(log)], capture_output=True, text=True)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("peftbench score: unexpected FileNotFoundError: ")
    assert f"(traceback in {log})" in result.stderr and "Traceback" in log.read_text()


@pytest.fixture()
def train_path(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What does function {i} return?"},
                          {"role": "assistant", "content": f"It returns {i}."}]} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_argv(model_dir, train_path, out, checkpoints):
    return ["train", "--variant", "my-lora", "--kind", "lora", "--model-dir", str(model_dir), "--train", str(train_path),
            "--settings", json.dumps(LORA), "--training", json.dumps(TRAINING), "--device", "cpu",
            "--out", str(out), "--checkpoints", str(checkpoints)]


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_non_finite_loss_stops_and_names_the_step(poison, model_dir, train_path, tmp_path, monkeypatch, capsys):
    """At step 3 a trained weight turns NaN (a real NaN loss), or the loss itself is infinite."""
    real_step, calls = train_module.training_step, []

    def step(model, *args):
        calls.append(1)
        if len(calls) == 3:
            if poison == "inf":
                return torch.tensor(float("inf")), 1
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
        return real_step(model, *args)

    monkeypatch.setattr(train_module, "training_step", step)
    assert cli.main(train_argv(model_dir, train_path, tmp_path / "out", tmp_path / "ckpt")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"peftbench train: error: loss is {poison} at step 3: lower the learning rate "
                    "(variants.my-lora.lr) or check the data")
    assert not (tmp_path / "out").exists()


def test_out_of_memory_in_training_is_one_line(model_dir, train_path, tmp_path, monkeypatch, capsys):
    def step(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_module, "training_step", step)
    assert cli.main(train_argv(model_dir, train_path, tmp_path / "out", tmp_path / "ckpt")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("peftbench train: error: CUDA out of memory at step 1: set variants.my-lora.micro_batch_tokens "
                    "(e.g. 2048) or training.gradient_checkpointing: true (the same results, less memory), or lower "
                    "training.batch_size or data.max_length")
    assert not (tmp_path / "out").exists()
    # a variant already in micro-batches is told to halve them
    argv = train_argv(model_dir, train_path, tmp_path / "out", tmp_path / "ckpt") + ["--knobs",
                                                                                      '{"micro_batch_tokens": 4096}']
    assert cli.main(argv) == 1
    assert "set variants.my-lora.micro_batch_tokens (now 4096: try 2048) or" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_of_memory_in_generation_names_the_fix(model_dir, tmp_path, monkeypatch):
    test_path = tmp_path / "test.jsonl"
    rows = [{"id": f"a-{i}", "source": "a", "messages": [{"role": "user", "content": f"Q{i}"},
                                                          {"role": "assistant", "content": "A"}]} for i in range(2)]
    test_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def greedy_answers(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(generate_module, "greedy_answers", greedy_answers)
    with pytest.raises(UserError) as error:
        generate_module.generate("base", model_dir, None, test_path, {}, {"max_new_tokens": 4, "batch_size": 64},
                                 tmp_path / "generations.jsonl", device="cpu")
    assert str(error.value) == ("CUDA out of memory generating prompts 0-2: lower generation.batch_size "
                                "(0 sizes it from free memory) or generation.max_new_tokens")
    assert not (tmp_path / "generations.jsonl").exists()


# a template whose first line counts the turns (earlier text changes as turns are added), and one that ends an
# answer with plain text: neither can give each answer's tokens by rendering turn by turn
COUNTING = ("{{- messages | length }} turns\n{%- for m in messages -%}{{- m['role'] + ': ' + m['content'] + '<end_of_turn>' -}}"
            "{%- endfor -%}{%- if add_generation_prompt -%}{{- 'model: ' -}}{%- endif -%}")
PLAIN_END = ("{%- for m in messages -%}{{- m['role'] + ': ' + m['content'] + ' END ' -}}{%- endfor -%}"
             "{%- if add_generation_prompt -%}{{- 'assistant: ' -}}{%- endif -%}")


@pytest.mark.parametrize("template, message", [
    (None, "has no chat template: set model.chat_template to a built-in (gemma) or a .jinja file"),
    (COUNTING, "'s chat template renders a conversation differently once the answer is added: set "
               "model.chat_template to a template whose turns only append"),
    (PLAIN_END, "'s chat template ends an answer with no special token: set model.chat_template to one that "
                "closes each turn with one"),
])
def test_a_chat_template_that_cannot_be_trained_on_stops_prepare_model(template, message, tmp_path, model_dir):
    """Checked when the model is prepared, before any data is read: one line, no model folder."""
    import shutil

    folder = tmp_path / "copied-model"
    shutil.copytree(json.loads((model_dir / "model.json").read_text())["path"], folder)
    if template is None:
        (folder / "chat_template.jinja").unlink()
    else:
        (folder / "chat_template.jinja").write_text(template)
    with pytest.raises(UserError) as error:
        prepare_model({"source": "local", "path": str(folder), "dtype": "bfloat16"}, tmp_path / "model")
    assert str(error.value) == f"{folder}{' ' if template is None else ''}{message}"
    assert not (tmp_path / "model").exists()
