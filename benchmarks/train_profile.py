"""Where peftbench's training step spends its time at the gemma-3-1b-it shape (or another of train_speed.py's
shapes): wall time per step, GPU kernel time per step, and the kernels and operators that take it, for each
method.

Same model, synthetic batches and training path as train_speed.py (peftbench's path only); one untimed
pass over the batches first, so compilation and first-use costs are not in the profile.

  python benchmarks/train_profile.py --tokenizer DIR --methods lora galore   # GPU: writes train_profile.md
  python benchmarks/train_profile.py --shape qwen2.5-0.5b --methods galore     # train_profile_qwen2.5-0.5b.md
  python benchmarks/train_profile.py --tiny --steps 2 --out /tmp              # CPU smoke test
"""
import argparse
import sys
from pathlib import Path

import torch
import yaml
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import train_speed
from peftbench.train import batch_order, training_step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(train_speed.SHAPES), default="gemma-3-1b",
                        help="the architecture profiled")
    parser.add_argument("--tokenizer", help="folder with a Gemma 3 tokenizer (gemma-3-1b only)")
    parser.add_argument("--methods", nargs="+", default=["lora", "qlora", "galore", "hybrid"])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps: timed, then profiled")
    parser.add_argument("--rows", type=int, default=25, help="operators listed per table")
    parser.add_argument("--work", default="/tmp/peftbench-profile")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--tiny", action="store_true", help="toy model on CPU (smoke test)")
    args = parser.parse_args(argv)

    config = yaml.safe_load((train_speed.ROOT / "config.yaml").read_text())
    model_dir = train_speed.make_model_dir(Path(args.work), args.tokenizer, args.tiny, args.shape)
    from peftbench.model import load_tokenizer, model_path
    from transformers import AutoConfig

    tokenizer = load_tokenizer(model_dir)
    vocab = AutoConfig.from_pretrained(model_path(model_dir)).vocab_size
    examples = train_speed.synthetic_examples(8 * args.steps, 64 if args.tiny else 1024, vocab)
    batches = [[examples[i] for i in b] for b in batch_order([len(ids) for ids, _ in examples], 8, 0, 0)]
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    command = "python benchmarks/train_profile.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = torch.cuda.get_device_name() if cuda else "cpu"
    lines = [f"# Where the training step's time goes ({args.shape} shape, {machine})", "",
             f"Command: `{command}`", ""]
    for method in args.methods:
        kind, settings, training = train_speed.study_variant(method, args.tiny)
        model, optimizer, scheduler, trainable = train_speed.peftbench_path(kind, model_dir, settings, training,
                                                                            tokenizer)

        def step(batch):
            return training_step(model, optimizer, scheduler, batch, trainable, 1.0)

        measured = train_speed.measure(step, batches)  # an untimed pass first: compilation, first-use costs
        wall_ms = 1000 * measured["tokens"] / measured["tokens_per_s"] / len(batches)  # the median pass
        with profile(activities=activities) as prof:
            for batch in batches:
                step(batch)
            if cuda:
                torch.cuda.synchronize()
        events = prof.key_averages()
        # GPU kernels only, as the table's footer sums them: an operator's row repeats its kernels' time,
        # and a user annotation (the optimizer step) spans kernels that are counted already.
        kernel_ms = sum(e.self_device_time_total for e in events
                        if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1000 / len(batches)
        summary = f"{measured['tokens_per_s']:,.0f} real tokens/s; {wall_ms:.1f} ms per step of wall time"
        if cuda:
            summary += f", {kernel_ms:.1f} ms of it in GPU kernels (the rest: the GPU waits for the CPU)"
        lines += [f"## {method}", "", summary + ".", "",
                  "```", events.table(sort_by=sort_key, row_limit=args.rows, max_name_column_width=60), "```", ""]
        if cuda:  # where the CPU's time goes: what keeps the GPU waiting
            lines += ["CPU time, inclusive:", "", "```",
                      events.table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=60), "```", ""]
        print(summary, f"peak {torch.cuda.max_memory_allocated() / 1e9:.1f} GB" if cuda else "", flush=True)
        del model, optimizer, scheduler, trainable, step
        torch._dynamo.reset()
        train_speed.free_memory()
        out = Path(args.out)  # written after every method: a run cut short keeps what it measured
        out.mkdir(parents=True, exist_ok=True)
        name = "train_profile.md" if args.shape == "gemma-3-1b" else f"train_profile_{args.shape}.md"
        (out / name).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
