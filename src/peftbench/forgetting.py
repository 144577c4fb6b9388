"""forgetting: how much each model's grip on general text loosened in fine-tuning.

What is measured: the plain language-model loss (nats per token) of every model, the untrained base and
every trained run, on a sample of general text that none of them trained on. It is answer-independent:
no chat template, no prompt, just each passage as the tokenizer encodes it (its BOS included, as the
tokenizer adds it), every token after the first predicted from the ones before it. A trained model whose
loss went up against the base's has forgotten some of what the base knew.

Three steps:
  general-text   draw the passages once: a configured number of non-empty paragraphs, chosen with the
                 study's seed, from a hub dataset (the study: WikiText-103's test split), a local .txt /
                 .jsonl file, or `builtin`, the package's own general English (the demo): general_text.txt,
                 42 short paragraphs on everyday and encyclopedic topics written for peftbench, none about
                 programming (the demo trains on Python's documentation)
                 -> passages.json, with the text's identity (name, origin, revision, sha256)
  general-loss   one model's summed negative log-likelihood and token count per passage, each passage cut
                 to max_length tokens -> general_loss.json
  compare        (compare_forgetting) each method's loss = sum of nll / sum of tokens (mean over its seeds),
                 with a paired bootstrap over passages for its interval, and each trained method minus the
                 base: positive means its general-text loss went up, i.e. it forgot.
"""
import argparse
import hashlib
import json
import logging
import re
import statistics
from pathlib import Path

import numpy as np

from peftbench.errors import UserError
from peftbench.inputs import BUILTIN_GENERAL_TEXT
from peftbench.io import read_json, read_jsonl, write_json

log = logging.getLogger(__name__)
HEADING = re.compile(r"^=+ .* =+$")  # WikiText's section titles (" = Title = ", " = = Part = = ")
BATCH_SIZE = 8  # passages per forward: 8 x 256 tokens x a 262k vocabulary is 2 GB of float32 logits


# ----------------------------------------------------------------------------- the text

def text_source(text):
    """The config's forgetting.text as a source: {"name", "builtin" | "file" | "hub", ...}."""
    if isinstance(text, dict):
        return text
    if text == "builtin":
        return {"name": "builtin", "builtin": str(BUILTIN_GENERAL_TEXT)}
    return {"name": Path(text).stem, "file": text}


def paragraphs_of_file(path):
    """A .txt file's paragraphs (blocks between blank lines), or a .json/.jsonl file's rows' `text`."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise UserError(f"forgetting.text: file {path} is missing or empty: give a text file with paragraphs "
                        "separated by blank lines, a .jsonl file of {\"text\": ...} rows, or builtin")
    if path.suffix in (".json", ".jsonl"):
        try:
            rows = read_json(path) if path.read_text().lstrip().startswith("[") else read_jsonl(path)
        except json.JSONDecodeError as bad:
            raise UserError(f"forgetting.text: file {path} is not valid JSON ({bad.msg}, line {bad.lineno}): "
                            "one {\"text\": ...} object per line") from None
        return [row.get("text", "") if isinstance(row, dict) else "" for row in rows]
    return re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))


def paragraphs_of_hub(source):
    """The `text` of every row of the source's split (WikiText: one line of the article per row)."""
    from peftbench.data import _load_hub

    return _load_hub(source, source["split"])["text"]


def usable(paragraphs):
    """Each distinct non-empty paragraph that is not a heading, whitespace collapsed, in order."""
    seen = {}
    for paragraph in paragraphs:
        text = " ".join(paragraph.split())
        if text and not HEADING.match(text):
            seen.setdefault(text, None)
    return list(seen)


def draw_passages(texts, n, seed):
    """n passages, the first n in the order of a seeded sha256 of their text (the same on any machine)."""
    keyed = sorted((hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest(), text) for text in texts)
    return [{"id": digest[:12], "text": text} for digest, text in keyed[:n]]


def prepare_general_text(forgetting_cfg, out_path, seed=0):
    """Draw the passages and write passages.json (atomically) with the text's identity."""
    source = text_source(forgetting_cfg["text"])
    if "hub" in source:
        from peftbench.data import resolve_revision

        source = {**source, "revision": resolve_revision(source)}
        texts = usable(paragraphs_of_hub(source))
        origin = "/".join(filter(None, [source["hub"], source.get("config")])) + f":{source['split']}"
    else:
        path = source.get("file") or source["builtin"]
        texts, origin = usable(paragraphs_of_file(path)), "builtin" if "builtin" in source else str(path)
    wanted = forgetting_cfg["passages"]
    if len(texts) < wanted:
        raise UserError(f"forgetting.text {source['name']}: only {len(texts)} usable passages, {wanted} asked: "
                        "lower forgetting.passages or give a longer text")
    passages = draw_passages(texts, wanted, seed)
    text = {"name": source["name"], "origin": origin, "revision": source.get("revision"),
            "sha256": hashlib.sha256(json.dumps(passages, ensure_ascii=False).encode()).hexdigest()}
    write_json(out_path, {**text, "seed": seed, "passages": passages})
    log.info("%s: %d passages of %d usable", source["name"], len(passages), len(texts))
    return text


# ----------------------------------------------------------------------------- one model's loss

def passage_ids(tokenizer, passages, max_length):
    """Each passage's token ids as the tokenizer encodes plain text (its BOS, if it adds one), cut to max_length."""
    return [tokenizer(p["text"], add_special_tokens=True)["input_ids"][:max_length] for p in passages]


def summed_nll(model, ids, batch_size, pad_id, device):
    """Per passage: (summed negative log-likelihood in nats, tokens predicted), every token after the first.
    Right-padded batches of similar lengths; the padding is masked out of attention and of the sums."""
    import torch

    nll, tokens = [0.0] * len(ids), [0] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            losses = (losses * mask[:, 1:]).double().sum(1).tolist()
            for row, i in enumerate(batch):
                nll[i], tokens[i] = losses[row], len(ids[i]) - 1
    return nll, tokens


def general_loss(kind_name, model_dir, trained_dir, passages_path, settings, max_length, out_path, method,
                 seed=None, dtype="bfloat16", device="auto", batch_size=BATCH_SIZE):
    """One model (the base, or a trained run rebuilt as generate rebuilds it) on every passage ->
    general_loss.json, written whole or not at all."""
    from peftbench.methods import METHODS
    from peftbench.model import load_tokenizer
    from peftbench.train import resolve_device
    from peftbench.trainable import load_for_eval

    device = resolve_device(device)
    text = read_json(passages_path)
    tokenizer = load_tokenizer(model_dir)
    model = load_for_eval(METHODS[kind_name], model_dir, trained_dir, settings, device, dtype)
    ids = passage_ids(tokenizer, text["passages"], max_length)
    nll, tokens = summed_nll(model, ids, batch_size, tokenizer.pad_token_id or 0, device)
    loss = sum(nll) / max(1, sum(tokens))
    write_json(out_path, {
        "method": method, "seed": seed, "text": {k: text[k] for k in ("name", "origin", "revision", "sha256")},
        "max_length": max_length, "loss": loss,
        "passages": [p["id"] for p in text["passages"]], "nll": nll, "tokens": tokens})
    log.info("%s: %.4f nats per token over %d tokens", method, loss, sum(tokens))
    return loss


# ----------------------------------------------------------------------------- comparing

def load_losses(paths):
    """{method: [general_loss.json of each seed, by seed]}; all on the same passages of the same text."""
    from peftbench.compare import runs_by_method

    return runs_by_method(paths, lambda run: (run["passages"], run["text"]["sha256"], run["tokens"]), lambda first: (
        f"measured other general text than {first}: rerun general_loss on the same passages.json and max_length"))


def compare_forgetting(paths, samples=1000, confidence=0.95, seed=0):
    """Every method's general-text loss with its interval, and each trained method minus the base.

    Paired bootstrap over passages: each resample draws the passages with replacement, the same for every
    method and seed, and recomputes each seed's loss (resampled nll / resampled tokens) and their mean."""
    from peftbench.compare import interval, paired_difference, resample_weights

    runs = load_losses(paths)
    first = next(iter(runs.values()))[0]
    n = len(first["passages"])
    # row 0: the passages as they are; one stratum: the passages are one sample of one text
    weights = resample_weights(["passages"] * n, samples, np.random.default_rng(seed))
    tokens = weights @ np.asarray(first["tokens"], dtype=float)
    losses, per_seed = {}, {}
    for method, seeds in runs.items():
        each = [weights @ np.asarray(run["nll"]) / tokens for run in seeds]
        losses[method], per_seed[method] = np.mean(each, axis=0), [float(s[0]) for s in each]
    untrained = [m for m, seeds in runs.items() if seeds[0]["seed"] is None]
    base = untrained[0] if untrained else None
    differences = {}
    for method in runs:
        if base is None or method in untrained:
            continue
        differences[f"{method} - {base}"] = paired_difference(losses[method] - losses[base], confidence)
    return {
        "text": {"name": first["text"]["name"], "origin": first["text"]["origin"],
                 "revision": first["text"]["revision"], "passages": n, "tokens": int(sum(first["tokens"]))},
        "methods": {m: {"loss": float(losses[m][0]), "ci": interval(losses[m][1:], confidence),
                        "per_seed": per_seed[m],
                        "sd": statistics.stdev(per_seed[m]) if len(per_seed[m]) > 1 else None} for m in runs},
        "differences": differences,
    }


# ----------------------------------------------------------------------------- commands

def prepare_main(argv=None):
    parser = argparse.ArgumentParser(description="draw the general-text passages that forgetting is measured on")
    parser.add_argument("--forgetting", required=True, help="the config's forgetting section, as JSON")
    parser.add_argument("--seed", type=int, default=0, help="the draw's seed (the study's seed)")
    parser.add_argument("--out", required=True, help="passages.json to write")
    args = parser.parse_args(argv)
    text = prepare_general_text(json.loads(args.forgetting), args.out, args.seed)
    print(json.dumps({k: text[k] for k in ("name", "origin", "revision")}))


def loss_main(argv=None):
    parser = argparse.ArgumentParser(description="one model's loss on the general-text passages")
    parser.add_argument("--kind", required=True, help="the variant's kind (peftbench.methods, or a peft method)")
    parser.add_argument("--model-dir", required=True, help="prepare_model's folder")
    parser.add_argument("--trained", default=None, help="train step's folder (none for an untrained variant)")
    parser.add_argument("--passages", required=True, help="passages.json from general-text")
    parser.add_argument("--settings", default="{}", help="the variant's settings, as JSON")
    parser.add_argument("--max-length", type=int, required=True,
                        help="tokens of each passage kept (forgetting.max_length)")
    parser.add_argument("--variant", required=True, help="the variant's name, recorded as the method")
    parser.add_argument("--seed", type=int, default=None,
                        help="the run's training seed (none for an untrained variant)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="passages per forward pass")
    parser.add_argument("--dtype", default="bfloat16", help="the model's dtype on a GPU (a CPU computes in float32)")
    parser.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    parser.add_argument("--out", required=True, help="general_loss.json to write")
    args = parser.parse_args(argv)
    loss = general_loss(args.kind, args.model_dir, args.trained, args.passages, json.loads(args.settings),
                        args.max_length, args.out, args.variant, args.seed, args.dtype, args.device, args.batch_size)
    print(json.dumps({"method": args.variant, "seed": args.seed, "loss": round(loss, 4)}))
