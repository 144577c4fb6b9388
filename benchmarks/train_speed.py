"""Training speed and memory at a real model's shape: the plain recipe vs peftbench's own path.

No checkpoint reaches the GPU machine, so the model is the real architecture (--shape: gemma-3-1b-it, the
default, Llama-3.2-1B-Instruct or Qwen2.5-0.5B-Instruct; SHAPES names each one's config.json, its hub values)
with random bf16 weights: speed and memory do not depend on weight values. Gemma's tokenizer is the real one
(--tokenizer); Llama's and Qwen's are tests/tiny.py's, with their family's special tokens and chat template
and a small vocabulary: they give the chat format (turn tokens, the trained token rows), the token ids of
the examples are drawn from the model's whole vocabulary, so the tokenizer's size changes nothing measured.
For each method, in the same process and run, on the same synthetic batches:
  plain      the seeds' recipe: padded batches, the model's stock loss (full logits), peft defaults (fp32
             adapters, dropout 0.05), 4-bit base loaded as bitsandbytes gives it, GaLore over bf16 weights;
             no peft.prepare_model_for_kbit_training (the seed notebooks do not call it);
  plain + kbit prep   (4-bit methods only) the same with prepare_model_for_kbit_training, a common variant,
             reported as its own row, never as the baseline;
  peftbench  peftbench.trainable.build_trainable + peftbench.train.training_step on batches from
             peftbench.train.batch_order, exactly as the workflow trains: the same examples and the same
             number of examples per optimizer step, grouped by length (so less padding).

Every path is measured the same way: one untimed warm-up pass over its batches, then --passes timed passes,
median kept. GaLore's projection refresh (every projected gradient's basis recomputed, once per
update_proj_gap steps, 200 in config.yaml: by galore-torch's SVD in the plain recipe, by the Gram matrix's
eigenvectors in peftbench's) falls in no timed pass, so a GaLore path (galore, hybrid) also times it: the same batch
stepped with every refresh due and not due, alternating, median difference; `refresh` in its result, and
`tokens_per_s_with_refresh`, the pass's tokens over its time plus one refresh per update_proj_gap steps. The process first keeps the GPU busy for --burn-in seconds (clocks, lazy CUDA initialisation),
the order of plain and peftbench alternates from method to method (--order), and the process's first
measurement is measured again at the end (first_in_process_check): a first-in-process effect shows there.

Utilisation: besides PaLM's MFU (6 N per token with the output layer on every position, whatever is
trained), each path gets `utilisation`, the FLOPs of the work it does per real token: forward 2 per
weight, activation gradient 2 per weight, weight gradient 2 per *trained* weight only (LoRA, QLoRA and
DoRA train no base weight), adapters 6 per parameter, the output layer on the positions where the path
computes it (plain: every position; peftbench: answer positions only), causal attention over each
example's real length (sliding window on sliding layers); padding and recomputation are not counted.

Synthetic lengths (tokens per conversation, seeded), a 1:1:1 mix like alpaca / tulu-v2 / ultrachat_200k
cut at 1024: lognormal with medians 150, 450 and 1100 (sigma 0.6, 0.9, 0.5), at least 32 tokens; the
answer (the trained part) is the last 60 % of each conversation.

  python benchmarks/train_speed.py --tokenizer DIR            # on the GPU: writes benchmarks/train.json, .md
  python benchmarks/train_speed.py --shape llama-3.2-1b       # train_llama.json, .md (qwen2.5-0.5b: train_qwen)
  python benchmarks/train_speed.py --tiny --steps 2 --out /tmp # CPU smoke test on a tiny model of the shape's family
"""
import argparse
import gc
import json
import math
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from peftbench import graphs  # noqa: E402
from peftbench.chat import IGNORE_INDEX  # noqa: E402
from peftbench.generate import head_dim_of  # noqa: E402
from peftbench.methods import METHODS  # noqa: E402
from peftbench.model import load_model, prepare_model  # noqa: E402
from peftbench.train import batch_order, graph_metrics, training_step  # noqa: E402
from peftbench.trainable import build_trainable, causal_lm  # noqa: E402
from peftbench.variants import KNOBS  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MIX = [(150, 0.6), (450, 0.9), (1100, 0.5)]  # (median tokens, lognormal sigma) per source
HOPPER_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM or H200 (the same chip, more memory)
STUDY_EXAMPLES, STUDY_EPOCHS = 15_000, 2
# --shape: (the config.json beside this script, the tests/tiny.py family of its tokenizer and tiny model, the
# stem of the files written)
SHAPES = {
    "gemma-3-1b": ("gemma-3-1b-it.config.json", "gemma", "train"),
    "llama-3.2-1b": ("llama-3.2-1b-instruct.config.json", "llama", "train_llama"),
    "qwen2.5-0.5b": ("qwen2.5-0.5b-instruct.config.json", "qwen2", "train_qwen"),
}


def synthetic_examples(n, max_length, vocab_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(n):
        median, sigma = MIX[i % 3]
        length = int(math.exp(math.log(median) + sigma * torch.randn(1, generator=generator).item()))
        length = max(32, min(max_length, length))
        ids = torch.randint(vocab_size // 8, vocab_size - 8, (length,), generator=generator).tolist()
        ids[0] = 2  # <bos>
        answer_start = int(0.4 * length)
        examples.append((ids, [IGNORE_INDEX] * answer_start + ids[answer_start:]))
    return examples


def shape_config(shape):
    """The shape's architecture: its hub config.json values (benchmarks/*.config.json)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(Path(__file__).with_name(SHAPES[shape][0]))


def make_model_dir(work, tokenizer_dir, tiny, shape="gemma-3-1b"):
    """A prepare_model folder over random weights of the real (or, with --tiny, a toy) architecture."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf, family = work / "hf", SHAPES[shape][1]
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import adopt_special_tokens, make_tiny_model, make_tokenizer

    if tiny:
        make_tiny_model(hf, family)
    else:
        config = shape_config(shape)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if family == "gemma" else make_tokenizer(family)
        if family != "gemma":  # the hub's special-token ids are past this small tokenizer's vocabulary
            adopt_special_tokens(config, tokenizer)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a CPU: galore_refresh.py's quality figures
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(hf)
        del model
        tokenizer.save_pretrained(hf)
    # The Gemma tokenizer unpacked from the embedded GGUF has no chat template: the built-in format is Gemma's.
    model_cfg = {"source": "local", "path": str(hf)}
    if family == "gemma" and not tiny:
        model_cfg["chat_template"] = "gemma"
    prepare_model(model_cfg, work / "model")
    return work / "model"


# ----------------------------------------------------------------------------- the plain recipe

def study_variant(name, tiny=False):
    """A variant of config.yaml: (kind name, settings with the kind's defaults, training section with the
    variant's memory knobs), as the workflow trains it."""
    import yaml

    from peftbench.config import validate_config
    from peftbench.variants import resolve

    config = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    variant = resolve(config)[name]
    settings = dict(variant.settings)
    if tiny and "rank" in settings:
        settings["rank"] = 8
    return variant.kind, settings, {**config["training"], **variant.knobs}


def plain_model(kind, model_dir, settings, kbit_prep=False):
    """The seeds' recipe: stock peft/bitsandbytes/galore usage, no peftbench code. Full fine-tuning, which the
    seeds did not run, as a user writes it: bf16 weights, torch's fused AdamW (no float32 masters).
    kbit_prep: add peft's prepare_model_for_kbit_training (which casts every non-4-bit weight to float32);
    the seeds do not call it, so it is a variant, not the baseline."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    method = METHODS[kind]
    quantization = method.quantization(settings)
    model = load_model(model_dir, "bfloat16", "cuda" if torch.cuda.is_available() else "cpu", quantization)
    if quantization is not None and kbit_prep:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.requires_grad_(False)
    model.train()  # as the seeds trained: LoRA dropout active
    peft_config = method.peft_config(settings)
    if peft_config is not None:
        if hasattr(peft_config, "lora_dropout"):
            peft_config.lora_dropout = 0.05  # peft's documented default, which the seeds used
        model = get_peft_model(model, peft_config)
    targets = method.full_rank_targets(settings)
    if targets == "*":
        full_rank = list(model.parameters())
    else:
        full_rank = list(projection_weights(model, targets).values())
    for weight in full_rank:
        weight.requires_grad_(True)
    ids = {id(p) for p in full_rank}
    lora_params = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    if targets == "*":
        optimizer = torch.optim.AdamW(full_rank, lr=settings["lr"], fused=torch.cuda.is_available())
    elif full_rank:
        from galore_torch import GaLoreAdamW

        groups = [{"params": full_rank, "rank": settings["rank"], "update_proj_gap": settings["update_proj_gap"],
                   "scale": settings["scale"], "proj_type": "std"}]
        if lora_params:
            groups.append({"params": lora_params})
        optimizer = GaLoreAdamW(groups, lr=1e-5)
    else:
        optimizer = torch.optim.AdamW(lora_params, lr=2e-4)
    return model, optimizer, lora_params + full_rank


def projection_weights(model, targets):
    """The decoder layers' linear projections named in `targets` (leaf names), their weights by module name."""
    return {n: m.weight for n, m in model.named_modules()
            if n.split(".")[-1] in targets and isinstance(m, torch.nn.Linear) and ".layers." in n}


def plain_step(model, optimizer, examples, pad_id, trainable):
    from peftbench.train import collate

    device = next(p.device for p in trainable)
    input_ids, labels, attention_mask = collate(examples, pad_id, device)
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), int(attention_mask.sum())


# ----------------------------------------------------------------------------- measuring

def measure(step, batches, passes=3):
    """One untimed pass over all batches (first-use costs of every shape: kernels, allocator), then
    `passes` timed passes over the same batches; returns the median pass's tokens/s (a pass takes one to
    seven seconds, so one alone is at the mercy of the host), every pass's, and the peak memory."""
    cuda = torch.cuda.is_available()
    if cuda:
        graphs.reset_peak_memory_stats()
    for batch in batches:
        step(batch)
    rates = []
    for _ in range(passes):
        if cuda:
            torch.cuda.synchronize()
        tokens, losses, start = 0, [], time.perf_counter()
        for batch in batches:
            loss, real = step(batch)
            tokens += real
            losses.append(loss)
        if cuda:
            torch.cuda.synchronize()
        rates.append(tokens / (time.perf_counter() - start))
    median = sorted(rates)[len(rates) // 2]
    result = {"tokens_per_s": median, "tokens_per_s_passes": rates, "tokens": tokens,
              "final_loss": float(losses[-1])}
    if cuda:
        # counting the activations that CUDA graphs hold for backward (torch counts them only while capturing)
        result.update(peak_alloc_gb=graphs.max_memory_allocated() / 1e9,
                      peak_reserved_gb=graphs.max_memory_reserved() / 1e9)
    return result


def projected_states(optimizer):
    """(state, update_proj_gap) of every GaLore-projected weight: galore-torch's GaLoreAdamW and peftbench's
    keep the same per-weight state, whose step counter a refresh is due on (step % update_proj_gap == 0)."""
    return [(optimizer.state[p], group["update_proj_gap"]) for group in optimizer.param_groups if "rank" in group
            for p in group["params"] if "step" in optimizer.state.get(p, {})]


def time_refresh(step, batch, optimizer, repeats=3):
    """Seconds that a projection refresh adds to a step: the same batch stepped with no refresh due, then with
    every projector's refresh due (its step counter moved to the next multiple of the gap), `repeats` times,
    median of the differences. None for an optimizer without GaLore groups. The counters only pick when the
    refresh happens (and Adam's bias correction, a scalar), so the work is the training's own."""
    states = projected_states(optimizer)
    if not states:
        return None
    cuda = torch.cuda.is_available()

    def timed(due):
        for state, gap in states:
            if due:
                state["step"] = (state["step"] // gap + 1) * gap
            elif state["step"] % gap == 0:
                state["step"] += 1
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(batch)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    extras = []
    for _ in range(repeats):
        normal = timed(False)
        extras.append(timed(True) - normal)
    extras.sort()
    return {"seconds": extras[len(extras) // 2], "seconds_each": extras, "every_steps": states[0][1],
            "matrices": len(states)}


def with_refresh(result, steps_per_pass):
    """The pass's tokens/s with one refresh per update_proj_gap steps added to its time."""
    refresh = result["refresh"]
    seconds = result["tokens"] / result["tokens_per_s"] + steps_per_pass / refresh["every_steps"] * refresh["seconds"]
    return result["tokens"] / seconds


def peftbench_path(kind, model_dir, settings, training, tokenizer):
    """peftbench's trainable model in train mode, its optimizer, a constant schedule and the trained
    parameters, exactly as peftbench.train builds them (the schedule's shape does not change a step's cost)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, groups = build_trainable(METHODS[kind], model_dir, settings, training, tokenizer, device)
    model.train()
    optimizer = METHODS[kind].optimizer(groups, settings, training)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler, [p for group in groups for p in group]


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def study_row_lengths(max_length, vocab_size, batch_size):
    """The padded row lengths (graphs.TOKEN_MULTIPLE) that a study of STUDY_EXAMPLES synthetic examples
    meets over its epochs, batched as the workflow batches: the CUDA graphs it captures, once each."""
    from peftbench.graphs import TOKEN_MULTIPLE

    lengths = [len(ids) for ids, _ in synthetic_examples(STUDY_EXAMPLES, max_length, vocab_size, seed=1)]
    rows = {-(-sum(lengths[i] for i in batch) // TOKEN_MULTIPLE) * TOKEN_MULTIPLE
            for epoch in range(STUDY_EPOCHS) for batch in batch_order(lengths, batch_size, epoch, 0)}
    return len(rows)


def model_flops_per_token(config, mean_length):
    """6 N + 12 L H Dh T (PaLM's model FLOPs): N counts every matmul weight including the output layer."""
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q, kv = config.num_attention_heads * head_dim_of(config), config.num_key_value_heads * head_dim_of(config)
    n_matmul = L * (d * q + 2 * d * kv + q * d + 3 * d * f) + config.vocab_size * d
    return 6 * n_matmul + 12 * L * q * mean_length


def projection_shapes(config):
    """(in, out) of each decoder projection, by leaf name."""
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * head_dim_of(config), config.num_key_value_heads * head_dim_of(config)
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def attention_pairs(config, lengths):
    """Query-key pairs that causal attention computes over these examples, summed over layers (each example
    attends within itself; sliding layers see at most sliding_window keys)."""
    window = getattr(config, "sliding_window", None) or 10**9
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    total = 0
    for length in lengths:
        full = length * (length + 1) // 2
        w = min(window, length)
        sliding = w * (w + 1) // 2 + (length - w) * w
        total += sum(sliding if t == "sliding_attention" else full for t in types)
    return total


def work_flops_per_token(config, kind, settings, examples, output_positions):
    """FLOPs per real token of the work a path does (see the module's docstring): dense decoder products
    forward + activation gradient (4 per weight) + weight gradient of trained weights only (2 per weight),
    adapters (6 per parameter), the output layer on `output_positions` positions in all (forward +
    activation gradient, + weight gradient when the embedding trains), causal attention over real lengths
    (forward 4 and backward 8 per head dimension and query-key pair). Returns (flops, parts)."""
    method = METHODS[kind]
    shapes = projection_shapes(config)
    L, d, V = config.num_hidden_layers, config.hidden_size, config.vocab_size
    q = config.num_attention_heads * head_dim_of(config)
    dense = L * sum(i * o for i, o in shapes.values())
    targets = method.full_rank_targets(settings)
    trained = dense if targets == "*" else L * sum(i * o for n, (i, o) in shapes.items() if n in targets)
    adapters = 0
    peft_config = method.peft_config(settings)
    if peft_config is not None and getattr(peft_config, "r", None):
        names = peft_config.target_modules
        names = shapes if names in ("all-linear", None) else names
        adapters = L * sum(peft_config.r * (i + o) for n, (i, o) in shapes.items() if n in names)
    tokens = sum(len(ids) for ids, _ in examples)
    per_position = (6 if targets == "*" else 4) * V * d  # the output layer (tied: trains with full only)
    parts = {
        "decoder_forward_and_input_grad": 4 * dense,
        "decoder_weight_grad": 2 * trained,
        "adapters": 6 * adapters,
        "output_layer": per_position * output_positions / tokens,
        "attention": 12 * q * attention_pairs(config, [len(ids) for ids, _ in examples]) / tokens,
    }
    return sum(parts.values()), parts


def answer_positions(examples):
    """Positions whose next token is an answer token: where peftbench computes the output layer."""
    return sum(sum(1 for label in labels[1:] if label != IGNORE_INDEX) for _, labels in examples)


def burn_in(seconds):
    """Keep the GPU busy with bf16 matrix products (clocks up, CUDA, cuBLAS initialised) before timing."""
    if not torch.cuda.is_available() or seconds <= 0:
        return 0
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
        n += 20
    del a
    free_memory()
    return n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gemma-3-1b", help="the architecture measured")
    parser.add_argument("--tokenizer", help="folder with a Gemma 3 tokenizer (the same for 270M and 1B); "
                                            "gemma-3-1b only")
    parser.add_argument("--methods", nargs="+", default=["lora", "qlora", "galore", "hybrid", "dora", "full"],
                        help="variants of config.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per pass")
    parser.add_argument("--passes", type=int, default=3, help="timed passes after the warmup pass (median kept)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--work", default="/tmp/peftbench-bench")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--tiny", action="store_true", help="toy model on CPU (smoke test)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="also measure peftbench's path with training.gradient_checkpointing: true")
    parser.add_argument("--knobs", nargs="+", metavar="KNOB=VALUE", action="append", default=[],
                        help="also measure peftbench's path with these memory knobs of a variant "
                             "(checkpoint_layers=N, recompute_elementwise=true, micro_batch_tokens=N) over the variant's own; "
                             "given again, one more path per set, all side by side in the one process")
    parser.add_argument("--no-kbit-rows", action="store_true",
                        help="skip the 'plain + kbit prep' rows of the 4-bit methods")
    parser.add_argument("--order", choices=["alternate", "plain-first", "peftbench-first"], default="alternate",
                        help="which path of a method runs first (alternate: plain first for the 1st, 3rd, ... method)")
    parser.add_argument("--burn-in", type=float, default=20.0, help="seconds of GPU work before anything is timed")
    parser.add_argument("--no-recheck", action="store_true",
                        help="do not measure the process's first path again at the end")
    parser.add_argument("--render", metavar="TRAIN_JSON",
                        help="only rewrite the .md beside a train JSON this script wrote (in --out)")
    args = parser.parse_args(argv)
    if args.render:
        markdown = render_markdown(json.loads(Path(args.render).read_text()))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, Path(args.render).with_suffix(".md").name).write_text(markdown)
        return

    knob_sets = {}  # "peftbench + KNOB=VALUE ..." -> the knobs, one path per --knobs
    for given in args.knobs:
        knobs = {}
        for knob in given:
            key, _, value = knob.partition("=")
            if key not in KNOBS:
                parser.error(f"--knobs: {key} is not a memory knob ({', '.join(KNOBS)})")
            knobs[key] = value.lower() == "true" if KNOBS[key]["type"] == "boolean" else int(value)
        knob_sets["peftbench + " + " ".join(given)] = knobs
    started = time.perf_counter()
    burned = burn_in(0 if args.tiny else args.burn_in)
    print(f"burn-in: {burned} products of 8192^2 in {time.perf_counter() - started:.0f} s", flush=True)
    work = Path(args.work)
    model_dir = make_model_dir(work, args.tokenizer, args.tiny, args.shape)
    from peftbench.model import load_tokenizer, model_path
    from transformers import AutoConfig

    tokenizer = load_tokenizer(model_dir)
    model_config = AutoConfig.from_pretrained(model_path(model_dir))
    n_examples = args.batch_size * args.steps
    examples = synthetic_examples(n_examples, args.max_length, model_config.vocab_size)
    batches = [examples[i : i + args.batch_size] for i in range(0, n_examples, args.batch_size)]
    # peftbench's path batches the same examples as the workflow does: length-grouped, same batch size.
    grouped = [[examples[i] for i in b] for b in batch_order([len(ids) for ids, _ in examples], args.batch_size, 0, 0)]
    mean_length = sum(len(ids) for ids, _ in examples) / len(examples)
    study_rows = study_row_lengths(args.max_length, model_config.vocab_size, args.batch_size)
    flops_per_token = model_flops_per_token(model_config, mean_length)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak_flops = HOPPER_BF16_PEAK if "H100" in gpu or "H200" in gpu else None
    n_tokens, n_answers = sum(len(ids) for ids, _ in examples), answer_positions(examples)

    def measure_path(kind, settings, path, training):
        """Build one path, measure it, free it: its result dict."""
        if path.startswith("plain"):
            model, optimizer, trainable = plain_model(kind, model_dir, settings, kbit_prep=path != "plain")
            step = lambda b: plain_step(model, optimizer, b, tokenizer.pad_token_id, trainable)  # noqa: E731
            ordered = batches
        else:
            model, optimizer, scheduler, trainable = peftbench_path(kind, model_dir, settings, training, tokenizer)
            step = lambda b: training_step(model, optimizer, scheduler, b, trainable, 1.0,  # noqa: E731
                                           training.get("micro_batch_tokens", 0))
            ordered = grouped
        result = measure(step, ordered, args.passes)
        if not path.startswith("plain"):
            result["cuda_graphs"] = graph_metrics(causal_lm(model))  # captured in the warm-up pass
        # a batch of the pass's median length: both paths refresh the same matrices
        refresh = time_refresh(step, sorted(ordered, key=lambda b: sum(len(ids) for ids, _ in b))[len(ordered) // 2],
                               optimizer)
        if refresh is not None:
            result["refresh"] = refresh
            result["tokens_per_s_with_refresh"] = with_refresh(result, len(ordered))
            if torch.cuda.is_available():  # the peak since measure() began, the refresh included
                result["peak_alloc_gb_with_refresh"] = graphs.max_memory_allocated() / 1e9
        del model, optimizer, trainable, step
        if not path.startswith("plain"):
            del scheduler
            torch._dynamo.reset()
        free_memory()
        return result

    results, sequence, first = {}, 0, None
    for index, method in enumerate(args.methods):  # variants of config.yaml
        kind, settings, variant_training = study_variant(method, args.tiny)
        plain_paths = ["plain"]
        if METHODS[kind].quantization(settings) is not None and not args.no_kbit_rows:
            plain_paths.append("plain + kbit prep")
        fast_paths = {"peftbench": variant_training}
        if args.checkpointing:  # the same path with the memory knob on
            fast_paths["peftbench + checkpointing"] = dict(variant_training, gradient_checkpointing=True)
        for path, knobs in knob_sets.items():
            fast_paths[path] = {**variant_training, **knobs}
        plain_first = {"plain-first": True, "peftbench-first": False}.get(args.order, index % 2 == 0)
        order = plain_paths + list(fast_paths) if plain_first else list(fast_paths) + plain_paths
        results[method] = {}
        for path in order:
            r = measure_path(kind, settings, path, fast_paths.get(path))
            sequence += 1
            r["measured"] = sequence  # position in the process's order of measurements
            first = first or (method, path, kind, settings, fast_paths.get(path))
            outputs = n_tokens if path.startswith("plain") else n_answers
            work, parts = work_flops_per_token(model_config, kind, settings, examples, outputs)
            r["work_flops_per_token"] = work
            r["work_flops_parts"] = parts
            r["utilisation"] = r["tokens_per_s"] * work / peak_flops if peak_flops else None
            r["mfu"] = r["tokens_per_s"] * flops_per_token / peak_flops if peak_flops else None
            results[method][path] = r
        paths = {path: results[method].pop(path) for path in plain_paths + list(fast_paths)}
        results[method].update(paths)  # the table's order: plain rows first
        p, f = results[method]["plain"], results[method]["peftbench"]
        results[method]["speedup"] = f["tokens_per_s"] / p["tokens_per_s"]
        if "peak_alloc_gb" in p:
            results[method]["memory_ratio"] = f["peak_alloc_gb"] / p["peak_alloc_gb"]
        for path in list(fast_paths)[1:]:  # the same method with a knob: its own ratios to plain
            other = results[method][path]
            results[method].setdefault("other_paths", {})[path] = {
                "speedup": other["tokens_per_s"] / p["tokens_per_s"],
                "memory_ratio": other["peak_alloc_gb"] / p["peak_alloc_gb"] if "peak_alloc_gb" in p else None}
        if "refresh" in p and "refresh" in f:
            results[method]["speedup_with_refresh"] = f["tokens_per_s_with_refresh"] / p["tokens_per_s_with_refresh"]
        if "plain + kbit prep" in paths:
            results[method]["speedup_vs_kbit_prep"] = f["tokens_per_s"] / paths["plain + kbit prep"]["tokens_per_s"]
        study_tokens = STUDY_EXAMPLES * STUDY_EPOCHS * mean_length
        results[method]["study_hours"] = {k: study_tokens / results[method][k]["tokens_per_s"] / 3600 for k in paths}
        print(method, json.dumps(results[method]), flush=True)
        # after each method: a cut run keeps what it measured
        write_report(args, argv, gpu, mean_length, flops_per_token, results, study_rows, burned)

    check = None
    if first is not None and not args.no_recheck:
        method, path, kind, settings, training = first
        again = measure_path(kind, settings, path, training)
        was = results[method][path]["tokens_per_s"]
        check = {"method": method, "path": path, "first_tokens_per_s": was,
                 "again_tokens_per_s": again["tokens_per_s"], "again_passes": again["tokens_per_s_passes"],
                 "again_over_first": again["tokens_per_s"] / was}
        print("first-in-process check:", json.dumps(check), flush=True)
    write_report(args, argv, gpu, mean_length, flops_per_token, results, study_rows, burned, check)


def host_cpu():
    """The host's CPU model: peftbench's step waits on kernel launches, so its speed follows the CPU's."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def installed_version(name):
    """A package's version, None where it is not installed (a run without the 4-bit methods needs no
    bitsandbytes: its report must still be written)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_report(args, argv, gpu, mean_length, flops_per_token, results, study_rows, burned=0, check=None):
    command = "python benchmarks/train_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "gpu": gpu,
        "command": command,
        "shape": f"{SHAPES[args.shape][0].removesuffix('.config.json')} (random weights)" if not args.tiny
                 else f"tiny {SHAPES[args.shape][1]}",
        "batch_size": args.batch_size, "timed_steps": args.steps, "timed_passes": args.passes,
        "warmup": "one untimed pass over the same batches", "tokens_per_s": "the median timed pass",
        "burn_in_s": args.burn_in if burned else 0, "order": args.order,
        "first_in_process_check": check,
        "plain_recipe": "the seeds': stock loss over padded batches, peft defaults, no prepare_model_for_kbit_training",
        "utilisation": "tokens/s x FLOPs of the work the path does per real token (work_flops_per_token: weight "
                       "gradients of trained weights only, the output layer where computed, causal attention over "
                       "real lengths) / 989 TFLOP/s dense bf16",
        "mfu": "PaLM's convention: 6 N (output layer on every position, every weight trained) + 12 L H Dh T per "
               "token / 989 TFLOP/s",
        "cpu": host_cpu(),
        "mean_tokens_per_example": mean_length, "model_flops_per_token": flops_per_token,
        "study_padded_row_lengths": study_rows,
        "versions": {name: installed_version(name)
                     for name in ("torch", "transformers", "peft", "bitsandbytes", "galore-torch")},
        "python": platform.python_version(),
        "methods": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = SHAPES[args.shape][2]
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (out / f"{stem}.md").write_text(markdown)
    print(markdown, flush=True)


def render_markdown(report):
    """train.md from train.json's contents alone (`--render` rewrites it from a committed train.json)."""
    results, study_rows = report["methods"], report["study_padded_row_lengths"]
    lines = [f"# Training speed at the {report['shape']} shape on {report['gpu']}", "",
             f"Command: `{report['command']}`", "",
             *([f"Processes: {report['processes']}.", ""] if report.get("processes") else []),
             "| method | path | real tokens/s | peak alloc (GB) | peak reserved (GB) | utilisation (work done) "
             "| MFU (PaLM 6N) | study time (h) | measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda x: "" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    for method, r in results.items():
        for path in r["study_hours"]:
            m = r[path]
            lines.append(f"| {method} | {path} | {m['tokens_per_s']:,.0f} | {m.get('peak_alloc_gb', float('nan')):.1f} | "
                         f"{m.get('peak_reserved_gb', float('nan')):.1f} | {pct(m.get('utilisation'))} | "
                         f"{pct(m.get('mfu'))} | {r['study_hours'][path]:.2f} | {m.get('measured', '')} |")
    if "utilisation" in report:
        lines += ["", "Utilisation (work done): " + report["utilisation"] + ". MFU: " + report["mfu"] + ". "
                  "Plain recipe: " + report.get("plain_recipe", "") + "."]
    if report.get("order"):
        lines += ["", f"Order: {report['order']} (the `measured` column: position in the process); every path "
                  f"warmed by one untimed pass, then {report['timed_passes']} timed passes, median; "
                  f"{report.get('burn_in_s', 0):.0f} s of GPU burn-in before the first."]
        check = report.get("first_in_process_check")
        if check:
            lines += [f"First-in-process check: {check['method']} / {check['path']}, measured first at "
                      f"{check['first_tokens_per_s']:,.0f} tokens/s, again at the end at "
                      f"{check['again_tokens_per_s']:,.0f} ({check['again_over_first']:.2f}x)."]
    lines += ["", "Study time: 15,000 examples x 2 epochs at the measured tokens/s "
              f"(mean {report['mean_tokens_per_example']:.0f} tokens per example).", ""]
    graphed = {m: r["peftbench"]["cuda_graphs"] for m, r in results.items() if r["peftbench"].get("cuda_graphs")}
    if graphed:
        # the first capture includes the eager warm-up that compiles the layers; later lengths only record
        further = {m: (g["capture_seconds"] - g["first_capture_seconds"]) / max(g["row_lengths"] - 1, 1)
                   for m, g in graphed.items()}
        lines += ["CUDA graphs: peftbench's path captured the decoder once per padded row length, in the untimed "
                  "warm-up pass; the first capture includes compiling the layers (" +
                  ", ".join(f"{m}: {g['row_lengths']} lengths, the first {g['first_capture_seconds']:.1f} s, "
                            f"each further one {further[m]:.2f} s" for m, g in graphed.items()) +
                  f"). A study meets {study_rows} lengths: its captures, compilation included, take about " +
                  ", ".join(f"{m} {g['first_capture_seconds'] + (study_rows - 1) * further[m]:.0f} s"
                            for m, g in graphed.items()) + " of its training time.", ""]
    lines += ["| method | speed-up vs plain (target >= 3x) | peak memory ratio (target <= 0.33) "
              "| speed-up vs plain + kbit prep |", "|---|---|---|---|"]
    for method, r in results.items():
        ratio, kbit = r.get("memory_ratio"), r.get("speedup_vs_kbit_prep")
        lines.append(f"| {method} | {r['speedup']:.2f}x | {'' if ratio is None else f'{ratio:.2f}'} | "
                     f"{'' if kbit is None else f'{kbit:.2f}x'} |")
        for path, other in r.get("other_paths", {}).items():
            ratio = "" if other["memory_ratio"] is None else f"{other['memory_ratio']:.2f}"
            lines.append(f"| {method}, {path} | {other['speedup']:.2f}x | {ratio} | |")
    refreshed = {m: r for m, r in results.items() if "speedup_with_refresh" in r}
    if refreshed:
        lines += ["", "GaLore's projection refresh (every projected gradient's basis recomputed once per "
                  "update_proj_gap steps: galore-torch's SVD in the plain recipe, the Gram matrix's eigenvectors in "
                  "peftbench's), which no timed pass holds, timed apart on a batch of the median length and counted at "
                  "its rate:", "",
                  "| method | path | refresh (s) | every (steps) | tokens/s with refresh | speed-up with refresh |",
                  "|---|---|---|---|---|---|"]
        for method, r in refreshed.items():
            for path, ratio in (("plain", ""), ("peftbench", f"{r['speedup_with_refresh']:.2f}x")):
                m = r[path]
                lines.append(f"| {method} | {path} | {m['refresh']['seconds']:.2f} | {m['refresh']['every_steps']} | "
                             f"{m['tokens_per_s_with_refresh']:,.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
