"""train: fine-tune the base model as one variant (a kind and its settings) and save what changed.

A plain loop rather than the HF Trainer, for three reasons that matter to a fair, fast comparison:
the loss projects only the assistant positions through the 262k-row output layer (the full logits are
most of the compute on CPU and half the memory on GPU); every method sees the same batches in the same
order from one seeded permutation; and the timing covers training alone. Outputs: the trained weights
(trainable.save_trained) and train_metrics.json (time, peak memory, tokens, tokens/s, loss per step).
With a checkpoint folder (--checkpoints), the run saves a checkpoint every training.checkpoint_every steps
and a rerun resumes from the last one, bitwise identical on CPU to a run that was never interrupted
(checkpoint.py).
"""
import argparse
import itertools
import json
import logging
import math
import resource
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from peftbench import attention, graphs
from peftbench.chat import IGNORE_INDEX, encode_chats
from peftbench.checkpoint import Checkpoints, file_sha256
from peftbench.io import atomic_dir, read_json, read_jsonl, write_json
from peftbench.methods import find_kind
from peftbench.errors import UserError
from peftbench.model import load_tokenizer, model_path, to_device
from peftbench.variants import Variant, at_rate, check_with_peft, learned_training, learning_rate_keys
from peftbench.trainable import TokenRows, build_trainable, causal_lm, checkpointed_layers, save_trained

log = logging.getLogger(__name__)
METRICS = "train_metrics.json"


def resolve_device(name="auto"):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def batch_order(lengths, batch_size, epoch, seed, group_batches=8):
    """The same batches in the same order for every method. A seeded permutation per epoch, cut into
    windows of `group_batches` batches; within a window, examples of similar length share a batch (less
    padding), and the batches are shuffled again so that lengths don't drift through the epoch."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * group_batches
    batches = []
    for start in range(0, len(order), window):
        by_length = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def collate(examples, pad_id, device):
    """Right-pad a list of (input_ids, labels) into tensors: the plain recipe's batches (the reference in
    tests and benchmarks; training packs instead)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return input_ids.to(device), labels.to(device), attention_mask.to(device)


def pack(examples, device, multiple=1, slots=None):
    """The batch as one row, examples end to end, with position ids restarting at each example, and the
    examples' lengths: no padding to compute or store. Attention stays inside each example: FlashAttention
    over the examples' offsets on a GPU (peftbench.attention); elsewhere, given restarting position ids and
    no attention mask, transformers masks per example. The loss never crosses a boundary, since each
    example's first token (<bos>) is not an answer token.

    Returns input_ids, labels, position_ids, lengths and the indices of the positions that predict an answer
    token, found here on the CPU so that the GPU never has to report them back. For CUDA graphs (graphs.py),
    which replay fixed shapes: a filler example (token 0, outside the loss) brings the row to a multiple of
    `multiple` tokens, and empty examples bring the count of examples to `slots`."""
    lengths = [len(ids) for ids, _ in examples]
    pieces = list(examples)
    if slots is not None:
        if len(examples) >= slots:
            raise ValueError(f"a row of {slots} slots holds at most {slots - 1} examples and the filler")
        filler = -sum(lengths) % multiple
        pieces.append(([0] * filler, [IGNORE_INDEX] * filler))
        lengths += [filler] + [0] * (slots - len(examples) - 1)
    input_ids = torch.tensor([token for ids, _ in pieces for token in ids])
    labels = torch.tensor([label for _, labs in pieces for label in labs])
    position_ids = torch.cat([torch.arange(len(ids)) for ids, _ in pieces])
    predicting = (labels[1:] != IGNORE_INDEX).nonzero().flatten()
    tensors = [input_ids, labels, position_ids, predicting]
    # one copy, which on a GPU the CPU does not wait for
    input_ids, labels, position_ids, predicting = to_device(torch.cat(tensors), device).split(list(map(len, tensors)))
    return input_ids[None], labels[None], position_ids[None], tuple(lengths), predicting


def pack_for(model, examples, device):
    """pack(examples, device) as model trains on them: with its decoder's CUDA graphs attached (graphs.py),
    which replay fixed shapes, the row padded to a multiple of TOKEN_MULTIPLE and a fixed count of examples."""
    decoder_graphs = graphs.attached(causal_lm(model))
    shape = {"multiple": graphs.TOKEN_MULTIPLE, "slots": decoder_graphs.slots} if decoder_graphs else {}
    return pack(examples, device, **shape)


LOSS_CHUNK = 1024  # answer positions per output-layer chunk: bounds the logits' memory on long batches


def summed_cross_entropy(logits, hidden, targets):
    return F.cross_entropy(logits(hidden).float(), targets, reduction="sum")


# On GPU, compiled with the decoder layers: the fp32 upcast, log-softmax and loss fuse into few passes
# over the (chunk x 262k) logits instead of one full-size intermediate each.
compiled_cross_entropy = torch.compile(summed_cross_entropy, dynamic=True)


def is_compiled(lm):
    return getattr(lm.model.layers[0], "_compiled_call_impl", None) is not None


def answer_loss(model, input_ids, labels, position_ids=None, lengths=None, predicting=None, *, attention_mask=None,
                chunk=None):
    """Mean next-token cross-entropy over the answer tokens. Only the positions that predict an answer
    token go through lm_head, so the full (tokens x vocabulary) logits never exist; past `chunk` positions
    (default LOSS_CHUNK, read at call time) the output layer runs chunk by chunk and is recomputed in
    backward (checkpointing), so at most one chunk of logits lives at a time. A packed row (pack) comes
    with its examples' lengths and its answer-predicting positions; without them, they are read from where
    the position ids restart and from the labels. With CUDA graphs (graphs.py), the decoder replays them."""
    chunk = chunk or LOSS_CHUNK
    lm = causal_lm(model)
    if getattr(lm.config, "final_logit_softcapping", None):
        raise NotImplementedError("models with final logit softcapping are not supported")
    rows = TokenRows(lm)
    sequences = {}
    if lm.config._attn_implementation == attention.NAME:
        if attention_mask is not None:
            raise ValueError(f"{attention.NAME} trains on packed rows (train.pack), not padded ones")
        if lengths is None and position_ids is not None:
            starts = (position_ids.flatten() == 0).nonzero().flatten().tolist() + [position_ids.numel()]
            lengths = [end - start for start, end in zip(starts, starts[1:])]
        if lengths is not None:
            sequences = {"cu_seq_lens_q": attention.sequence_offsets(lengths, input_ids.device),
                         "max_length_q": attention.length_bound(lengths)}
    embeds, decoder_graphs = rows.embed(input_ids), graphs.attached(lm)
    if decoder_graphs is not None and torch.is_grad_enabled():
        hidden = decoder_graphs(embeds, position_ids, sequences["cu_seq_lens_q"], sequences["max_length_q"])
    else:  # a cache would turn off the per-example masks
        hidden = lm.model(inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask,
                          use_cache=False, **sequences).last_hidden_state
    # The positions that predict an answer token, by index: a boolean mask's backward is an index_put
    # that sorts, an index_select's backward a plain index_add.
    targets = labels[:, 1:].flatten()
    if predicting is None:
        predicting = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    hidden, targets = hidden[:, :-1].flatten(0, 1).index_select(0, predicting), targets.index_select(0, predicting)
    cross_entropy = compiled_cross_entropy if hidden.is_cuda and is_compiled(lm) else summed_cross_entropy
    if len(targets) <= chunk:
        return cross_entropy(rows.logits, hidden, targets) / len(targets)
    total = sum(
        checkpoint(cross_entropy, rows.logits, hidden[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
        for i in range(0, len(targets), chunk)
    )
    return total / len(targets)


def micro_batches(examples, token_budget):
    """The batch as consecutive groups of examples of at most token_budget tokens each (an example longer
    than that alone), as few groups as fit and as even as the examples allow; 0: the whole batch. Their
    gradients add up to the whole batch's: a group's activations are all that backward holds at a time."""
    if not token_budget:
        return [examples]
    ends = list(itertools.accumulate(len(ids) for ids, _ in examples))
    total = ends[-1]
    for count in range(1, len(examples) + 1):  # the fewest groups that fit
        # cut where the running total comes closest to each 1/count of the whole
        cuts = sorted({min(range(len(ends)), key=lambda i: abs(ends[i] - total * k / count)) + 1
                       for k in range(1, count)} | {0, len(examples)})
        groups = [examples[a:b] for a, b in zip(cuts, cuts[1:])]
        if all(len(g) == 1 or sum(len(ids) for ids, _ in g) <= token_budget for g in groups):
            return groups
    return [[example] for example in examples]  # the cuts above can coincide: one example per group always fits


def micro_batched_steps(examples, lengths, training, seed):
    """How many of a run's steps micro_batch_tokens split into more than one group (the batches are the
    same on every run and resume, so this is counted from them, not while training)."""
    budget = training.get("micro_batch_tokens", 0)
    if not budget:
        return 0
    return sum(len(micro_batches([examples[i] for i in batch], budget)) > 1
               for epoch in range(training["epochs"])
               for batch in batch_order(lengths, training["batch_size"], epoch, seed))


def training_step(model, optimizer, scheduler, examples, trainable, max_grad_norm, micro_batch_tokens=0):
    """One optimizer step on a batch of (input_ids, labels); returns (loss, real tokens), the loss as a CPU
    scalar: read when the forward is done, so that reading it later does not wait for the backward and the
    optimizer, and the CPU prepares the next step while the GPU finishes this one. The benchmark in
    benchmarks/ calls this same function, so what it measures is what the workflow runs.

    With micro_batch_tokens (a variant's memory knob) the batch runs forward and backward in groups of at
    most that many tokens (micro_batches), each group's mean loss weighted by its share of the batch's answer
    tokens: the gradients add up to the whole batch's, one optimizer step, while backward holds one group's
    activations at a time."""
    device = next(p.device for p in trainable)
    packed = [pack_for(model, group, device) for group in micro_batches(examples, micro_batch_tokens)]
    answers = sum(len(predicting) for *_, predicting in packed)
    # bf16 products on GPU; a CPU computes in float32 (model.compute_dtype says why), its attention in
    # the math kernel: the fused CPU kernel's float32 backward is not reproducible from run to run. The
    # backward runs under it too: with gradient checkpointing the layers recompute their forward there.
    cuda = device.type == "cuda"
    loss_value = torch.zeros(())
    with nullcontext() if cuda else sdpa_kernel(SDPBackend.MATH):
        for input_ids, labels, position_ids, lengths, predicting in packed:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = answer_loss(model, input_ids, labels, position_ids, lengths, predicting)
                if len(packed) > 1:
                    loss = loss * (len(predicting) / answers)
            # waits for this group's forward (and the groups' before it), not for its backward, not yet queued
            loss_value = loss_value + loss.detach().float().cpu()
            if not torch.isfinite(loss_value):  # reported by the caller, before any update
                break
            loss.backward()
        else:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            optimizer.step()
            scheduler.step()
    # the graphs add into the same .grad tensors
    optimizer.zero_grad(set_to_none=graphs.attached(causal_lm(model)) is None)
    return loss_value, sum(len(ids) for ids, _ in examples)


@torch.no_grad()
def validation_loss(model, examples, batch_size):
    """Mean cross-entropy over every answer token of the validation examples (nats per token), computed as
    in training but without dropout; None when it is not finite. Packed rows of `batch_size` examples, taken
    in length order; no CUDA graphs (they replay training's forward and backward).

    Only the dropout modules are switched to eval mode, not the model: on a CPU, bitsandbytes repacks a 4-bit
    layer's weights for inference the first time it runs in eval mode without gradients, for good, and
    training then computes differently (a resumed run would no longer match one never interrupted)."""
    lm = causal_lm(model)
    device = next(lm.parameters()).device
    cuda = device.type == "cuda"
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training]
    for module in dropouts:
        module.eval()
    total, answer_tokens = torch.zeros((), dtype=torch.float64), 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    try:
        with nullcontext() if cuda else sdpa_kernel(SDPBackend.MATH):
            for start in range(0, len(order), batch_size):
                batch = [examples[i] for i in order[start : start + batch_size]]
                input_ids, labels, position_ids, lengths, predicting = pack(batch, device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = answer_loss(model, input_ids, labels, position_ids, lengths, predicting)
                total += loss.double().cpu() * len(predicting)
                answer_tokens += len(predicting)
    finally:
        for module in dropouts:
            module.train()
    value = (total / max(answer_tokens, 1)).item()
    return value if math.isfinite(value) else None


def peak_memory(device):
    if device.startswith("cuda"):
        return {
            # with the activations that CUDA graphs hold for backward, which torch counts only while capturing
            "peak_memory_gb": graphs.max_memory_allocated() / 1e9,
            "peak_reserved_gb": graphs.max_memory_reserved() / 1e9,
            "memory_kind": "CUDA max allocated",
        }
    return {"peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "memory_kind": "CPU peak RSS"}


def checkpoint_settings(kind_name, model_dir, train_path, settings, training, seed, dtype, device):
    """Everything that changes what training computes: a checkpoint made under other values is stale.
    (How a run goes: memory knobs, compilation, how often to checkpoint or log, changes nothing, so it is
    left out: a run resumes across a change of them.)"""
    return {
        "kind": kind_name,
        "model": read_json(Path(model_dir) / "model.json"),
        "model_config": read_json(Path(model_path(model_dir)) / "config.json"),
        "train_sha256": file_sha256(train_path),
        "settings": settings,
        "training": learned_training(training),
        "seed": seed,
        "dtype": dtype,
        "device": device.split(":")[0],
    }


def graph_metrics(lm):
    """How many padded row lengths the decoder's CUDA graphs were captured for, and what that cost (inside
    train_seconds); None without graphs."""
    decoder_graphs = graphs.attached(lm)
    if decoder_graphs is None:
        return None
    seconds = decoder_graphs.capture_seconds
    return {"row_lengths": len(seconds), "capture_seconds": sum(seconds),
            "held_gb": decoder_graphs.held_bytes / 1e9,  # the most activations a forward graph keeps for backward
            # the first capture compiles the layers (as an eager first step would); the others only capture
            "first_capture_seconds": seconds[0] if seconds else 0.0, "token_multiple": graphs.TOKEN_MULTIPLE}


def train(variant_name, kind_name, model_dir, train_path, settings, training, out_dir, seed=0, dtype="bfloat16",
          device="auto", checkpoint_dir=None, knobs=None, validation_path=None, tuning=False, tuned=False):
    """Train one variant (of kind `kind_name`) with one seed. `training` is the config's training section;
    `knobs` what changes only how the run goes (variants.run_knobs): it overrides `training`'s. With
    `validation_path`, the answer loss on those examples is measured every training.eval_every steps and at
    the end. A `tuning` run (one point of a learning-rate grid) that diverges stops and records where,
    instead of failing: a rate too high is an answer of the sweep, not an error. `tuned`: the settings'
    learning rates were chosen by a sweep (recorded in the metrics)."""
    from transformers import get_cosine_schedule_with_warmup

    method = find_kind(kind_name)
    if method is None or not method.TRAINS:
        raise UserError(f"variant {variant_name}: {kind_name!r} is not a kind that trains (peftbench.methods)")
    check_with_peft({variant_name: Variant(variant_name, kind_name, settings, knobs or {})})
    training = {**training, **(knobs or {})}
    device = resolve_device(device)
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_dir)
    encoding = time.perf_counter()  # grows with the data, unlike the rest of a job's setup
    examples = encode_chats(tokenizer, [row["messages"] for row in read_jsonl(train_path)])
    if not examples:
        raise UserError(f"{train_path} holds no examples: check data.sources in the config")
    lengths = [len(ids) for ids, _ in examples]
    validation = encode_chats(tokenizer, [row["messages"] for row in read_jsonl(validation_path)]) \
        if validation_path else []
    encode_seconds = time.perf_counter() - encoding
    eval_every = training.get("eval_every", 0)
    model, groups = build_trainable(method, model_dir, settings, training, tokenizer, device, dtype)
    model.train()
    optimizer = method.optimizer(groups, settings, training)
    trainable = [p for group in groups for p in group]
    steps_per_epoch = math.ceil(len(examples) / training["batch_size"])
    total_steps = steps_per_epoch * training["epochs"]
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(training["warmup_ratio"] * total_steps), total_steps)
    log.info("%s (%s): %d examples, %d steps, %d trainable parameters", variant_name, kind_name, len(examples), total_steps,
             sum(p.numel() for p in trainable))

    # Where a killed run left off: step, position in the data order, loss history, time spent so far.
    progress_state = {"step": 0, "epoch": 0, "batches_done": 0, "tokens_seen": 0, "train_seconds": 0.0,
                      "history": [], "resumed_at": [], "validation": [], "validation_seconds": 0.0,
                      "diverged_at_step": None}
    checkpoints, every = None, training.get("checkpoint_every", 0)
    named_trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if checkpoint_dir and every:
        checkpoints = Checkpoints(checkpoint_dir, checkpoint_settings(
            kind_name, model_dir, train_path, settings, training, seed, dtype, device))
        resumed = checkpoints.resume(named_trainable, optimizer, scheduler)
        if resumed is not None:
            progress_state = {"validation": [], "validation_seconds": 0.0, "diverged_at_step": None, **resumed}
            progress_state["resumed_at"].append(progress_state["step"])
    history, tokens_seen, step = progress_state["history"], progress_state["tokens_seen"], progress_state["step"]
    validation_history = progress_state["validation"]

    def save_checkpoint(epoch, batches_done):
        progress_state.update(step=step, epoch=epoch, batches_done=batches_done, tokens_seen=tokens_seen,
                              train_seconds=train_seconds_so_far())
        checkpoints.save(step, named_trainable, optimizer, scheduler, progress_state)

    if device.startswith("cuda"):
        graphs.reset_peak_memory_stats()
    # Earlier runs' time is read once: save_checkpoint writes the running total back into progress_state.
    # paused_seconds: time this run spent not training (writing checkpoints, measuring validation loss).
    earlier_seconds, start, paused_seconds = progress_state["train_seconds"], time.perf_counter(), 0.0

    def train_seconds_so_far():  # training alone: earlier runs' time, not the checkpoints' I/O nor validation
        return earlier_seconds + time.perf_counter() - start - paused_seconds

    def validate():
        nonlocal paused_seconds
        if not validation or (validation_history and validation_history[-1]["step"] == step):
            return
        paused = time.perf_counter()
        loss = validation_loss(model, validation, training["batch_size"])
        seconds = time.perf_counter() - paused
        # each evaluation's own seconds: the first of a run also compiles the no-grad forward (once), which
        # the study's wall-clock extrapolation (benchmarks/study_gpu.py) must not scale with the data
        validation_history.append({"step": step, "loss": loss, "seconds": seconds})
        log.info("step %d/%d validation loss %s (%.1f s)", step, total_steps,
                 "not finite" if loss is None else f"{loss:.4f}", seconds)
        progress_state["validation_seconds"] += seconds
        paused_seconds += seconds

    progress = tqdm(total=total_steps, initial=step, desc=f"train {variant_name}", mininterval=2)
    try:  # closed even on error, so that the one-line error starts a line of its own in the log
        for epoch in range(progress_state["epoch"], training["epochs"]):
            if progress_state["diverged_at_step"] is not None:
                break
            batches = batch_order(lengths, training["batch_size"], epoch, seed)
            skip = progress_state["batches_done"] if epoch == progress_state["epoch"] else 0
            for position, batch in enumerate(batches[skip:], start=skip):
                try:
                    loss, real_tokens = training_step(model, optimizer, scheduler, [examples[i] for i in batch],
                                                      trainable, training["max_grad_norm"],
                                                      training.get("micro_batch_tokens", 0))
                except torch.cuda.OutOfMemoryError:
                    budget = training.get("micro_batch_tokens", 0)
                    hint = f"now {budget}: try {budget // 2}" if budget else "e.g. 2048"
                    raise UserError(f"CUDA out of memory at step {step + 1}: set variants.{variant_name}."
                                    f"micro_batch_tokens ({hint}) or training.gradient_checkpointing: true (the "
                                    "same results, less memory), or lower training.batch_size or data.max_length"
                                    ) from None
                if not torch.isfinite(loss) and tuning:
                    log.warning("loss is %s at step %d: this rate diverged; the sweep records it", loss.item(),
                                step + 1)
                    progress_state["diverged_at_step"] = step + 1
                    break
                if not torch.isfinite(loss):
                    raise UserError(f"loss is {loss.item()} at step {step + 1}: lower the learning rate "
                                    f"(variants.{variant_name}.lr) or check the data")
                step += 1
                tokens_seen += real_tokens
                elapsed = train_seconds_so_far()
                history.append({"step": step, "epoch": epoch + 1, "loss": loss.item(),
                                "lr": scheduler.get_last_lr()[0]})
                progress.update()
                progress.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_seen / elapsed:.0f}")
                if step % training["log_every"] == 0:
                    log.info("step %d/%d loss %.4f tokens/s %.0f", step, total_steps, loss.item(),
                             tokens_seen / elapsed)
                if eval_every and step % eval_every == 0:
                    validate()
                if checkpoints and step % every == 0 and step < total_steps:
                    paused = time.perf_counter()
                    done = position + 1 == len(batches)  # an epoch's last batch: resume at the next epoch
                    save_checkpoint(epoch + done, 0 if done else position + 1)
                    paused_seconds += time.perf_counter() - paused
        if progress_state["diverged_at_step"] is None:
            validate()  # the final validation loss: what a sweep chooses by
    finally:
        progress.close()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    train_seconds = train_seconds_so_far()
    if checkpoints and progress_state["step"] < total_steps:
        # Kept until the output is saved: a kill between here and Snakemake recording the job loses nothing.
        save_checkpoint(training["epochs"], 0)

    lm = causal_lm(model)
    decoder_layers = len(lm.model.layers)
    metrics = {
        "method": variant_name,
        "kind": kind_name,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        # what the products ran in: bf16 autocast on a GPU, float32 on a CPU (model.compute_dtype says why)
        "compute_dtype": "bfloat16" if device.startswith("cuda") else "float32",
        "cpu_threads": torch.get_num_threads(),  # on a CPU, the compute's threads (config `threads`)
        "train_seconds": train_seconds,
        "resumed_at_steps": progress_state["resumed_at"],  # train_seconds sums the runs; memory is this run's
        **peak_memory(device),
        "tokens_seen": tokens_seen,
        "tokens_per_s": tokens_seen / train_seconds,
        "examples": len(examples),
        "epochs": training["epochs"],
        "steps": total_steps,
        "attention": lm.config._attn_implementation,  # the same for every method on one device
        "cuda_graphs": graph_metrics(lm),
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        # The memory knobs: the same results, less memory, more time (the report says which method used them).
        "decoder_layers": decoder_layers,
        "checkpointed_layers": checkpointed_layers(training, decoder_layers),
        "recompute_elementwise": bool(training.get("recompute_elementwise")),
        "micro_batch_tokens": training.get("micro_batch_tokens", 0),
        "micro_batched_steps": micro_batched_steps(examples, lengths, training, seed),
        "loss": history,
        "learning_rates": {k: settings[k] for k in learning_rate_keys(method)},
        "tuned": tuned,
        "validation": validation_history,
        # a diverged run has no final validation loss: its last measurement was before it diverged
        "validation_loss": validation_history[-1]["loss"]
        if validation_history and progress_state["diverged_at_step"] is None else None,
        "validation_examples": len(validation),
        "validation_seconds": progress_state["validation_seconds"],
        "encode_seconds": encode_seconds,  # reading and tokenizing the training and validation sets
        "diverged_at_step": progress_state["diverged_at_step"],
    }
    with atomic_dir(out_dir) as tmp:
        save_trained(model, method, settings, tmp, dtype)
        write_json(Path(tmp) / METRICS, metrics)
    if checkpoints:
        checkpoints.clear()
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, help="the variant's name (its row in the report)")
    parser.add_argument("--kind", required=True, help="the variant's kind (peftbench.methods, or a peft method)")
    parser.add_argument("--model-dir", required=True, help="prepare_model's folder")
    parser.add_argument("--train", required=True, help="train.jsonl from prepare_data")
    parser.add_argument("--settings", required=True, help="the variant's settings (its kind's defaults filled in), "
                                                          "as JSON")
    parser.add_argument("--training", required=True, help="the config's training section, as JSON")
    parser.add_argument("--knobs", default="{}", help="what changes only how the run goes (memory knobs, "
                                                      "compile, logging), as JSON: overrides --training's")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (initialization, batch order)")
    parser.add_argument("--dtype", default="bfloat16", help="the model's dtype on a GPU (a CPU trains in float32)")
    parser.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    parser.add_argument("--validation", default=None, help="validation.jsonl from prepare_data: its answer loss is "
                                                           "measured every training.eval_every steps and at the end")
    parser.add_argument("--tuning", action="store_true",
                        help="a point of a learning-rate sweep: a diverging run stops and records it, not an error")
    parser.add_argument("--rate-from", default=None,
                        help="a sweep's selection.json (peftbench select-rate): train at its chosen learning rate")
    parser.add_argument("--checkpoints", default=None,
                        help="folder for resumable checkpoints (keep it outside Snakemake's outputs)")
    args = parser.parse_args(argv)
    settings = json.loads(args.settings)
    if args.rate_from:
        settings = at_rate(find_kind(args.kind), settings, read_json(args.rate_from)["chosen_lr"])
    metrics = train(args.variant, args.kind, args.model_dir, args.train, settings, json.loads(args.training),
                    args.out, args.seed, args.dtype, args.device, args.checkpoints, json.loads(args.knobs),
                    args.validation, args.tuning, tuned=bool(args.rate_from))
    print(json.dumps({k: v for k, v in metrics.items() if k != "loss"}))
