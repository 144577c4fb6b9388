"""Training variants at the gemma-3-1b-it shape, one process each: tokens/s, and where the peak memory sits.

A variant is a method plus knobs, e.g. `galore`, `galore:loss_chunk=256`, `lora:cpp_wrapper=1`:
  loss_chunk=N               answer positions per output-layer chunk (peftbench.train.LOSS_CHUNK)
  cpp_wrapper=1              Inductor's C++ wrapper for compiled code (fewer CPU cycles per kernel launch)
  gradient_checkpointing=1   training.gradient_checkpointing
  recompute=0|1              training.recompute_elementwise for the method (selective recomputation)
  checkpoint_layers=N        training.checkpoint_layers for the method: its first N layers checkpointed
  act_budget=F               torch._functorch.config.activation_memory_budget (1.0: Inductor's default)
  combo_kernels=1            Inductor's combo kernels (independent small kernels launched as one)
  skip_guards=1              after the warm-up pass, Dynamo runs only the guards that tell its compiled
                             versions apart (torch.compiler.set_stance skip_guard_eval_unsafe)
  gc_off=1                   after the warm-up pass, Python's cyclic garbage collector is off (gc.disable)
  attention=NAME             the decoder's attention instead of trainable.training_attention's choice
                             (flex_attention, or peftbench_varlen: FlashAttention over the packed examples)
  cuda_graphs=0|1            training.cuda_graphs: the decoder's forward and backward replayed as CUDA graphs
  fp32_weights=1             full-rank weights held in float32 and cast by autocast, as before the GaLore
                             optimizer kept float32 masters of bf16 weights
Each variant runs in its own Python process, so a compiler crash loses only that variant. Only peftbench's
path is measured (train_speed.py measures it against the plain recipe), on train_speed.py's synthetic
batches: one untimed pass, three timed passes (the median kept). Then, on the longest batch, the memory
of each phase of a step (as peftbench.train.training_step runs it): allocated after the forward and
loss, the peak of the forward, of the backward, allocated after the backward (the gradients), and the
peak of the optimizer step.

  python benchmarks/train_variants.py --tokenizer DIR galore galore:loss_chunk=256 lora:cpp_wrapper=1
  python benchmarks/train_variants.py --tiny --steps 2 --out /tmp/v lora galore:loss_chunk=16   # CPU smoke
"""
import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import yaml

import train_speed
from peftbench import graphs
from peftbench import train as train_module
from peftbench import trainable as trainable_module
from peftbench.methods import METHODS
from peftbench.train import answer_loss, batch_order, pack_for, training_step
from peftbench.trainable import causal_lm

KNOBS = {"loss_chunk": int, "cpp_wrapper": bool, "gradient_checkpointing": bool, "recompute": bool,
         "checkpoint_layers": int, "act_budget": float, "combo_kernels": bool, "skip_guards": bool,
         "gc_off": bool, "attention": str, "cuda_graphs": bool, "fp32_weights": bool}


def parse_variant(text):
    method, *knobs = text.split(":")
    import yaml

    if method not in yaml.safe_load((train_speed.ROOT / "config.yaml").read_text())["variants"]:
        raise SystemExit(f"unknown variant of config.yaml in {text!r}")
    values = {}
    for knob in ",".join(knobs).split(",") if knobs else []:
        name, _, value = knob.partition("=")
        if name not in KNOBS:
            raise SystemExit(f"unknown knob {name!r} in {text!r}: use one of {sorted(KNOBS)}")
        values[name] = value in ("1", "true") if KNOBS[name] is bool else KNOBS[name](value)
    return method, values


def gb(value):
    return value / 1e9


def phase_memory(model, optimizer, scheduler, batch, trainable):
    """One training step split where training_step's phases end, with CUDA memory after each. With CUDA
    graphs (cuda_graphs=1) the decoder's activations live in the graphs' pool, which the allocator counts
    only while capturing: these phases then show the eager parts, and peak_reserved_gb the whole."""
    device = trainable[0].device
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    phases = {"before_step_gb": gb(torch.cuda.memory_allocated())}
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        loss = answer_loss(model, *pack_for(model, batch, device))
    phases.update(after_forward_gb=gb(torch.cuda.memory_allocated()), forward_peak_gb=gb(torch.cuda.max_memory_allocated()))
    torch.cuda.reset_peak_memory_stats()
    loss.backward()
    phases.update(after_backward_gb=gb(torch.cuda.memory_allocated()),
                  backward_peak_gb=gb(torch.cuda.max_memory_allocated()))
    torch.cuda.reset_peak_memory_stats()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=graphs.attached(causal_lm(model)) is None)
    phases["optimizer_peak_gb"] = gb(torch.cuda.max_memory_allocated())
    phases["tokens"] = sum(len(ids) for ids, _ in batch)
    return phases


def tokenizer_and_batches(model_dir, batch_size, steps, tiny):
    """train_speed.py's synthetic examples, batched as the workflow batches them."""
    from transformers import AutoConfig

    from peftbench.model import load_tokenizer, model_path

    tokenizer = load_tokenizer(model_dir)
    vocab = AutoConfig.from_pretrained(model_path(model_dir)).vocab_size
    examples = train_speed.synthetic_examples(batch_size * steps, 64 if tiny else 1024, vocab)
    return tokenizer, [[examples[i] for i in b] for b in batch_order([len(ids) for ids, _ in examples], batch_size, 0, 0)]


def build_variant(config, method, knobs, model_dir, tokenizer, tiny):
    """peftbench's trainable model and optimizer for a method, with the variant's training knobs."""
    kind, settings, training = train_speed.study_variant(method, tiny)
    if "gradient_checkpointing" in knobs:
        training["gradient_checkpointing"] = knobs["gradient_checkpointing"]
    if "checkpoint_layers" in knobs:
        training["checkpoint_layers"] = knobs["checkpoint_layers"]
    if "recompute" in knobs:  # recompute=0 switches off what config.yaml switches on
        training["recompute_elementwise"] = bool(knobs["recompute"])
    if "cuda_graphs" in knobs:
        training["cuda_graphs"] = knobs["cuda_graphs"]
    choice = (lambda device: knobs["attention"]) if "attention" in knobs else trainable_module.training_attention
    with mock.patch.object(trainable_module, "training_attention", choice):
        model, optimizer, scheduler, trainable = train_speed.peftbench_path(
            kind, model_dir, settings, training, tokenizer)
    if knobs.get("fp32_weights"):
        for p in trainable:  # before the first step: no graph, compiled code or optimizer state has seen them
            p.data = p.data.float()
    return model, optimizer, scheduler, trainable


def run_one(args, text):
    method, knobs = parse_variant(text)
    config = yaml.safe_load((train_speed.ROOT / "config.yaml").read_text())
    if "loss_chunk" in knobs:
        train_module.LOSS_CHUNK = knobs["loss_chunk"]
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    if knobs.get("cpp_wrapper"):
        inductor_config.cpp_wrapper = True
    if knobs.get("combo_kernels"):
        inductor_config.combo_kernels = True
    if "act_budget" in knobs:
        functorch_config.activation_memory_budget = knobs["act_budget"]  # read when layers compile
    model_dir = Path(args.work) / "model"
    tokenizer, batches = tokenizer_and_batches(model_dir, args.batch_size, args.steps, args.tiny)
    cuda = torch.cuda.is_available()
    start = time.perf_counter()
    model, optimizer, scheduler, trainable = build_variant(config, method, knobs, model_dir, tokenizer, args.tiny)
    result = {"variant": text, "method": method, **knobs,
              "static_gb": gb(torch.cuda.memory_allocated()) if cuda else None}
    calls = []

    def step(batch):
        calls.append(1)
        if len(calls) == len(batches) + 1:  # every shape was seen once
            if knobs.get("skip_guards"):
                torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
            if knobs.get("gc_off"):
                gc.collect()
                gc.disable()
        return training_step(model, optimizer, scheduler, batch, trainable, 1.0)

    result.update(train_speed.measure(step, batches))
    result["warmup_and_timing_s"] = time.perf_counter() - start  # compilation included
    if cuda:
        longest = max(batches, key=lambda b: sum(len(ids) for ids, _ in b))
        result["phases_longest_batch"] = phase_memory(model, optimizer, scheduler, longest, trainable)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="method[:knob=value,...]")
    parser.add_argument("--tokenizer", help="folder with a Gemma 3 tokenizer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per variant")
    parser.add_argument("--work", default="/tmp/peftbench-variants")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--tiny", action="store_true", help="toy model on CPU (smoke test)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one variant
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.one:
        print(json.dumps(run_one(args, args.variants[0])), flush=True)
        return

    for variant in args.variants:
        parse_variant(variant)  # fail before any work on a typo
    if not (Path(args.work) / "model" / "model.json").exists():
        train_speed.make_model_dir(Path(args.work), args.tokenizer, args.tiny)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/train_variants.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = []
    for variant in args.variants:
        child = [sys.executable, __file__, "--one", variant, "--work", args.work, "--batch-size", str(args.batch_size),
                 "--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
        try:
            done = subprocess.run(child, capture_output=True, text=True, timeout=args.timeout)
            lines = done.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                "variant": variant, "error": f"exit {done.returncode}",
                "stderr_tail": [line for line in done.stderr.strip().splitlines() if "Warning" not in line][-25:]}
        except subprocess.TimeoutExpired:
            result = {"variant": variant, "error": f"timed out after {args.timeout} s"}
        print(json.dumps(result), flush=True)
        results.append(result)
        (out / "train_variants.json").write_text(json.dumps({"command": command, "gpu": torch.cuda.get_device_name()
                                                             if torch.cuda.is_available() else "cpu",
                                                             "variants": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
