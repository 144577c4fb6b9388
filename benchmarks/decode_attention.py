"""One decode step's attention at the gemma-3-1b-it shape: the ways to lay out grouped queries, timed alone.

gemma-3-1b-it has 4 query heads per key/value head (one key/value head, head_dim 256). In a decode step each
row has one query per head; the cache of each row is read by all 4. Ways to compute it, each on the same
random bf16 tensors, with a boolean padding mask [rows, 1, 1, slots] as the decoder passes it:
  repeat         transformers' sdpa path under torch.compile (and before transformers 5.2x): the keys and
                 values copied once per query head (repeat_kv), then sdpa with 4 heads of 1 query;
  folded_sdpa    peftbench.generate.decode_attention: the 4 queries of a group as the query axis of their
                 key/value head, sdpa reads each row's cache once (as is, and under each sdpa backend that
                 accepts it);
  folded_matmul  the same layout by hand: two batched matrix products and a float32 softmax.
Slots: 512 (a sliding layer's ring, the window) and 1280 (a full layer's cache for a 1024-token prompt plus
256 new tokens). Each timed as the median of --repeats CUDA-event timings of --calls calls, after a warm-up.
The bytes a call must read (keys and values once) over its time gives the bandwidth it reaches.

  python benchmarks/decode_attention.py --out DIR      # on a GPU: decode_attention.json and .md
"""
import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROWS, KV_HEADS, GROUPS, HEAD_DIM = 512, 1, 4, 256


def repeat(q, k, v, mask, scale):
    k4, v4 = k.repeat_interleave(GROUPS, 1), v.repeat_interleave(GROUPS, 1)
    return F.scaled_dot_product_attention(q, k4, v4, attn_mask=mask, scale=scale)


def folded_sdpa(q, k, v, mask, scale):
    rows = q.shape[0]
    return F.scaled_dot_product_attention(q.view(rows, KV_HEADS, GROUPS, HEAD_DIM), k, v, attn_mask=mask, scale=scale)


def folded_matmul(q, k, v, mask, scale):
    rows = q.shape[0]
    scores = q.view(rows, KV_HEADS, GROUPS, HEAD_DIM) @ k.transpose(-1, -2) * scale
    weights = scores.float().masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)
    return weights @ v


def time_calls(fn, calls, repeats):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls * 1e3)  # microseconds per call
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    torch.manual_seed(0)
    results, scale = [], HEAD_DIM**-0.5
    backends = {"default": None, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    for slots in (512, 1280):
        q = torch.randn(ROWS, KV_HEADS * GROUPS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(ROWS, KV_HEADS, slots, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        mask = torch.rand(ROWS, 1, 1, slots, device="cuda") < 0.8
        mask[..., -1] = True
        reference = folded_matmul(q, k, v, mask, scale).float()
        must_read = 2 * k.numel() * k.element_size()
        ways = [("repeat", repeat, "default"), ("folded_matmul", folded_matmul, "default")]
        ways += [("folded_sdpa", folded_sdpa, name) for name in backends]
        for way, fn, backend in ways:
            row = {"slots": slots, "way": way, "sdpa_backend": backend}
            try:
                with sdpa_kernel(backends[backend]) if backends[backend] else torch.inference_mode():
                    out = fn(q, k, v, mask, scale)
                    row["max_abs_diff"] = (out.float().reshape(reference.shape) - reference).abs().max().item()
                    row["us_per_call"] = round(time_calls(lambda: fn(q, k, v, mask, scale), args.calls, args.repeats), 1)
                row["read_gb_per_s"] = round(must_read / row["us_per_call"] / 1e3, 1)
            except RuntimeError as error:
                row["error"] = str(error).splitlines()[0][:160]
            results.append(row)
            print(row, flush=True)
    gpu = torch.cuda.get_device_name()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": gpu, "rows": ROWS, "kv_heads": KV_HEADS, "groups": GROUPS, "head_dim": HEAD_DIM,
            "torch": torch.__version__, "python": platform.python_version(),
            "command": "python benchmarks/decode_attention.py --out DIR", "results": results}
    (out / "decode_attention.json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [f"# Decode-step attention, {ROWS} rows x {KV_HEADS * GROUPS} query heads over {KV_HEADS} key/value head "
             f"(head_dim {HEAD_DIM}), bf16", "", f"{gpu}, torch {torch.__version__}. `{meta['command']}`", "",
             "| slots | way | sdpa backend | µs per call | keys+values read, GB/s | max abs diff |", "|---:|---|---|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['slots']} | {r['way']} | {r['sdpa_backend']} | refused: {r['error']} | | |")
        else:
            lines.append(f"| {r['slots']} | {r['way']} | {r['sdpa_backend']} | {r['us_per_call']:,.1f} | "
                         f"{r['read_gb_per_s']:,.0f} | {r['max_abs_diff']:.3g} |")
    (out / "decode_attention.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
