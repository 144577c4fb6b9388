"""prepare_data: fetch every configured source, normalize it to chat messages, drop bad rows (counted),
and draw a deterministic, leak-free train/validation/test sample.

Sources come from the Hugging Face hub (`hub:`), from local files (`files:` split -> .json/.jsonl/.parquet)
or from the builtin offline demo set (`builtin:`, made by demo_data.py). All go through
datasets.load_dataset, so the same code serves all three. Two formats: `alpaca` (instruction, input,
output) and `messages` (a list of {role, content}, as in tulu-v2 and ultrachat_200k).

Determinism: rows are visited in the order of a seeded sha256 of their content, never of file order or
Python's hash, so the same config gives byte-identical train, validation and test files on any machine.
"""
import argparse
import hashlib
import json
import logging
import re
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from peftbench.chat import encode_chats, split_prompt_reference
from peftbench.io import jsonl_sha256, read_json, write_json, write_jsonl
from peftbench.errors import UserError
from peftbench.model import load_tokenizer

log = logging.getLogger(__name__)
ROLES = ("user", "assistant")
# The data step's row format: bumped whenever prepare_data writes rows differently, so cached data made by an
# older peftbench is prepared again (the rules pass it as a param). 2: system turns kept as turns.
FORMAT_VERSION = 2


# ----------------------------------------------------------------------------- loading

def load_split(source: dict, split: str, cache_dir: Path):
    """One split of a source as a datasets.Dataset."""
    import datasets

    if "builtin" in source:
        from peftbench.demo_data import write_demo_source

        # Enough rows that the sample never runs short after drops; ultrachat writes a third to test_sft.
        wanted = source["train"]["n"] + source.get("validation", {}).get("n", 0) + source["test"]["n"]
        rows = 2 * wanted + 8
        files = write_demo_source(source["builtin"], cache_dir / source["name"], rows)
        return datasets.load_dataset("json", data_files={split: str(files[split])}, split=split)
    if "files" in source:
        if split not in source["files"]:
            raise UserError(f"source {source['name']}: no file for split {split!r}: add it under files:")
        path = source["files"][split]
        if not Path(path).is_file() or Path(path).stat().st_size == 0:  # datasets would raise StopIteration
            raise UserError(f"source {source['name']}: file {path} is missing or empty: fix its files: entry")
        kind = "parquet" if path.endswith(".parquet") else "json"
        bad_text = kind == "json" and not_utf8(path)  # pyarrow would load it and fail later, row unknown
        if bad_text:
            raise UserError(f"source {source['name']}: {bad_text}")
        try:
            return datasets.load_dataset(kind, data_files={split: path}, split=split)
        except Exception as error:  # datasets names neither the file nor the line: find them
            raise UserError(f"source {source['name']}: {why_unreadable(path, kind, error)}") from None
    return _load_hub(source, split)


def not_utf8(path):
    """None for UTF-8 text, else one line naming the line and column of the first bad byte."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError as bad:
        line = data[: bad.start].count(b"\n") + 1
        column = bad.start - (data.rfind(b"\n", 0, bad.start) + 1) + 1
        return (f"file {path} line {line} is not UTF-8 text (byte 0x{data[bad.start]:02x} at column {column}): "
                "save the file as UTF-8")


def why_unreadable(path, kind, error) -> str:
    """One line saying where a local data file is broken and how to fix it. Only called once
    datasets has failed, so the common path reads each file once."""
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    if kind == "parquet":
        return f"file {path} is not a readable parquet file ({cause}): rewrite it, e.g. with pandas.to_parquet"
    text = Path(path).read_text(encoding="utf-8")  # checked before loading: not_utf8
    if text.lstrip().startswith("["):  # one JSON document: an array of rows
        try:
            json.loads(text)
        except json.JSONDecodeError as bad:
            return f"file {path} line {bad.lineno} is not valid JSON ({bad.msg} at column {bad.colno}): fix that line"
    else:  # JSON lines: one row per line
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as bad:
                return (f"file {path} line {number} is not valid JSON ({bad.msg} at column {bad.colno}): "
                        "fix or remove that line")
            if not isinstance(row, dict):
                return f"file {path} line {number} is a JSON {type(row).__name__}, not an object: one row per line"
    return (f"file {path} could not be read as JSON rows ({cause}): give every row the same fields "
            "with the same types")


def resolve_revision(source):
    """The commit the configured revision names now, so that both splits come from one commit and the
    manifest says which; None for a local dataset folder, or offline (the cache then decides)."""
    revision = source.get("revision")
    if Path(source["hub"]).is_dir() or (revision and re.fullmatch(r"[0-9a-f]{40}", revision)):
        return revision
    from huggingface_hub import HfApi

    from peftbench.credentials import hf_token

    try:
        commit = HfApi().dataset_info(source["hub"], revision=revision, token=hf_token()).sha
    except Exception:  # offline, unreachable, gated or unknown: load_dataset then names the cause and the fix
        return revision
    log.warning("source %s: revision %r is a branch; resolved to %s. Pin it (its revision: in the config, "
                "data.sources[] or forgetting.text) for data that cannot change under you", source["name"], revision,
                commit)
    return commit


def _load_hub(source, split):
    import datasets

    from peftbench.credentials import hf_token

    name = source["hub"]
    try:
        # `config`: a dataset's named configuration (forgetting's wikitext-103-raw-v1); data sources have none
        return datasets.load_dataset(name, source.get("config"), revision=source.get("revision"), split=split,
                                     token=hf_token())
    except Exception as error:  # datasets wraps hub errors in several types; name the fix by the cause
        text = str(error).lower()
        if "gated" in text or "401" in text or "403" in text:
            raise UserError(f"dataset {name} is gated: accept its terms on huggingface.co/datasets/{name} "
                            "and set HF_TOKEN") from None
        if "doesn't exist" in text or "not found" in text:
            raise UserError(f"dataset {name} (split {split}) not found: check data.sources in the config") from None
        if isinstance(error, ConnectionError) or "offline" in text or "couldn't reach" in text:
            raise UserError(f"dataset {name} is not cached and the hub cannot be reached: connect to the "
                            "internet, or run once online so HF_HUB_OFFLINE=1 finds it in the cache") from None
        raise


# ----------------------------------------------------------------------------- normalization

def normalize(row: dict, fmt: str):
    """(messages, None) for a usable row, (None, reason) for a dropped one."""
    if fmt == "alpaca":
        fields = [row.get(k) for k in ("instruction", "input", "output")]
        if fields[0] is None or fields[2] is None:
            return None, "missing field"
        if not all(isinstance(f, str) for f in fields if f is not None):
            return None, "non-string content"
        instruction, extra, output = fields[0].strip(), (fields[1] or "").strip(), fields[2].strip()
        if not instruction:
            return None, "empty prompt"
        if not output:
            return None, "empty response"
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}], None

    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "missing field"
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
               for m in messages):
        return None, "non-string content"
    messages = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    # A system turn stays a turn of its own: the model's chat format keeps it, or folds it into the first
    # user turn where the template has no system role (chat_format.ChatFormat.prepare). An empty one says nothing.
    system = [messages[0]] if messages[0]["role"] == "system" and messages[0]["content"] else []
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns or [m["role"] for m in turns] != [ROLES[i % 2] for i in range(len(turns))]:
        return None, "turns out of order"
    if turns[-1]["role"] != "assistant":
        turns = turns[:-1]  # a trailing unanswered question teaches nothing
        if not turns:
            return None, "turns out of order"
    messages = system + turns
    if any(not m["content"] for m in messages if m["role"] == "assistant"):
        return None, "empty response"
    if any(not m["content"] for m in messages if m["role"] == "user"):
        return None, "empty prompt"
    return messages, None


def prompt_key(messages) -> str:
    """Exact identity of a test prompt: every turn before the last answer."""
    prompt, _ = split_prompt_reference(messages)
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def loose_key(messages) -> str:
    """Identity up to case, punctuation and spacing: catches near-duplicate prompts."""
    prompt, _ = split_prompt_reference(messages)
    text = " ".join(m["content"] for m in prompt).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


# ----------------------------------------------------------------------------- sampling

def seeded_order(dataset, source_name, seed):
    """Row indices sorted by a seeded hash of each row's content (stable across machines and file order)."""
    keyed = []
    for index, row in enumerate(dataset):
        content = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{seed}\0{source_name}\0{content}".encode()).hexdigest()
        keyed.append((digest, index))
    keyed.sort()
    return keyed


def draw(dataset, source, seed, tokenizer, max_length, n_wanted, dropped, lengths, held_out=None, visited=None):
    """Walk the rows in seeded order; keep the first n_wanted usable rows. `held_out` (the test draw)
    removes the rows it visited (kept or dropped: counted once) and, as a leak, any other row with one of
    its prompts. Every visited row index is added to `visited`."""
    kept, seen = [], set(held_out["prompts"]) if held_out else set()
    skip = held_out["indices"] if held_out else set()
    visited = set() if visited is None else visited
    order = [(digest, index) for digest, index in seeded_order(dataset, source["name"], seed) if index not in skip]
    normalized, token_lengths = {}, {}  # by row index: filled a chunk of rows ahead of the walk

    def look_ahead(position):
        """Normalize the next rows of the walk and tokenize the usable ones in one batch (the tokenizer splits
        a batch over the CPU's cores): about twice as many as are still wanted, at least 64."""
        chunk = [index for _, index in order[position : position + min(4096, max(64, 2 * (n_wanted - len(kept))))]]
        for index in chunk:
            normalized[index] = normalize(dataset[index], source["format"])
        usable = [index for index in chunk if normalized[index][0] is not None]
        for index, (ids, _) in zip(usable, encode_chats(tokenizer, [normalized[i][0] for i in usable])):
            token_lengths[index] = len(ids)

    for position, (digest, index) in enumerate(order):
        if len(kept) == n_wanted:
            break
        visited.add(index)
        if index not in normalized:
            look_ahead(position)
        messages, reason = normalized.pop(index)
        if messages is None:
            dropped[reason] += 1
            continue
        key = prompt_key(messages)
        if key in seen:
            dropped[held_out.get("label", "prompt also in test") if held_out and key in held_out["prompts"]
                    else "duplicate prompt"] += 1
            continue
        n_tokens = token_lengths.pop(index)
        if n_tokens > max_length:
            dropped["longer than max_length"] += 1
            continue
        seen.add(key)
        lengths.append(n_tokens)
        kept.append({"id": f"{source['name']}-{digest[:12]}", "source": source["name"], "messages": messages,
                     "_index": index})
    return kept


def _length_stats(lengths):
    if not lengths:
        return {}
    ordered = sorted(lengths)
    return {"min": ordered[0], "mean": round(statistics.fmean(ordered), 1),
            "p50": ordered[len(ordered) // 2], "p95": ordered[int(0.95 * (len(ordered) - 1))], "max": ordered[-1]}


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


SPLITS = ("train", "validation", "test")


def _drawn_test(source, seed, tokenizer, max_length, downloads):
    """The source's test draw: (test rows, its split, the row indices it visited, drops, token lengths). Drawn
    first, so that it is the same whichever other splits are written."""
    dropped, lengths, visited = Counter(), [], set()
    test_split = load_split(source, source["test"]["split"], downloads)
    test = draw(test_split, source, seed, tokenizer, max_length, source["test"]["n"], dropped, lengths, visited=visited)
    if len(test) < source["test"]["n"]:  # checked first: the train draw comes after the test's
        raise UserError(f"source {source['name']}: only {len(test)} usable test examples of {source['test']['n']} "
                        f"asked (split {source['test']['split']!r} has {len(test_split)} rows; "
                        f"{dict(dropped)} dropped): lower test.n or raise data.max_length")
    return test, test_split, visited, dropped, lengths


def prepare_data(data_cfg: dict, model_dir, out_dir, seed=0, splits=SPLITS) -> dict:
    """Write out_dir/<split>.jsonl for each of `splits` (train, validation, test); with train, also
    manifest.json, which is returned. The workflow writes test.jsonl in a step of its own, after learning
    rates are chosen on validation data, so that nothing reads the test set before the final runs: that step
    draws the test split again and checks it against the manifest's record of it."""
    tokenizer = load_tokenizer(model_dir)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    rows = {split: [] for split in SPLITS}
    manifest = {"seed": seed, "max_length": data_cfg["max_length"], "sources": {},
                # how conversations became tokens (the report says it): prepare_model's reading of the template
                "chat_format": read_json(Path(model_dir) / "model.json").get("format")}
    max_length = data_cfg["max_length"]
    # beside out_dir, not in it: a failed step leaves no output folder behind
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-downloads-", dir=out_dir.parent) as downloads:
        for source in data_cfg["sources"]:
            name = source["name"]
            if "hub" in source:
                source = {**source, "revision": resolve_revision(source)}
            test, test_split, test_visited, dropped, test_lengths = _drawn_test(
                source, seed, tokenizer, max_length, Path(downloads))
            rows["test"] += test
            if "train" not in splits:
                continue
            same_split = source["train"]["split"] == source["test"]["split"]
            train_split = test_split if same_split else load_split(source, source["train"]["split"], Path(downloads))
            held_out = {"prompts": {prompt_key(r["messages"]) for r in test},
                        "indices": test_visited if same_split else set()}
            train_lengths, train_visited = [], set()
            train = draw(train_split, source, seed, tokenizer, max_length, source["train"]["n"],
                         dropped, train_lengths, held_out, visited=train_visited)
            if len(train) < source["train"]["n"]:
                shared = (f", {len(test_visited)} of them drawn for test" if same_split else "")
                fix = "lower train.n (or test.n) or raise data.max_length" if same_split else \
                    "lower train.n or raise data.max_length"
                raise UserError(f"source {name}: only {len(train)} usable train examples of {source['train']['n']} "
                                f"asked (split {source['train']['split']!r} has {len(train_split)} rows{shared}; "
                                f"{dict(dropped)} dropped): {fix}")
            # Validation: carved from the rest of the training pool, disjoint from train and test.
            validation_n = source.get("validation", {}).get("n", 0)
            validation_lengths = []
            validation = draw(train_split, source, seed, tokenizer, max_length, validation_n, dropped,
                              validation_lengths,
                              {"prompts": held_out["prompts"] | {prompt_key(r["messages"]) for r in train},
                               "indices": held_out["indices"] | train_visited,
                               "label": "prompt also in train or test"})
            if len(validation) < validation_n:
                raise UserError(f"source {name}: only {len(validation)} usable validation examples of "
                                f"{validation_n} asked (split {source['train']['split']!r} has {len(train_split)} "
                                f"rows, {len(train)} drawn for train; {dict(dropped)} dropped): lower validation.n "
                                "or train.n")
            test_loose = {loose_key(r["messages"]) for r in test}
            manifest["sources"][name] = {
                "origin": source.get("hub") or source.get("builtin") and f"builtin:{source['builtin']}"
                or source.get("files"),
                "revision": source.get("revision"),
                "format": source["format"],
                "splits": {"train": source["train"]["split"], "validation": source["train"]["split"],
                           "test": source["test"]["split"]},
                "kept": {"train": len(train), "validation": len(validation), "test": len(test)},
                "dropped": dict(sorted(dropped.items())),
                "near_duplicate_prompts": sum(loose_key(r["messages"]) in test_loose for r in train + validation),
                "tokens": {"train": _length_stats(train_lengths), "validation": _length_stats(validation_lengths),
                           "test": _length_stats(test_lengths)},
            }
            log.info("%s: kept %d train, %d validation, %d test; dropped %s", name, len(train), len(validation),
                     len(test), dict(dropped))
            rows["train"] += train
            rows["validation"] += validation
    for split_rows in rows.values():
        for row in split_rows:
            del row["_index"]
    test_prompts = {prompt_key(r["messages"]) for r in rows["test"]}
    if "train" in splits and test_prompts & {prompt_key(r["messages"]) for r in rows["train"] + rows["validation"]}:
        raise UserError("a test prompt of one source is a train or validation prompt of another: two sources "
                        "share examples; remove one of them from data.sources")
    manifest_path = out_dir / "manifest.json"
    if "train" in splits:
        manifest["system_turns"] = sum(r["messages"][0]["role"] == "system" for r in rows["train"] + rows["validation"])
        (out_dir / "test.jsonl").unlink(missing_ok=True)  # drawn from the data that is being replaced
        manifest["test_sha256"] = jsonl_sha256(rows["test"])
        manifest["files"] = {}
    elif "test" in splits and manifest_path.exists():
        recorded = read_json(manifest_path).get("test_sha256")
        if recorded and recorded != jsonl_sha256(rows["test"]):
            raise UserError(f"the test draw differs from the one {manifest_path} recorded (the data changed since "
                            "prepare_data ran): rerun prepare_data")
    for split in splits:
        write_jsonl(out_dir / f"{split}.jsonl", rows[split])
        if "train" in splits:
            manifest["files"][f"{split}.jsonl"] = sha256_file(out_dir / f"{split}.jsonl")
    if "train" in splits:
        write_json(manifest_path, manifest)  # last: its presence says the splits beside it are whole
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the config's data section, as JSON")
    parser.add_argument("--model-dir", required=True, help="prepare_model's folder (for the tokenizer)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed (the same for every training seed)")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="the splits to write: train (with validation and manifest.json) before learning rates "
                             "are chosen, test after")
    args = parser.parse_args(argv)
    manifest = prepare_data(json.loads(args.data), args.model_dir, args.out, args.seed, args.splits)
    print(json.dumps({name: s["kept"] for name, s in manifest["sources"].items()}))
