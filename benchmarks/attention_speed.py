"""Attention kernels at the gemma-3-1b-it shape on packed training batches: forward and backward time per step.

peftbench trains on packed rows (train.pack): every example of a batch end to end, attention kept inside
each example. This times the kernels that can do that, alone, on train_speed.py's synthetic batches:
  flex            flex attention with the block mask transformers builds (document-causal; plus the
                  sliding window of 512 on the sliding layers), compiled as the decoder layers compile it
                  (dynamic shapes); `flex:KEY=VALUE,...` passes kernel options (e.g. bwd_BLOCK_M1=32)
  flex_autotune   the same, compiled with max-autotune (Inductor times its candidate kernel configs)
  varlen          torch.nn.attention.varlen.varlen_attn (FlashAttention, cumulative sequence offsets)
Per step = GPU kernel time (torch.profiler) summed over the model's layers (22 sliding, 4 full), each\nrun on every batch of the step: the q, k, v gradients' accumulation included, as in training.
It also checks that each kernel's output and gradients match flex's (bf16 tolerance).

  python benchmarks/attention_speed.py flex varlen flex:bwd_BLOCK_M1=32,bwd_BLOCK_N2=32   # GPU
"""
import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import train_speed
from peftbench import attention
from peftbench.train import batch_order

CONFIG = json.loads((Path(__file__).parent / "gemma-3-1b-it.config.json").read_text())
HEADS, KV_HEADS, HEAD_DIM = CONFIG["num_attention_heads"], CONFIG["num_key_value_heads"], CONFIG["head_dim"]
WINDOW, SCALE = CONFIG["sliding_window"], CONFIG["query_pre_attn_scalar"] ** -0.5
LAYERS = {kind: CONFIG["layer_types"].count(f"{kind}_attention") for kind in ("sliding", "full")}


def packed_lengths(steps, batch_size):
    """The example lengths of each packed row, as peftbench batches train_speed.py's synthetic examples."""
    examples = train_speed.synthetic_examples(steps * batch_size, 1024, 1000)
    lengths = [len(ids) for ids, _ in examples]
    return [[lengths[i] for i in batch] for batch in batch_order(lengths, batch_size, 0, 0)]


def block_masks(lengths, device):
    document = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))

    def causal(b, h, q, kv):
        return (document[q] == document[kv]) & (q >= kv)

    def sliding(b, h, q, kv):
        return causal(b, h, q, kv) & (q - kv < WINDOW)

    total = sum(lengths)
    return {kind: create_block_mask(fn, None, None, total, total, device=device)
            for kind, fn in (("full", causal), ("sliding", sliding))}


def flex_kernel(options, mode=None):
    compiled = torch.compile(flex_attention, dynamic=True, mode=mode)

    def run(q, k, v, lengths, kind, masks):  # q: (T, heads, dim) -> (1, heads, T, dim)
        out = compiled(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                       block_mask=masks[kind], scale=SCALE, enable_gqa=True, kernel_options=options or None)
        return out[0].transpose(0, 1)

    return run


def varlen_kernel():
    """peftbench's own FlashAttention call (peftbench.attention), on the packed examples' offsets."""
    if "window_size" not in attention.VARLEN_PARAMETERS:
        raise RuntimeError("this torch's varlen_attn has no sliding window")
    offsets_of = {}

    def run(q, k, v, lengths, kind, masks):
        key = tuple(lengths)
        if key not in offsets_of:  # built once, as pack() would build them with the batch
            offsets_of[key] = attention.sequence_offsets(lengths, q.device)
        window = (WINDOW - 1, 0) if kind == "sliding" else (-1, 0)
        return attention.varlen_kernel(q, k, v, offsets_of[key], max(lengths), SCALE, window)

    return run


def make_kernel(text):
    name, _, option_text = text.partition(":")
    options = {}
    for item in filter(None, option_text.split(",")):
        key, _, value = item.partition("=")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    if name == "flex":
        return flex_kernel(options)
    if name == "flex_autotune":
        return flex_kernel(options, mode="max-autotune-no-cudagraphs")
    if name == "varlen":
        return varlen_kernel()
    raise SystemExit(f"unknown kernel {text!r}")


def inputs(total, device, seed):
    generator = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(total, heads, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=generator)
               for heads in (HEADS, KV_HEADS, KV_HEADS))
    grad = torch.randn(total, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16, generator=generator)
    return [t.requires_grad_() for t in (q, k, v)], grad


def fwd_bwd(kernel, q, k, v, grad, lengths, kind, masks):
    q.grad = k.grad = v.grad = None  # each backward writes fresh gradients, as in a layer
    out = kernel(q, k, v, lengths, kind, masks)
    torch.autograd.backward(out, grad)
    return out


def kernel_ms(fn):
    """GPU kernel time of fn() in ms, as the profiler sums it (host overheads and idle gaps excluded:
    in training these kernels run inside compiled layers, not one Python call each as here)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()
               if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1000


def time_kernel(kernel, batches, device, reps):
    """GPU kernel milliseconds per training step (every batch once, through every layer), forward and
    backward, and per layer kind."""
    data = [(lengths, block_masks(lengths, device), *inputs(sum(lengths), device, i)) for i, lengths in enumerate(batches)]
    for lengths, masks, (q, k, v), grad in data:  # compiles every shape
        for kind in LAYERS:
            fwd_bwd(kernel, q, k, v, grad, lengths, kind, masks)
    per_kind = {}
    for kind in LAYERS:
        def run():
            for _ in range(reps):
                for lengths, masks, (q, k, v), grad in data:
                    fwd_bwd(kernel, q, k, v, grad, lengths, kind, masks)
        per_kind[kind] = kernel_ms(run) / reps / len(batches)  # one layer, one step
    return {"forward_backward_ms": sum(per_kind[kind] * LAYERS[kind] for kind in LAYERS),
            "forward_backward_per_layer_ms": per_kind}


def compare(kernel, reference, lengths, device):
    """Largest differences from the reference kernel: output and q, k, v gradients."""
    masks = block_masks(lengths, device)
    diffs = {}
    for kind in LAYERS:
        results = []
        for fn in (kernel, reference):
            (q, k, v), grad = inputs(sum(lengths), device, 123)
            out = fwd_bwd(fn, q, k, v, grad, lengths, kind, masks)
            results.append([out.detach(), q.grad, k.grad, v.grad])
        diffs[kind] = {name: float((a.float() - b.float()).abs().max() / b.float().abs().max())
                       for name, a, b in zip(("out", "dq", "dk", "dv"), *results)}
    return diffs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs="+", help="flex[:KEY=VALUE,...] | flex_autotune | varlen")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args(argv)
    device = "cuda"
    torch._dynamo.config.recompile_limit = 64
    batches = packed_lengths(args.steps, args.batch_size)
    reference = flex_kernel({})
    report = {"command": "python benchmarks/attention_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": LAYERS,
              "tokens_per_step": sum(map(sum, batches)) / len(batches), "kernels": {}}
    for text in args.kernels:
        start = time.perf_counter()
        try:
            kernel = make_kernel(text)
            result = time_kernel(kernel, batches, device, args.reps)
            result["max_relative_diff_vs_flex"] = compare(kernel, reference, batches[0], device)
        except Exception as error:  # one kernel's failure must not lose the others' numbers
            result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            traceback.print_exc()
        result["seconds"] = time.perf_counter() - start
        report["kernels"][text] = result
        print(text, json.dumps(result), flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "attention_speed.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
