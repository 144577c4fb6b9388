"""generate_<method>: greedy answers of the trained model to every test prompt -> generations.jsonl.

Prompts are batched by length (left-padded), decoding is greedy with a fixed max_new_tokens, and each
answer stops at <end_of_turn> (or <eos>). The model is the trained one, rebuilt by trainable.load_for_eval:
adapters merged into the weights, a 4-bit base dequantized first, so what is scored is what was trained.
"""
import argparse
import json
import logging
import time

import torch
from tqdm import tqdm

from peftbench.chat import encode_prompt, end_of_turn_id, split_prompt_reference
from peftbench.io import read_jsonl, write_jsonl
from peftbench.methods import METHODS
from peftbench.model import load_tokenizer
from peftbench.train import resolve_device
from peftbench.trainable import load_for_eval

log = logging.getLogger(__name__)


def left_pad(batch_ids, pad_id, device):
    width = max(map(len, batch_ids))
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(batch_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.inference_mode()
def greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size, device):
    """Greedy continuation of each prompt (lists of token ids), cut at the end of the turn; returns texts."""
    stop_ids = [end_of_turn_id(tokenizer), tokenizer.eos_token_id]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths pad little
    answers, new_tokens, start = [None] * len(prompts), 0, time.perf_counter()
    progress = tqdm(total=len(prompts), desc="generate", mininterval=2)
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        input_ids, attention_mask = left_pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row, index in enumerate(batch):
            generated = output[row, input_ids.shape[1] :].tolist()
            cut = next((k for k, t in enumerate(generated) if t in stop_ids), len(generated))
            new_tokens += cut
            answers[index] = tokenizer.decode(generated[:cut], skip_special_tokens=True).strip()
        progress.update(len(batch))
        progress.set_postfix(new_tok_s=f"{new_tokens / (time.perf_counter() - start):.0f}")
    progress.close()
    return answers


def generate(method_name, model_dir, trained_dir, test_path, settings, generation, out_path,
             dtype="bfloat16", device="auto"):
    device = resolve_device(device)
    tokenizer = load_tokenizer(model_dir)
    model = load_for_eval(METHODS[method_name], model_dir, trained_dir, settings, device, dtype)
    rows = read_jsonl(test_path)
    split = [split_prompt_reference(row["messages"]) for row in rows]
    prompts = [encode_prompt(tokenizer, prompt) for prompt, _ in split]
    start = time.perf_counter()
    answers = greedy_answers(model, tokenizer, prompts, generation["max_new_tokens"], generation["batch_size"], device)
    log.info("%s: %d answers in %.0f s", method_name, len(answers), time.perf_counter() - start)
    write_jsonl(out_path, (
        {"id": row["id"], "source": row["source"], "prompt": prompt, "reference": reference, "prediction": answer}
        for row, (prompt, reference), answer in zip(rows, split, answers)
    ))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, choices=list(METHODS))
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--trained", default=None, help="train step's folder (none for base)")
    parser.add_argument("--test", required=True, help="test.jsonl from prepare_data")
    parser.add_argument("--settings", default="{}", help="the method's settings, as JSON")
    parser.add_argument("--generation", required=True, help="the config's generation section, as JSON")
    parser.add_argument("--out", required=True, help="generations.jsonl to write")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    generate(args.method, args.model_dir, args.trained, args.test, json.loads(args.settings),
             json.loads(args.generation), args.out, args.dtype, args.device)
