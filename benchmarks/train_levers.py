"""Each lever of peftbench's training path, added one at a time and measured in one run (issue 5).

Same shape, synthetic batches and measurement as train_speed.py (import from there). For each method:
  plain                    the seeds' recipe (train_speed.plain_model / plain_step)
  padded                   peftbench before packing: length-grouped padded rows, sdpa, answer-only
                           chunked loss, peft's fp32 adapter inputs
  + packed (sdpa)          each batch in one row, per-example masks from restarting position ids: sdpa
                           gets a dense (tokens x tokens) mask
  + flex attention         the same packed row, block-sparse masks
  + bf16 adapter inputs    peft's cast of every adapter input to fp32 turned off (autocast runs bf16)
  + compiled layers        torch.compile of each decoder layer (dynamic shapes) = the workflow's path
  + checkpointing          training.gradient_checkpointing: true on top (the memory knob)

  python benchmarks/train_levers.py --tokenizer DIR --methods lora galore --out DIR
  python benchmarks/train_levers.py --tiny --steps 2 --out /tmp      # CPU smoke test (no flex, no compile)
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import (ROOT, free_memory, study_variant, make_model_dir, measure, plain_model, plain_step,  # noqa: E402
                         synthetic_examples)

from peftbench.methods import METHODS  # noqa: E402
from peftbench.train import answer_loss, batch_order, collate, pack  # noqa: E402
from peftbench.trainable import build_trainable, causal_lm  # noqa: E402

LEVERS = ["padded", "+ packed (sdpa)", "+ flex attention", "+ bf16 adapter inputs", "+ compiled layers",
          "+ checkpointing"]


def configure(model, lever_index, cuda):
    """Undo, on a model built by build_trainable (without compile), the levers after lever_index."""
    lm = causal_lm(model)
    flex = cuda and lever_index >= 2
    lm.set_attn_implementation("flex_attention" if flex else "sdpa")
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = lever_index < 3
    if cuda and lever_index >= 4:
        for layer in lm.model.layers:
            layer.compile(dynamic=True)


def lever_step(model, optimizer, examples, trainable, packed):
    device = next(p.device for p in trainable)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        if packed:
            loss = answer_loss(model, *pack(examples, device))
        else:
            input_ids, labels, attention_mask = collate(examples, 0, device)
            loss = answer_loss(model, input_ids, labels, attention_mask=attention_mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), sum(len(ids) for ids, _ in examples)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer")
    parser.add_argument("--methods", nargs="+", default=["lora"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--work", default="/tmp/peftbench-levers")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)

    import yaml
    from peftbench.model import load_tokenizer, model_path
    from transformers import AutoConfig

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    model_dir = make_model_dir(Path(args.work), args.tokenizer, args.tiny)
    tokenizer = load_tokenizer(model_dir)
    vocab = AutoConfig.from_pretrained(model_path(model_dir)).vocab_size
    examples = synthetic_examples(8 * args.steps, 1024, vocab)
    batches = [examples[i : i + 8] for i in range(0, len(examples), 8)]
    grouped = [[examples[i] for i in b] for b in batch_order([len(ids) for ids, _ in examples], 8, 0, 0)]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"

    results = {}
    for method in args.methods:
        kind, settings, variant_training = study_variant(method, args.tiny)
        model, optimizer, trainable = plain_model(kind, model_dir, settings)
        results[method] = {"plain": measure(lambda b: plain_step(model, optimizer, b, tokenizer.pad_token_id,
                                                                 trainable), batches)}
        del model, optimizer, trainable
        free_memory()
        for index, lever in enumerate(LEVERS):
            training = dict(variant_training, compile=False, gradient_checkpointing=lever == "+ checkpointing")
            model, groups = build_trainable(METHODS[kind], model_dir, settings, training, tokenizer, device)
            model.train()
            configure(model, index, cuda)
            optimizer = METHODS[kind].optimizer(groups, settings, training)
            trainable = [p for g in groups for p in g]
            try:
                results[method][lever] = measure(
                    lambda b: lever_step(model, optimizer, b, trainable, packed=index >= 1), grouped)
            except Exception as error:  # a lever that fails here is recorded, and the others still run
                results[method][lever] = {"error": f"{type(error).__name__}: {str(error)[:300]}",
                                          "tokens_per_s": float("nan")}
            print(method, lever, json.dumps(results[method][lever]), flush=True)
            del model, optimizer, groups, trainable
            torch._dynamo.reset()
            free_memory()

    gpu = torch.cuda.get_device_name() if cuda else "cpu"
    command = "python benchmarks/train_levers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_levers.json").write_text(json.dumps({"gpu": gpu, "command": command, "methods": results},
                                                      indent=2) + "\n")
    lines = [f"# Training levers one by one on {gpu}", "", f"Command: `{command}`", "",
             "| method | path | real tokens/s | vs plain | peak alloc (GB) | vs plain |", "|---|---|---|---|---|---|"]
    for method, rows in results.items():
        plain = rows["plain"]
        for name, r in rows.items():
            lines.append(f"| {method} | {name} | {r['tokens_per_s']:,.0f} | "
                         f"{r['tokens_per_s'] / plain['tokens_per_s']:.2f}x | "
                         f"{r.get('peak_alloc_gb', float('nan')):.1f} | "
                         f"{r.get('peak_alloc_gb', float('nan')) / plain.get('peak_alloc_gb', float('nan')):.2f} |")
    (out / "train_levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
