"""Evaluation generation speed at the gemma-3-1b-it shape: transformers' generate vs peftbench's fast path.

No checkpoint reaches the GPU machine, so the model is the real architecture (Gemma3TextConfig with
gemma-3-1b-it's values, below) with random bf16 weights: speed and memory do not depend on weight values.
In the same process, on the same synthetic prompts, 256 new tokens each:
  plain      peftbench.generate.plain_greedy_ids: model.generate(do_sample=False), length-sorted
             left-padded batches of 8 (what the workflow did), on a few prompts only (it is slow);
  peftbench  peftbench.generate.fast_greedy_ids, as the workflow now runs it, at a large batch.
Random weights never reliably say <end_of_turn>, so both run with no stop ids: every row decodes all 256
tokens (plain is given an eos id that argmax cannot return). Real answers stop earlier, but a batch runs
until its longest answer, so 256 per prompt is the right upper bound for the estimate.
A warm-up run (CUDA context, cuBLAS, first graph captures) is timed separately and excluded; graphs
captured for new batch shapes during the timed run are included (the workflow pays them too).

Synthetic prompt lengths (tokens, seeded), a 1:1:1 mix like the study's alpaca / tulu-v2 / ultrachat_200k
test prompts: lognormal with medians 40, 150 and 250 (sigma 0.6, 0.9, 0.8), clipped to [8, 1024];
token ids uniform in the upper seven eighths of the vocabulary, <bos> first.

  python benchmarks/generate_speed.py                  # on one H100: writes benchmarks/generate.json, .md
  python benchmarks/generate_speed.py --tiny --out /tmp  # CPU smoke test on a tiny model
"""
import argparse
import json
import math
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from peftbench.generate import fast_greedy_ids, plain_greedy_ids  # noqa: E402

MIX = [(40, 0.6), (150, 0.9), (250, 0.8)]  # (median tokens, lognormal sigma): alpaca, tulu, ultrachat
STUDY_PROMPTS, STUDY_MODELS = 6_000, 5  # test prompts x models (base + 4 methods) the workflow generates for
PAD = 0


def gemma3_1b_config(tiny):
    from transformers import Gemma3TextConfig

    if tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import tiny_config

        return tiny_config(vocab_size=512)
    return Gemma3TextConfig(
        vocab_size=262_144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
        max_position_embeddings=32_768, rms_norm_eps=1e-6, query_pre_attn_scalar=256,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, final_logit_softcapping=None,
        attn_logit_softcapping=None, pad_token_id=0, eos_token_id=[1, 106], bos_token_id=2,
        # transformers 5: one rope setting per layer type (global 1M, local 10k), 5 sliding : 1 full
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)],
    )


def synthetic_prompts(n, vocab_size, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(n):
        median, sigma = MIX[i % 3]
        length = math.exp(math.log(median * scale) + sigma * torch.randn(1, generator=generator).item())
        length = int(max(8 * scale, min(1024 * scale, length)))
        ids = torch.randint(vocab_size // 8, vocab_size, (length,), generator=generator).tolist()
        prompts.append([2] + ids[1:])  # <bos>
    order = torch.randperm(n, generator=generator).tolist()  # sources interleaved, like the test set
    return [prompts[i] for i in order]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    """(result, seconds, peak GB allocated during fn)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    return result, seconds, peak


def common_prefix(a, b):
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model, few prompts and tokens (CPU)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="folder for generate.json and .md")
    parser.add_argument("--prompts", type=int, default=3000, help="prompts for peftbench's fast path")
    parser.add_argument("--batch", type=int, default=256, help="fast path batch (0: from free GPU memory)")
    parser.add_argument("--plain-prompts", type=int, default=16, help="prompts for plain generate (batch 8)")
    parser.add_argument("--also-batch", type=int, nargs="*", default=[64],
                        help="fast path at these batches too, on at most 1024 of the prompts (64: config.yaml's)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--no-graph", action="store_true", help="fast path without CUDA graphs (eager steps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tiny:
        args.prompts, args.batch, args.plain_prompts, args.new_tokens = min(args.prompts, 24), 8, 8, 12
        args.also_batch = [3]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        parser.error("the full-size benchmark needs a CUDA GPU (use --tiny on CPU)")
    command = "python benchmarks/generate_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    config = gemma3_1b_config(args.tiny)
    start = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters on {device}, "
          f"built in {time.perf_counter() - start:.0f} s")
    scale = 1 / 16 if args.tiny else 1.0
    prompts = synthetic_prompts(args.prompts + args.plain_prompts, config.vocab_size, scale, args.seed)
    plain_prompts, fast_prompts = prompts[: args.plain_prompts], prompts[args.plain_prompts :]
    lengths = torch.tensor([len(p) for p in fast_prompts], dtype=torch.float)
    print(f"prompt tokens: median {lengths.median():.0f}, mean {lengths.mean():.0f}, max {lengths.max():.0f}")
    new = args.new_tokens

    # plain generate, batch 8 (warm-up: one short call)
    plain_greedy_ids(model, plain_prompts[:8], 4, 8, PAD)
    plain_ids, plain_s, plain_peak = timed(device, lambda: plain_greedy_ids(model, plain_prompts, new, 8, PAD))
    plain_rate = sum(map(len, plain_ids)) / plain_s
    print(f"plain: {plain_rate:,.0f} new tokens/s at batch 8 ({len(plain_prompts)} prompts, {plain_s:.1f} s)")

    # peftbench fast path: warm-up on the longest prompts (first graph), then the timed run
    graph = not args.no_graph
    _, warm_s, _ = timed(device, lambda: fast_greedy_ids(
        model, sorted(fast_prompts, key=len)[-(args.batch or 8):], 8, args.batch, PAD, cuda_graph=graph))
    stats = {}
    fast_ids, fast_s, fast_peak = timed(device, lambda: fast_greedy_ids(
        model, fast_prompts, new, args.batch, PAD, cuda_graph=graph, stats=stats))
    fast_rate = sum(map(len, fast_ids)) / fast_s
    print(f"peftbench: {fast_rate:,.0f} new tokens/s at batch {stats['batch_size']} ({len(fast_prompts)} prompts, "
          f"{fast_s:.1f} s, {stats['graphs']} graphs captured in {stats['capture_s']:.1f} s, warm-up {warm_s:.1f} s)")

    other_batches, some = [], fast_prompts[:1024]
    for batch in args.also_batch:
        ids, seconds, peak = timed(device, lambda: fast_greedy_ids(model, some, new, batch, PAD, cuda_graph=graph))
        rate = sum(map(len, ids)) / seconds
        other_batches.append({"batch": batch, "prompts": len(some), "new_tokens_per_s": round(rate, 1),
                              "peak_alloc_gb": peak and round(peak, 2)})
        print(f"peftbench: {rate:,.0f} new tokens/s at batch {batch} ({len(some)} prompts)")

    # Same prompts, same batches of 8 as plain: do both decoders give the same tokens?
    same_batches = fast_greedy_ids(model, plain_prompts, new, 8, PAD, cuda_graph=graph)
    prefixes = [common_prefix(x, y) for x, y in zip(plain_ids, same_batches)]
    agreement = {
        "prompts": len(prefixes),
        "identical": sum(p == new for p in prefixes),
        "mean_common_prefix": sum(prefixes) / len(prefixes),
        "note": "random weights give near-tied logits; in bf16 on GPU, kernels that sum in another order "
                "can flip such ties, as changing the batch size does for generate itself",
    }
    print(f"agreement with generate on its {len(prefixes)} prompts: {agreement['identical']} identical, "
          f"mean common prefix {agreement['mean_common_prefix']:.0f} of {new} tokens")

    study_tokens = STUDY_PROMPTS * STUDY_MODELS * new
    estimate = {"plain_h": study_tokens / plain_rate / 3600, "peftbench_min": study_tokens / fast_rate / 60}
    print(f"estimate for {STUDY_PROMPTS:,} prompts x {STUDY_MODELS} models x {new} tokens: "
          f"plain {estimate['plain_h']:.1f} h, peftbench {estimate['peftbench_min']:.1f} min (+ model loading)")

    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or 'unknown'})"
    result = {
        "gpu": gpu,
        "plain": {"new_tokens_per_s": round(plain_rate, 1), "batch": 8, "prompts": len(plain_prompts),
                  "seconds": round(plain_s, 2), "peak_alloc_gb": plain_peak and round(plain_peak, 2)},
        "peftbench": {"new_tokens_per_s": round(fast_rate, 1), "batch": stats["batch_size"],
                      "peak_alloc_gb": fast_peak and round(fast_peak, 2), "prompts": len(fast_prompts),
                      "seconds": round(fast_s, 2), "cuda_graph": graph and device.type == "cuda",
                      "graphs_captured": stats["graphs"], "capture_s": round(stats["capture_s"], 2),
                      "warmup_s": round(warm_s, 2)},
        "peftbench_other_batches": other_batches,
        "speedup": round(fast_rate / plain_rate, 1),
        "new_tokens_per_prompt": new,
        "stop_tokens": "none (every row decodes all new tokens)",
        "prompt_tokens": {"median": lengths.median().item(), "mean": round(lengths.mean().item(), 1),
                          "max": lengths.max().item(), "mix": "lognormal (median, sigma) " + str(MIX)},
        "agreement_with_generate": agreement,
        "estimate_study": {"prompts": STUDY_PROMPTS, "models": STUDY_MODELS,
                           **{k: round(v, 2) for k, v in estimate.items()}},
        "model": "tiny random Gemma 3 (tests/tiny.py)" if args.tiny else "gemma-3-1b-it shape, random bf16 weights",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "transformers": version("transformers")},
        "command": command.strip(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=1) + "\n")
    peak = lambda gb: "-" if gb is None else f"{gb:.1f}"  # noqa: E731
    (out / "generate.md").write_text(
        f"# Evaluation generation speed: {result['model']}\n\n"
        f"{gpu}; {new} new tokens per prompt, no stop tokens; torch {torch.__version__}, "
        f"transformers {version('transformers')}.\n\n"
        "| decoder | batch | prompts | new tokens/s | peak allocated (GB) |\n"
        "|---|---:|---:|---:|---:|\n"
        f"| plain `model.generate` | 8 | {len(plain_prompts)} | {plain_rate:,.0f} | {peak(plain_peak)} |\n"
        f"| peftbench `fast_greedy_ids` | {stats['batch_size']} | {len(fast_prompts)} | {fast_rate:,.0f} | "
        f"{peak(fast_peak)} |\n"
        + "".join(f"| peftbench `fast_greedy_ids` | {o['batch']} | {o['prompts']} | {o['new_tokens_per_s']:,.0f} | "
                  f"{peak(o['peak_alloc_gb'])} |\n" for o in other_batches)
        + "\n"
        f"Speed-up {fast_rate / plain_rate:.1f}x. Fast path: {stats['graphs']} CUDA graphs captured in "
        f"{stats['capture_s']:.1f} s (included), warm-up {warm_s:.1f} s (excluded). Prompt tokens: median "
        f"{lengths.median():.0f}, mean {lengths.mean():.0f}, max {lengths.max():.0f}.\n\n"
        f"Same prompts and batches of 8 as plain: {agreement['identical']} of {agreement['prompts']} "
        f"answers identical, mean common prefix {agreement['mean_common_prefix']:.0f} of {new} tokens.\n\n"
        f"Estimate for {STUDY_PROMPTS:,} prompts x {STUDY_MODELS} models x {new} tokens: plain "
        f"{estimate['plain_h']:.1f} h, peftbench {estimate['peftbench_min']:.1f} min (plus model loading).\n\n"
        f"```\n{command.strip()}\n```\n"
    )
    print(f"wrote {out / 'generate.json'} and {out / 'generate.md'}")


if __name__ == "__main__":
    main()
