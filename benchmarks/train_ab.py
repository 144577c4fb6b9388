"""Variants of peftbench's training path in one process, their timed passes interleaved: A B A B ...

On the GPU machines, peftbench's path waits on the CPU's kernel launches, and the same code measured
29k to 36k tokens/s in processes minutes apart (docs/history/variants/README.md): train_variants.py, one process per
variant, cannot see a lever smaller than that. Here every variant is built and warmed up once, then the
timed passes alternate between the variants for --rounds rounds, so a drift of the host hits them all
alike, and each variant's median pass is compared with the first variant's.

Variants are written as for train_variants.py. Only knobs that can differ between the models or the passes
of one process are taken: loss_chunk, skip_guards and gc_off (set for each pass), gradient_checkpointing,
checkpoint_layers, recompute, attention and cuda_graphs (each model's own); the others change the compiler
for the whole process.

  python benchmarks/train_ab.py --tokenizer DIR --rounds 5 lora lora:skip_guards=1
  python benchmarks/train_ab.py --tiny --steps 2 --rounds 2 --out /tmp/ab lora lora:loss_chunk=16   # CPU smoke
"""
import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

import train_speed
from peftbench import train as train_module
from peftbench.train import training_step
from train_variants import build_variant, parse_variant, tokenizer_and_batches

PER_PROCESS = {"cpp_wrapper", "combo_kernels", "act_budget"}
DEFAULT_LOSS_CHUNK = train_module.LOSS_CHUNK


def timed_pass(variant, batches, timed=True):
    """One pass over the batches under the variant's per-pass knobs; its real tokens/s."""
    knobs = variant["knobs"]
    train_module.LOSS_CHUNK = knobs.get("loss_chunk", DEFAULT_LOSS_CHUNK)  # read at call time
    # Guards are skipped only once the warm-up pass has compiled every shape.
    torch.compiler.set_stance("default", skip_guard_eval_unsafe=timed and knobs.get("skip_guards", False))
    gc.collect()  # every pass starts with no garbage: none left for the next variant's pass to collect
    if timed and knobs.get("gc_off"):
        gc.disable()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    tokens, start = 0, time.perf_counter()
    for batch in batches:
        tokens += training_step(variant["model"], variant["optimizer"], variant["scheduler"], batch,
                                variant["trainable"], 1.0)[1]
    if cuda:
        torch.cuda.synchronize()
    rate = tokens / (time.perf_counter() - start)
    gc.enable()
    torch.compiler.set_stance("default")
    return rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="method[:knob=value,...]; the first is the reference")
    parser.add_argument("--tokenizer", help="folder with a Gemma 3 tokenizer")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per variant, interleaved")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per pass")
    parser.add_argument("--work", default="/tmp/peftbench-variants")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--tiny", action="store_true", help="toy model on CPU (smoke test)")
    args = parser.parse_args(argv)
    if len(args.variants) < 2:
        raise SystemExit("give at least two variants to compare")
    parsed = [parse_variant(text) for text in args.variants]
    for text, (_, knobs) in zip(args.variants, parsed):
        if PER_PROCESS & set(knobs):
            raise SystemExit(f"{text}: {sorted(PER_PROCESS & set(knobs))} change the compiler for the whole "
                             "process: compare it with train_variants.py")

    # Every variant's compiled layers share the layer's code: keep all their versions, none falls to eager.
    torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    model_dir = Path(args.work) / "model"
    if not (model_dir / "model.json").exists():
        train_speed.make_model_dir(Path(args.work), args.tokenizer, args.tiny)
    config = yaml.safe_load((train_speed.ROOT / "config.yaml").read_text())
    tokenizer, batches = tokenizer_and_batches(model_dir, args.batch_size, args.steps, args.tiny)
    variants = []
    for text, (method, knobs) in zip(args.variants, parsed):
        model, optimizer, scheduler, trainable = build_variant(config, method, knobs, model_dir, tokenizer, args.tiny)
        variant = {"text": text, "knobs": knobs, "model": model, "optimizer": optimizer, "scheduler": scheduler,
                   "trainable": trainable, "passes": []}
        start = time.perf_counter()
        timed_pass(variant, batches, timed=False)  # compiles every shape
        variant["warmup_s"] = time.perf_counter() - start
        variants.append(variant)
    for _ in range(args.rounds):
        for variant in variants:
            variant["passes"].append(timed_pass(variant, batches))

    reference = statistics.median(variants[0]["passes"])
    results = [{"variant": v["text"], "tokens_per_s": statistics.median(v["passes"]), "tokens_per_s_passes": v["passes"],
                "ratio_to_first": statistics.median(v["passes"]) / reference, "warmup_s": v["warmup_s"]}
               for v in variants]
    command = "python benchmarks/train_ab.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "cpu": train_speed.host_cpu(), "rounds": args.rounds, "steps_per_pass": args.steps, "variants": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_ab.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Command: `{command}` ({report['gpu']}, {report['cpu']})", "",
             "| variant | median tokens/s | vs first | passes (in order) |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['ratio_to_first']:.3f} | "
              f"{', '.join(f'{p:,.0f}' for p in r['tokens_per_s_passes'])} |" for r in results]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
