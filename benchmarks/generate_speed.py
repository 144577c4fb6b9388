"""Evaluation generation speed at a real model's shape: transformers' generate vs peftbench's fast path.

No checkpoint reaches the GPU machine, so the model is the real architecture with random bf16 weights: speed
and memory do not depend on weight values. --shape: gemma-3-1b-it (Gemma3TextConfig with its values, below;
the default), Llama-3.2-1B-Instruct or Qwen2.5-0.5B-Instruct (their hub config.json values, train_speed's
SHAPES).
In one process, on one model, greedy, --new-tokens (256) new tokens per prompt:
  plain            peftbench.generate.plain_greedy_ids: model.generate(do_sample=False), dynamic cache, at
                   batch 8 (what the workflow did) and at its best batch (plain_best: a short probe of
                   --plain-probe batches picks it, then it is measured like every other path);
  static_compiled  model.generate(do_sample=False, cache_implementation="static"): transformers compiles its
                   decoding step; at each of --static-batches (the best is kept);
  peftbench        peftbench.generate.fast_greedy_ids (its own KV cache and decode attention, a packed
                   prefill, one CUDA graph per decode step) at --batch (512, the workflow's cap) and at
                   every batch another path uses.
Every path decodes one left-padded batch: the first `batch` prompts of one seeded list (sources interleaved),
so paths at the same batch decode the same prompts, and a smaller batch's prompts are a prefix of a larger's.
Every path is warmed the same way: one untimed pass (the same call, full length: compilation and graph
captures happen there), then --passes timed passes, median kept. The GPU is kept busy for --burn-in seconds
first, and the timed passes are interleaved, the order of the paths reversed every other round (A B C, C B A,
A B C): a first-in-process or order effect shows as a spread between a path's passes.
Random weights never reliably say <end_of_turn>, so no path gets a stop id: every row decodes all new tokens
(generate is given an eos id that argmax cannot return). Real answers stop earlier, but a batch runs until its
longest answer, so this is the upper bound.

Utilisation (work done): decode FLOPs per new token = 2 x every decoder weight + 2 x the output layer
(262k x 1152, on the one new position) + attention over the real tokens each row holds (4 x head dims x keys,
the sliding window on sliding layers), averaged over the pass; prefill counted the same way, per prompt
token; padding not counted. Over 989 TFLOP/s dense bf16; decoding at these batches is bound by memory and
launches, not FLOPs, so this is small by nature.

Synthetic prompt lengths (tokens, seeded), a 1:1:1 mix like the study's alpaca / tulu-v2 / ultrachat_200k
test prompts: lognormal with medians 40, 150 and 250 (sigma 0.6, 0.9, 0.8), clipped to [8, 1024];
token ids uniform in the upper seven eighths of the vocabulary, <bos> first.

  python benchmarks/generate_speed.py --out DIR          # on one GPU: generate.json, .md (and decode_profile.md)
  python benchmarks/generate_speed.py --shape llama-3.2-1b --out DIR   # generate_llama.json, .md (qwen: _qwen)
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

from peftbench.generate import fast_greedy_ids, head_dim_of, plain_greedy_ids  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from train_speed import SHAPES, burn_in, shape_config  # noqa: E402  -- as the training benchmark

MIX = [(40, 0.6), (150, 0.9), (250, 0.8)]  # (median tokens, lognormal sigma): alpaca, tulu, ultrachat
STUDY_PROMPTS, STUDY_MODELS = 6_000, 5  # test prompts x models (base + 4 methods) the workflow generates for
PAD = 0


def model_config(shape, tiny):
    """The shape's architecture (tiny: a toy of its family, tests/tiny.py). Ids 0, 1 and 2 serve as padding, end
    and <bos> whatever the family (no stop id is used while timing), as in Gemma's vocabulary."""
    if shape == "gemma-3-1b":
        return gemma3_1b_config(tiny)
    if tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import tiny_family_config

        return tiny_family_config(SHAPES[shape][1], 512)
    config = shape_config(shape)
    config.pad_token_id, config.eos_token_id, config.bos_token_id = PAD, 1, 2
    return config


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



HOPPER_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM or H200


def work_flops(config, prompt_lengths, new):
    """FLOPs of the work one pass needs (see the module's docstring): prefill of the real prompt tokens
    (output layer on the last position only), then `new` tokens per row, each through every weight and the
    output layer, attending to the real tokens before it."""
    d, f, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    q, kv = config.num_attention_heads * head_dim_of(config), config.num_key_value_heads * head_dim_of(config)
    dense = 2 * L * (d * q + 2 * d * kv + q * d + 3 * d * f)
    window = getattr(config, "sliding_window", None) or 10**9
    types = getattr(config, "layer_types", None) or ["full_attention"] * L
    total = 0
    for length in prompt_lengths:
        total += length * dense + 2 * V * d + new * (dense + 2 * V * d)
        for t in types:
            w = window if t == "sliding_attention" else 10**9
            prefill_keys = sum(min(i, w) for i in range(1, length + 1))
            decode_keys = sum(min(length + i, w) for i in range(1, new + 1))
            total += 4 * q * (prefill_keys + decode_keys)
    return total


@torch.inference_mode()
def static_greedy_ids(model, prompts, max_new_tokens, batch_size, pad_id):
    """model.generate(do_sample=False, cache_implementation="static"): transformers' static KV cache, whose
    decoding step transformers compiles (torch.compile) on a GPU; length-sorted left-padded batches."""
    from peftbench.generate import _by_length, left_pad

    eos = [model.config.get_text_config().vocab_size]  # one argmax never returns: every row runs to the end
    results = [None] * len(prompts)
    for batch in _by_length(prompts, batch_size):
        input_ids, attention_mask = left_pad([prompts[i] for i in batch], pad_id, model.device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=eos, pad_token_id=pad_id, cache_implementation="static")
        for row, ids in zip(batch, output[:, input_ids.shape[1] :].tolist()):
            results[row] = ids
    return results


def profile_decode(model, prompts, new_tokens, out, device):
    """One decode step of peftbench's decoder at len(prompts) rows: torch.profiler over eager steps (operator
    and input-shape table: attention over the cache, the output layer, the greedy pick and stop check, mask
    building) and over CUDA-graph replays (kernel table), plus wall time per step both ways. -> markdown."""
    from torch.profiler import ProfilerActivity, profile

    from peftbench.generate import CACHE_ALIGN, _Decoder, decode_attention_on, left_pad

    rows = len(prompts)
    input_ids, attention_mask = left_pad(prompts, PAD, device)
    slots = -(-(input_ids.shape[1] + new_tokens - 1) // CACHE_ALIGN) * CACHE_ALIGN
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    sections, timings = [], {}
    with torch.inference_mode(), decode_attention_on(model):
        for use_graph in (False, True):
            stats = {"graphs": 0, "capture_s": 0.0}
            decoder = _Decoder(model, rows, slots, PAD, (1, 106), use_graph, stats)
            decoder.prefill(input_ids, attention_mask)
            for _ in range(4):  # warm (and, with graphs, capture)
                decoder.step()
            sync(device)
            start, n = time.perf_counter(), 16
            for _ in range(n):
                decoder.step()
            sync(device)
            label = "graph replay" if use_graph else "eager"
            timings[label] = (time.perf_counter() - start) / n * 1e3
            with profile(activities=activities, record_shapes=not use_graph) as prof:
                for _ in range(4):
                    decoder.step()
                sync(device)
            events = prof.key_averages(group_by_input_shape=not use_graph)
            table = events.table(sort_by=sort, row_limit=30, max_name_column_width=60, max_shapes_column_width=60)
            kernels = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
            gpu_ms = sum(e.device_time for e in kernels) / 1e3 / 4 if kernels else None
            timings[label + " GPU busy"] = gpu_ms
            sections.append(f"## {label}, 4 steps profiled\n\n```\n{table}\n```\n")
            del decoder
    lines = [f"# One decode step of peftbench's decoder at batch {rows}", "",
             f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; cache {slots} slots "
             f"(prompt width {input_ids.shape[1]} + {new_tokens} new, rounded to {CACHE_ALIGN}); stop ids (1, 106) "
             "as the workflow passes them; torch.profiler, self device time per operator.", "",
             "| step | wall ms per step | GPU busy ms per step (sum of kernel times) |", "|---|---|---|"]
    for label in ("eager", "graph replay"):
        busy = timings.get(label + " GPU busy")
        lines.append(f"| {label} | {timings[label]:.2f} | {'' if busy is None else f'{busy:.2f}'} |")
    text = "\n".join(lines) + "\n\n" + "\n".join(sections)
    (out / "decode_profile.md").write_text(text)
    return timings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma-3-1b", help="the architecture measured")
    parser.add_argument("--tiny", action="store_true", help="tiny random model, few prompts and tokens (CPU)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="folder for generate.json and .md")
    parser.add_argument("--batch", type=int, default=512, help="peftbench's batch (512: the workflow's cap)")
    parser.add_argument("--plain-probe", type=int, nargs="*", default=[64, 128, 256, 512],
                        help="plain generate batches probed (one short pass each) for its best batch")
    parser.add_argument("--probe-tokens", type=int, default=64, help="new tokens of a probe pass")
    parser.add_argument("--static-batches", type=int, nargs="*", default=[512],
                        help="batches of static-cache compiled generate (each compiles once, in its warm-up)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--passes", type=int, default=3, help="timed passes per path (median kept)")
    parser.add_argument("--burn-in", type=float, default=20.0, help="seconds of GPU work before anything is timed")
    parser.add_argument("--profile-batch", type=int, default=0, help="profile one decode step at this batch")
    parser.add_argument("--no-graph", action="store_true", help="fast path without CUDA graphs (eager steps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.plain_probe, args.probe_tokens, args.static_batches = 16, [16], 4, [16]
        args.new_tokens, args.passes = 12, 2
        args.profile_batch = args.profile_batch and 8
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        parser.error("the full-size benchmark needs a CUDA GPU (use --tiny on CPU)")
    command = "python benchmarks/generate_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from transformers import AutoModelForCausalLM

    # Leave torch.compile's settings at their defaults for static-cache generate: with automatic dynamic
    # shapes off (and a higher recompile limit), its warm-up pass at batch 512 on the H200 had not finished
    # after 7 minutes (2026-12-02), apparently recompiling step after step.
    begun = time.perf_counter()
    burned = burn_in(0 if args.tiny else args.burn_in)  # on a GPU only (device is cuda wherever there is one)
    torch.manual_seed(args.seed)
    config = model_config(args.shape, args.tiny)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters on {device}; "
          f"burn-in {burned} products", flush=True)
    scale = 1 / 16 if args.tiny else 1.0
    n_prompts = max([8, args.batch, *args.plain_probe, *args.static_batches])
    prompts = synthetic_prompts(n_prompts, config.vocab_size, scale, args.seed)
    new, graph = args.new_tokens, not args.no_graph

    def runner(kind, batch, new_tokens=new):
        some = prompts[:batch]
        if kind == "plain":
            return lambda: plain_greedy_ids(model, some, new_tokens, batch, PAD)
        if kind == "static_compiled":
            return lambda: static_greedy_ids(model, some, new_tokens, batch, PAD)
        return lambda: fast_greedy_ids(model, some, new_tokens, batch, PAD, cuda_graph=graph)

    # plain's best batch: one warm short pass per candidate (the probe is not a result; it picks a batch)
    probe = {}
    if args.plain_probe:
        timed(device, runner("plain", 8, args.probe_tokens))
        for batch in args.plain_probe:
            ids, seconds, _ = timed(device, runner("plain", batch, args.probe_tokens))
            probe[batch] = sum(map(len, ids)) / seconds
            print(f"probe: plain generate {probe[batch]:,.0f} new tokens/s at batch {batch} "
                  f"({args.probe_tokens} new tokens)", flush=True)
    plain_best_batch = max(probe, key=probe.get) if probe else 8

    paths = [("plain", 8), ("plain", plain_best_batch)]
    paths += [("static_compiled", b) for b in args.static_batches]
    paths += [("peftbench", b) for b in sorted({8, plain_best_batch, args.batch, *args.static_batches})]
    paths = list(dict.fromkeys(paths))
    name = lambda kind, batch: f"{kind}@{batch}"  # noqa: E731
    runs = {name(*p): {"kind": p[0], "batch": p[1], "passes_s": [], "peak_alloc_gb": 0.0} for p in paths}
    outputs = {}

    def save_partial(stage):  # a cut run keeps what it measured
        (out / "generate_partial.json").write_text(json.dumps(
            {"stage": stage, "plain_probe": {str(b): round(v, 1) for b, v in probe.items()},
             "probe_tokens": args.probe_tokens, "new_tokens": new, "runs": runs, "command": command}, indent=1) + "\n")

    save_partial("probe")
    # warm-up: one untimed pass each, the same call as the timed ones; static-cache generate last (it compiles)
    for p in sorted(paths, key=lambda p: p[0] == "static_compiled"):
        ids, seconds, _ = timed(device, runner(*p))
        runs[name(*p)]["warmup_s"] = seconds
        runs[name(*p)]["warmup_new_tokens_per_s"] = round(sum(map(len, ids)) / seconds, 1)
        outputs[name(*p)] = ids
        print(f"warm-up {name(*p)}: {seconds:.1f} s", flush=True)
        save_partial(f"warm-up {name(*p)}")
    for round_ in range(args.passes):
        for p in paths if round_ % 2 == 0 else paths[::-1]:
            ids, seconds, peak = timed(device, runner(*p))
            r = runs[name(*p)]
            r["passes_s"].append(seconds)
            r["peak_alloc_gb"] = max(r["peak_alloc_gb"], peak or 0.0)
            r["new_tokens"] = sum(map(len, ids))
            print(f"round {round_} {name(*p)}: {r['new_tokens'] / seconds:,.0f} new tokens/s ({seconds:.1f} s)",
                  flush=True)
        save_partial(f"round {round_}")
    for key, r in runs.items():
        seconds = sorted(r["passes_s"])[len(r["passes_s"]) // 2]
        r["new_tokens_per_s"] = round(r["new_tokens"] / seconds, 1)
        r["new_tokens_per_s_passes"] = [round(r["new_tokens"] / x, 1) for x in r["passes_s"]]
        r["seconds"] = round(seconds, 3)
        some = prompts[: r["batch"]]
        flops = work_flops(config, [len(x) for x in some], new)
        r["work_flops_per_pass"] = flops
        r["utilisation"] = flops / seconds / HOPPER_BF16_PEAK if device.type == "cuda" else None
        r["prompts"] = len(some)
        r["prompt_tokens_mean"] = round(sum(map(len, some)) / len(some), 1)
        r["peak_alloc_gb"] = round(r["peak_alloc_gb"], 2) if device.type == "cuda" else None

    def best(kind):
        return max((r for r in runs.values() if r["kind"] == kind), key=lambda r: r["new_tokens_per_s"])

    plain, plain_best, static = runs[name("plain", 8)], runs[name("plain", plain_best_batch)], best("static_compiled")
    fast = runs[name("peftbench", args.batch)]
    fast_at_static = runs[name("peftbench", static["batch"])]

    # Same prompts and batch (8) as plain: do both decoders give the same tokens?
    new_ids = outputs[name("peftbench", 8)]
    prefixes = [common_prefix(x, y) for x, y in zip(outputs[name("plain", 8)], new_ids)]
    agreement = {
        "prompts": len(prefixes), "identical": sum(p == new for p in prefixes),
        "mean_common_prefix": sum(prefixes) / len(prefixes),
        "note": "random weights give near-tied logits; in bf16 on GPU, kernels that sum in another order "
                "can flip such ties, as changing the batch size does for generate itself",
    }
    study_tokens = STUDY_PROMPTS * STUDY_MODELS * new
    estimate = {"plain_h": study_tokens / plain["new_tokens_per_s"] / 3600,
                "static_compiled_min": study_tokens / static["new_tokens_per_s"] / 60,
                "peftbench_min": study_tokens / fast["new_tokens_per_s"] / 60}
    profile = None
    if args.profile_batch:
        profile = profile_decode(model, prompts[: args.profile_batch], new, out, device)

    gpu = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or 'unknown'})"
    lengths = torch.tensor([len(p) for p in prompts[: args.batch]], dtype=torch.float)
    result = {
        "gpu": gpu,
        "plain": plain, "plain_best": plain_best, "static_compiled": static, "peftbench": fast,
        "runs": runs,
        "plain_probe": {"new_tokens": args.probe_tokens,
                        "new_tokens_per_s": {str(b): round(v, 1) for b, v in probe.items()}},
        "speedup": {"vs_plain": round(fast["new_tokens_per_s"] / plain["new_tokens_per_s"], 2),
                    "vs_plain_best": round(fast["new_tokens_per_s"] / plain_best["new_tokens_per_s"], 2),
                    "vs_static_compiled": round(fast["new_tokens_per_s"] / static["new_tokens_per_s"], 2),
                    "at_static_batch_vs_static_compiled":
                        round(fast_at_static["new_tokens_per_s"] / static["new_tokens_per_s"], 2)},
        "method": f"one process; burn-in {args.burn_in if burned else 0:.0f} s; every path one untimed warm-up "
                  f"pass then {args.passes} timed passes, interleaved, order reversed every other round; median",
        "new_tokens_per_prompt": new,
        "stop_tokens": "none (every row decodes all new tokens)",
        "prompt_tokens": {"median": lengths.median().item(), "mean": round(lengths.mean().item(), 1),
                          "max": lengths.max().item(), "mix": "lognormal (median, sigma) " + str(MIX),
                          "of": f"the first {args.batch} prompts"},
        "agreement_with_generate": agreement,
        "estimate_study": {"prompts": STUDY_PROMPTS, "models": STUDY_MODELS,
                           **{k: round(v, 2) for k, v in estimate.items()}},
        "decode_profile_ms": profile,
        "utilisation": "work FLOPs of the pass (prefill of real prompt tokens, every new token through every "
                       "weight and the output layer, attention over real tokens) / seconds / 989 TFLOP/s",
        "model": f"tiny random {SHAPES[args.shape][1]} (tests/tiny.py)" if args.tiny
                 else f"{SHAPES[args.shape][0].removesuffix('.config.json')} shape, random bf16 weights",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "transformers": version("transformers")},
        "wall_s": round(time.perf_counter() - begun, 1),
        "command": command.strip(),
    }
    stem = SHAPES[args.shape][2].replace("train", "generate")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(render(result))
    (out / "generate_partial.json").unlink()  # the finished run's files are the whole result
    print(render(result))
    print(f"wrote {out / stem}.json and .md")


def render(result):
    peak = lambda gb: "-" if gb is None else f"{gb:.1f}"  # noqa: E731
    pct = lambda x: "-" if x is None else f"{100 * x:.2f} %"  # noqa: E731
    labels = {"plain": "plain `model.generate` (dynamic cache)",
              "static_compiled": "`model.generate(cache_implementation=\"static\")`, compiled",
              "peftbench": "peftbench `fast_greedy_ids`"}
    keys = {id(result[k]): k for k in ("plain", "plain_best", "static_compiled", "peftbench")}
    v = result["versions"]
    lines = [f"# Evaluation generation speed: {result['model']}", "",
             f"{result['gpu']}; {result['new_tokens_per_prompt']} new tokens per prompt, no stop tokens; "
             f"torch {v['torch']}, transformers {v['transformers']}. {result['method']}.", "",
             "| decoder | batch | prompts | new tokens/s (median) | passes | warm-up (s) | peak allocated (GB) "
             "| utilisation (work done) | key |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in result["runs"].values():
        key = next((k for k in ("plain", "plain_best", "static_compiled", "peftbench")
                    if result[k]["kind"] == r["kind"] and result[k]["batch"] == r["batch"]), "")
        passes = ", ".join(f"{x:,.0f}" for x in r["new_tokens_per_s_passes"])
        lines.append(f"| {labels[r['kind']]} | {r['batch']} | {r['prompts']} | {r['new_tokens_per_s']:,.0f} | {passes} "
                     f"| {r['warmup_s']:.1f} | {peak(r['peak_alloc_gb'])} | {pct(r['utilisation'])} | {key} |")
    s, probe = result["speedup"], result["plain_probe"]
    lines += ["", f"peftbench at batch {result['peftbench']['batch']}: {s['vs_plain']}x plain batch 8, "
              f"{s['vs_plain_best']}x plain at its best batch ({result['plain_best']['batch']}), "
              f"{s['vs_static_compiled']}x static-cache compiled generate at its best batch "
              f"({result['static_compiled']['batch']}); at that same batch, "
              f"{s['at_static_batch_vs_static_compiled']}x.",
              "", f"Plain's best batch came from a probe of {probe['new_tokens']} new tokens per batch: " +
              ", ".join(f"{b}: {x:,.0f}" for b, x in probe["new_tokens_per_s"].items()) + " new tokens/s.",
              "", "Prompts: each path decodes the first `batch` prompts of one seeded list; prompt tokens of the "
              f"first {result['peftbench']['batch']}: median {result['prompt_tokens']['median']:.0f}, mean "
              f"{result['prompt_tokens']['mean']:.0f}, max {result['prompt_tokens']['max']:.0f}.",
              "", f"Utilisation: {result['utilisation']}.",
              "", f"Same 8 prompts, batch 8, plain vs peftbench: {result['agreement_with_generate']['identical']} of "
              f"{result['agreement_with_generate']['prompts']} answers identical, mean common prefix "
              f"{result['agreement_with_generate']['mean_common_prefix']:.0f} of "
              f"{result['new_tokens_per_prompt']} tokens.",
              "", "Estimate for {prompts:,} prompts x {models} models x {n} tokens: plain batch 8 {plain_h:.1f} h, "
              "static compiled {static_compiled_min:.1f} min, peftbench {peftbench_min:.1f} min (plus model loading)."
              .format(n=result["new_tokens_per_prompt"], **result["estimate_study"]), ""]
    if result.get("decode_profile_ms"):
        lines += ["Decode step profile: `decode_profile.md`.", ""]
    lines += [f"```\n{result['command']}\n```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
