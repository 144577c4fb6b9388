"""
Builtin demo data: a small, offline instruction dataset made from Python's own documentation.

The demo run must work with no network and no third-party data, so this module turns the text
every Python install carries (pydoc_data topics, stdlib docstrings and signatures) into rows in
the exact schema of three real Hugging Face datasets: tatsu-lab/alpaca, allenai/tulu-v2-sft-mixture
and HuggingFaceH4/ultrachat_200k. Answers follow a few fixed templates, so that even a tiny
fine-tune visibly raises BLEU/ROUGE against the references. The output is byte-for-byte
deterministic for a given Python version, platform and arguments.
"""

import argparse
import hashlib
import importlib
import inspect
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from pydoc_data.topics import topics as PYDOC_TOPICS

SOURCES = ("alpaca", "tulu", "ultrachat")
# widely present, pure stdlib modules; a fixed sorted list keeps the output stable
MODULES = sorted([
    "base64", "bisect", "calendar", "collections", "copy", "csv", "datetime", "decimal", "difflib",
    "enum", "fnmatch", "fractions", "functools", "glob", "hashlib", "heapq", "html", "itertools",
    "json", "math", "operator", "os.path", "pathlib", "random", "re", "shutil", "statistics",
    "string", "textwrap", "urllib.parse", "zlib",
])
MAX_MESSAGE_CHARS = 400  # the demo trains on a 2-core CPU: every example stays short
MAX_SIGNATURE_CHARS = 150
SYSTEM_PROMPT = "You are a concise Python expert."
ABBREVIATIONS = ("e.g", "i.e", "a.k.a", "etc")  # a ". " after these does not end a sentence
ALPACA_INTRO = "Below is an instruction that describes a task{}. Write a response that appropriately completes the request.\n\n"
ALPACA_WITH_INPUT = ", paired with an input that provides further context"

# -----------------------------------------------------------------------------
# documentation items

@dataclass(frozen=True)
class Func:
    module: str
    name: str
    kind: str  # "function" | "class"
    sentence: str
    signature: str | None  # e.g. "(a, b)"; None when unknown, too long or not stable across runs
    unique_name: bool  # only one module has this name, so "which module?" has one answer

    @property
    def qualname(self):
        return f"{self.module}.{self.name}"

@dataclass(frozen=True)
class Topic:
    key: str  # a pydoc topic key such as "for" or "typesseq-mutable"
    sentence: str

@dataclass(frozen=True)
class Module:
    name: str
    sentence: str
    members: tuple[tuple[str, str], ...]  # sorted (name, sentence) of its kept callables

def first_sentence(paragraph):
    """The clean first sentence of a paragraph, or None when it is not a short, plain sentence."""
    text = " ".join(paragraph.split())
    for match in re.finditer(r"\. ", text):
        if not text[:match.start()].lower().endswith(ABBREVIATIONS):
            text = text[:match.start() + 1]
            break
    if text.endswith(":"):
        text = text[:-1] + "."  # "... is used to X:" introduces a code block
    elif text[-1:].isalnum():
        text += "."  # module titles often lack the final period
    plain = text[:1].isupper() and text.endswith(".") and ">>>" not in text and "::" not in text
    balanced = text.count("(") == text.count(")") and text.count("`") % 2 == 0
    return text if plain and balanced and 20 <= len(text) <= 200 else None

def docstring_sentence(doc):
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc or "") if p.strip()]
    if paragraphs and re.match(r"[\w.]*\(.*\)", paragraphs[0]):
        paragraphs = paragraphs[1:]  # C functions may open with their signature line
    return first_sentence(paragraphs[0]) if paragraphs else None

def topic_sentence(text):
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if paragraphs and re.search(r"\n[*=\-^~]+\s*$", paragraphs[0]):
        paragraphs = paragraphs[1:]  # the section title with its underline
    if not paragraphs or paragraphs[0][:1].isspace():
        return None  # indented: a grammar rule or code, not prose
    return first_sentence(paragraphs[0])

def signature_text(obj, qualname):
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return None
    # a default like <function f at 0x7f...> changes from run to run
    return None if "<" in sig or len(qualname + sig) > MAX_SIGNATURE_CHARS else sig

def collect_items():
    """Every usable documentation item, in a fixed order: callables, then topics, then modules."""
    found, modules = [], []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        exported = getattr(module, "__all__", None)
        kept = []
        for name in sorted(set(exported or dir(module))):
            obj = getattr(module, name, None)
            if name.startswith("_") or not callable(obj) or inspect.ismodule(obj) or not obj.__doc__:
                continue
            # without __all__, skip what the module merely imported from elsewhere
            if exported is None and getattr(obj, "__module__", "") not in (module_name, "_" + module_name):
                continue
            sentence = docstring_sentence(obj.__doc__)
            if sentence:
                kind = "class" if inspect.isclass(obj) else "function"
                found.append((module_name, name, kind, sentence, signature_text(obj, f"{module_name}.{name}")))
                kept.append((name, sentence))
        sentence = docstring_sentence(module.__doc__)
        if sentence and len(kept) >= 2:
            modules.append(Module(module_name, sentence, tuple(kept)))
    names = [name for _, name, *_ in found]
    funcs = [Func(*f, unique_name=names.count(f[1]) == 1) for f in found]
    topics = [Topic(key, s) for key in sorted(PYDOC_TOPICS) if (s := topic_sentence(PYDOC_TOPICS[key]))]
    return funcs + topics + modules

# -----------------------------------------------------------------------------
# templates: for one item, each source returns all its rows, in a fixed template order

def name_list(names):
    quoted = [f"`{n}`" for n in names]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]

def some_members(module, rng):
    names = [name for name, _ in module.members]
    return sorted(rng.sample(names, min(3, len(names))))

def describe(item):
    return f"`{item.qualname}`: {item.sentence}"

def about_module(module):
    return f"The `{module.name}` module's documentation says: {module.sentence}"

def signature_answer(item):
    return f"The signature is `{item.qualname}{item.signature}`."

def import_answer(item):
    return f"Import it from `{item.module}`: `from {item.module} import {item.name}`."

def alpaca_row(instruction, input_text, output):
    prompt = ALPACA_INTRO.format(ALPACA_WITH_INPUT if input_text else "") + f"### Instruction:\n{instruction}\n\n"
    prompt += f"### Input:\n{input_text}\n\n" if input_text else ""
    return {"instruction": instruction, "input": input_text, "output": output, "text": prompt + f"### Response:\n{output}"}

def alpaca_rows(item, rng):
    if isinstance(item, Func):
        q = item.qualname
        rows = [alpaca_row(f"What does the Python {item.kind} `{q}` do?", "", describe(item)),
                alpaca_row(f"Describe what this Python {item.kind} does.", f"`{q}`", describe(item))]
        if item.signature:
            rows.append(alpaca_row("Write the call signature of this Python callable.", f"`{q}`", signature_answer(item)))
        if item.unique_name:
            rows.append(alpaca_row(f"Which standard-library module provides `{item.name}`?", "",
                                   f"`{item.name}` is provided by the `{item.module}` module: "
                                   f"`from {item.module} import {item.name}`."))
        return rows
    if isinstance(item, Topic):
        answer = f"`{item.key}`: {item.sentence}"
        return [alpaca_row("Explain this Python keyword or topic in one sentence.", f"`{item.key}`", answer),
                alpaca_row(f"In one sentence, what is the Python topic `{item.key}` about?", "", answer)]
    return [alpaca_row(f"What is the Python `{item.name}` module for?", "", about_module(item)),
            alpaca_row(f"Name some functions or classes from the Python `{item.name}` module.", "",
                       f"The `{item.name}` module provides {name_list(some_members(item, rng))}.")]

def chat(*turns):
    """Messages from alternating user and assistant texts."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]

def tulu_rows(item, rng):
    if isinstance(item, Func):
        convs = [chat(f"Briefly, what does `{item.qualname}` do?", describe(item))]
        if item.signature:
            convs.append(chat(f"What is the signature of `{item.qualname}`?", signature_answer(item)))
        if item.unique_name:
            convs.append(chat(f"Which module do I import to use `{item.name}`?", import_answer(item)))
    elif isinstance(item, Topic):
        convs = [chat(f"Explain the Python topic `{item.key}` in one sentence.", f"`{item.key}`: {item.sentence}")]
    else:
        convs = [chat(f"What is Python's `{item.name}` module for?", about_module(item)),
                 chat(f"Name some functions or classes in the `{item.name}` module.",
                      f"The `{item.name}` module provides {name_list(some_members(item, rng))}.")]
    # as in tulu, a minority of conversations open with a system message
    return [[{"role": "system", "content": SYSTEM_PROMPT}] + c if rng.random() < 0.25 else c for c in convs]

def ultrachat_rows(item, rng):
    third = rng.random() < 0.5  # 2 or 3 exchanges
    if isinstance(item, Func):
        q = item.qualname
        convs = [[f"I'm using `{q}` in Python. What does it do?", describe(item),
                  "Which module do I import it from?", import_answer(item)]
                 + (["What is its signature?", signature_answer(item)] if third and item.signature else [])]
        if item.signature:
            convs.append([f"What is the signature of Python's `{q}`?", signature_answer(item),
                          "What does it do?", describe(item)]
                         + (["How can I read its full documentation?",
                             f"Run `import {item.module}` and then `help({q})`."] if third else []))
    elif isinstance(item, Topic):
        convs = [[f"What does the Python documentation topic `{item.key}` cover?", f"`{item.key}`: {item.sentence}",
                  "Where can I read the full text?", f"It is in `pydoc_data.topics.topics['{item.key}']`."]]
    else:
        members = some_members(item, rng)
        example = f"{item.name}.{rng.choice(members)}"
        openers = [f"I'm using Python's `{item.name}` module. What is it for?",
                   f"What is the Python `{item.name}` module used for?",
                   f"Can you explain what Python's `{item.name}` module does?"]
        convs = [[opener, about_module(item), "Which functions or classes does it provide?",
                  f"It provides {name_list(members)}."]
                 + ([f"What does `{example}` do?", f"`{example}`: {dict(item.members)[example.rsplit('.', 1)[1]]}"]
                    if third else [])
                 for opener in openers]
    return [chat(*turns) for turns in convs]

# -----------------------------------------------------------------------------
# assembling and writing

ROW_MAKERS = {"alpaca": alpaca_rows, "tulu": tulu_rows, "ultrachat": ultrachat_rows}

def texts(row):
    """The texts a model reads or writes: alpaca's three fields, or every message."""
    return [m["content"] for m in row] if isinstance(row, list) else [row["instruction"], row["input"], row["output"]]

def prompt_key(row):
    """What must be unique within a file: the user's request."""
    if isinstance(row, dict):
        return (row["instruction"], row["input"])
    return next(m["content"] for m in row if m["role"] == "user")

def build_rows(source, seed):
    """Every distinct row the source can give, ordered so that each item is used once before any is reused."""
    rng = random.Random(seed)
    items = collect_items()
    rng.shuffle(items)
    per_item = []
    for index, item in enumerate(items):
        rows = [r for r in ROW_MAKERS[source](item, rng) if max(map(len, texts(r))) <= MAX_MESSAGE_CHARS]
        shift = index % len(rows) if rows else 0
        per_item.append(rows[shift:] + rows[:shift])  # rotate, so that the first round mixes templates
    pool, seen = [], set()
    for round_index in range(max(map(len, per_item))):
        for row in [rows[round_index] for rows in per_item if round_index < len(rows)]:
            if (key := prompt_key(row)) not in seen:
                seen.add(key)
                pool.append(row)
    return pool

def to_record(source, row, index):
    if source == "alpaca":
        return row
    if source == "tulu":
        return {"dataset": "peftbench_pydoc", "id": f"peftbench_pydoc_{index}", "messages": row}
    prompt = row[0]["content"]
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest(), "messages": row}

def write_jsonl(records, path):
    """Write through a temp file in the same folder, so that no reader ever sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

def write_demo_source(source: str, out_dir: str | Path, n_rows: int, seed: int = 0) -> dict[str, Path]:
    """Write the builtin demo source `source` ("alpaca" | "tulu" | "ultrachat") as JSON Lines files, one per split,
    into out_dir/<split>.jsonl; return {split: path}. alpaca and tulu write n_rows to `train`; ultrachat writes
    n_rows to train_sft and max(n_rows // 3, 8) to test_sft, with no prompt in both. Raises ValueError when the
    source has fewer distinct rows than that."""
    if source not in SOURCES:
        raise ValueError(f"unknown demo source {source!r}; expected one of {SOURCES}")
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    sizes = {"train_sft": n_rows, "test_sft": max(n_rows // 3, 8)} if source == "ultrachat" else {"train": n_rows}
    pool = build_rows(source, seed)
    if sum(sizes.values()) > len(pool):
        raise ValueError(f"demo source {source!r} has {len(pool)} distinct rows, {sum(sizes.values())} were asked for")
    chosen = pool[:sum(sizes.values())]
    if source == "ultrachat":
        random.Random(seed).shuffle(chosen)  # so both splits draw on the same mix of items and templates
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for split, size in sizes.items():
        paths[split] = out_dir / f"{split}.jsonl"
        write_jsonl([to_record(source, row, i) for i, row in enumerate(chosen[start:start + size])], paths[split])
        start += size
    return paths

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write a builtin offline demo dataset made from Python's docs.")
    parser.add_argument("--source", required=True, choices=SOURCES, help="which hub dataset's schema to write")
    parser.add_argument("--out-dir", required=True, help="folder for the split files")
    parser.add_argument("--rows", type=int, required=True, help="rows in the training split")
    parser.add_argument("--seed", type=int, default=0, help="which documented names are drawn")
    args = parser.parse_args(argv)
    for split, path in write_demo_source(args.source, args.out_dir, args.rows, args.seed).items():
        print(f"{split}: {path}")

if __name__ == "__main__":
    main()
