"""generate: greedy answers of the trained model to every test prompt -> generations.jsonl.

Prompts are batched by length (left-padded), decoding is greedy with a fixed max_new_tokens, and each
answer stops at <end_of_turn> (or <eos>). The model is the trained one, rebuilt by trainable.load_for_eval:
adapters merged into the weights, a 4-bit base dequantized first, so what is scored is what was trained.

Decoding is our own loop (fast_greedy_ids), not model.generate: large length-sorted batches, one static
KV cache, one prefill forward, then one forward of one token per row per step; on CUDA that step is
captured once as a CUDA graph, so a step costs one launch instead of ~700 small kernel launches. It
computes what generate(do_sample=False) computes: the same model forward, the same masks (a key is seen
if its cache slot is at or before the query's, and within sliding_window slots on sliding layers, as
transformers counts for left-padded batches), the same position ids, argmax. plain_greedy_ids keeps
model.generate for comparison; tests/test_generate.py checks that both agree token for token. (In bf16
two logits can round to the same value; which one wins then depends on summation order inside kernels,
which differs between any two ways of batching, for generate itself too.)
"""
import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from peftbench.chat import encode_prompt, split_prompt_reference, stop_ids
from peftbench.errors import UserError
from peftbench.io import read_json, read_jsonl, write_json, write_jsonl
from peftbench.methods import METHODS
from peftbench.model import load_tokenizer
from peftbench.train import resolve_device
from peftbench.trainable import load_for_eval

log = logging.getLogger(__name__)

CACHE_ALIGN = 64  # cache length rounded up to this: fewer distinct shapes (graphs), aligned attention masks
WARM_STEPS = 2  # eager decode steps before the CUDA graph is captured (cuBLAS and allocator warm-up)
DONE_EVERY = 16  # check whether every row has stopped every this many steps (the check syncs with the GPU)
FAST_LAYER_TYPES = {"full_attention", "sliding_attention"}


def left_pad(batch_ids, pad_id, device):
    width = max(map(len, batch_ids))
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(batch_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def cut_at_stop(ids, stop_ids):
    """The generated ids before the first stop id."""
    return next((ids[:k] for k, t in enumerate(ids) if t in stop_ids), ids)


def stop_ids_of(tokenizer):
    return stop_ids(tokenizer)


def _by_length(prompts, batch_size):
    """Batches of prompt indices, longest first: similar lengths pad little, and the largest batch runs first."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _store(results, batch, generated, stop_ids, progress):
    """Put each row's new ids, cut at the first stop id, at its prompt's index; advance the bar."""
    for row, index in enumerate(batch):
        results[index] = cut_at_stop(generated[row], stop_ids)
    progress.update([results[i] for i in batch])


class _Progress:
    """A tqdm bar over prompts that shows new (answer) tokens per second."""

    def __init__(self, total, desc):
        self.bar = tqdm(total=total, desc=desc, mininterval=2)
        self.new_tokens, self.start = 0, time.perf_counter()

    def update(self, answers):
        self.new_tokens += sum(map(len, answers))
        self.bar.update(len(answers))
        self.bar.set_postfix(new_tok_s=f"{self.new_tokens / (time.perf_counter() - self.start):.0f}")

    def close(self):
        self.bar.close()


# ---------------------------------------------------------------------------------------------------------
# Plain path: transformers' generate, kept as the reference.


@torch.inference_mode()
def plain_greedy_ids(model, prompts, max_new_tokens, batch_size, pad_id, stop_ids=(), device=None):
    """model.generate(do_sample=False) on length-sorted left-padded batches; each row's new ids, cut before
    the first stop id. No stop ids: every row runs to max_new_tokens."""
    device = device or model.device
    # generate falls back to the model's own eos ids when given none: give it one argmax never returns
    eos = list(stop_ids) or [model.config.get_text_config().vocab_size]
    results, progress = [None] * len(prompts), _Progress(len(prompts), "generate (plain)")
    for batch in _by_length(prompts, batch_size):
        input_ids, attention_mask = left_pad([prompts[i] for i in batch], pad_id, device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad_id,
        )
        generated = output[:, input_ids.shape[1] :].tolist()
        _store(results, batch, generated, stop_ids, progress)
    progress.close()
    return results


def plain_greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size, device):
    """greedy_answers through model.generate (for comparison)."""
    ids = plain_greedy_ids(model, prompts, max_new_tokens, batch_size, tokenizer.pad_token_id,
                           stop_ids_of(tokenizer), device)
    return decode_answers(tokenizer, ids)


def decode_answers(tokenizer, ids):
    return [tokenizer.decode(answer, skip_special_tokens=True).strip() for answer in ids]


# ---------------------------------------------------------------------------------------------------------
# Fast path: static KV cache, our own masks, decode step replayed as a CUDA graph.


def supports_fast_path(model):
    config = model.config
    return (
        not hasattr(model, "peft_config")  # an adapter peft cannot merge runs through its own forward
        and config.model_type == "gemma3_text"  # a model whose forward takes a {layer type: 4D mask} mapping
        and config._attn_implementation in ("sdpa", "eager")
        and set(config.layer_types) <= FAST_LAYER_TYPES
    )


def attention_masks(config, valid, query_slots, dtype):
    """{layer type: 4D mask [rows, 1, queries, slots]} for queries at cache slots query_slots over the whole
    static cache. valid[row, slot] is False where the slot holds left padding. The rule is transformers':
    a key is seen if its slot is at or before the query's (and, on sliding layers, fewer than sliding_window
    slots before it)."""
    slots = torch.arange(valid.shape[1], device=valid.device)
    query = query_slots[:, None]
    seen = valid[:, None, None, :] & (slots <= query)
    # A padding query sees itself, so no row is fully masked (sdpa could return NaN there); no real token
    # ever looks at a padding slot, so this changes nothing that is kept.
    seen = seen | (slots == query)
    masks = {"full_attention": seen, "sliding_attention": seen & (slots > query - config.sliding_window)}
    if config._attn_implementation == "eager":  # eager attention adds its mask to the scores
        low = torch.finfo(dtype).min
        masks = {name: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, low)
                 for name, m in masks.items()}
    return {name: masks[name] for name in set(config.layer_types)}


class _Decoder:
    """The static state of one batch shape (rows x cache slots): KV cache, the step's input buffers, and on
    CUDA the decode step captured as a CUDA graph. Reused by every batch of that shape."""

    def __init__(self, model, rows, slots, pad_id, stop_ids, use_graph, stats):
        from transformers.cache_utils import Cache, StaticLayer

        self.model, self.config, self.pad_id = model, model.config, pad_id
        self.rows, self.slots, device = rows, slots, model.device
        # Every layer, sliding ones too, keeps all `slots` positions in a plain StaticLayer: transformers'
        # StaticSlidingWindowLayer tracks its fill level in a Python int and rolls its window each step,
        # which a captured graph cannot follow. Sliding attention is then done by the mask alone, exactly
        # as a cache holding the whole sequence would.
        self.cache = Cache(layers=[StaticLayer(max_cache_len=slots) for _ in range(self.config.num_hidden_layers)])
        self.valid = torch.ones(rows, slots, dtype=torch.bool, device=device)  # slot holds a real token
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=device)  # last picked token, next input
        self.position = torch.zeros(rows, 1, dtype=torch.long, device=device)  # its position id
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # its cache slot
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)  # row has emitted a stop id
        self.stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        self.use_graph = use_graph and device.type == "cuda"
        self.graph, self.warm, self.stats = None, 0, stats

    def _logits(self, hidden):
        logits = self.model.lm_head(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _pick(self, logits):
        """Greedy pick from the last position's logits; finished rows get padding (their output is ignored)."""
        token = logits[:, -1].argmax(-1)
        token = torch.where(self.done, self.pad_id, token)
        self.done |= (token[:, None] == self.stop).any(-1)
        self.token.copy_(token[:, None])

    def prefill(self, input_ids, attention_mask):
        """Run the left-padded prompts in one forward; return each row's first new token."""
        width = input_ids.shape[1]
        self.cache.reset()  # zeroes in place, so a captured graph still points at the right memory
        self.done.zero_()
        self.valid.fill_(True)
        self.valid[:, :width] = attention_mask.bool()
        # generate's position ids: count of real tokens before, padding at 1
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        masks = attention_masks(self.config, self.valid, torch.arange(width, device=input_ids.device), self.model.dtype)
        hidden = self.model.model(input_ids=input_ids, attention_mask=masks, position_ids=position_ids,
                                  past_key_values=self.cache, use_cache=True).last_hidden_state
        # Only the last position's logits, from a contiguous copy: a strided slice sends frozen CPU weights
        # down a batched-matmul path that copies the whole 262k-row output layer per row (100x slower).
        self._pick(self._logits(hidden[:, -1:].contiguous()))
        self.position.copy_(position_ids[:, -1:] + 1)
        self.slot.fill_(width)
        return self.token[:, 0].clone()

    def _step(self):
        """Feed each row's last token at self.slot; everything reads and writes fixed buffers (graph-safe)."""
        masks = attention_masks(self.config, self.valid, self.slot, self.model.dtype)
        logits = self.model(input_ids=self.token, attention_mask=masks, position_ids=self.position,
                            past_key_values=self.cache, use_cache=True).logits
        self._pick(logits)
        self.position += 1
        self.slot += 1

    def step(self):
        """One decode step; returns each row's new token."""
        if self.graph is not None:
            self.graph.replay()
        elif self.use_graph:
            self._warm_step()
        else:
            self._step()
        return self.token[:, 0].clone()

    def _warm_step(self):
        # Capture wants a few eager runs on a side stream first; these are real steps, so nothing to undo.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.warm += 1
        if self.warm < WARM_STEPS:
            return
        graph, start = torch.cuda.CUDAGraph(), time.perf_counter()
        try:
            with torch.cuda.graph(graph):  # records the kernels of one step; runs nothing
                self._step()
            self.graph = graph
            self.stats["graphs"] += 1
            self.stats["capture_s"] += time.perf_counter() - start
        except Exception as error:  # never seen; keep going eagerly rather than lose the run
            log.warning("CUDA graph capture failed (%s); decoding eagerly", error)
            self.use_graph = False


def auto_batch_size(model, max_length, fraction=0.6, cap=512):
    """The largest batch (a multiple of 8, at most cap) whose static KV cache and prefill activations fit in
    `fraction` of the free GPU memory, for sequences of max_length tokens. 16 off CUDA."""
    if model.device.type != "cuda":
        return 16
    c, size = model.config, model.dtype.itemsize
    cache = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * max_length * size
    activations = max_length * (4 * c.hidden_size + 3 * c.intermediate_size) * size + 6 * max_length**2
    logits = 2 * c.vocab_size * 4
    free, _ = torch.cuda.mem_get_info(model.device)
    rows = int(fraction * free / (cache + activations + logits))
    return max(1, min(cap, rows // 8 * 8 or rows))


@torch.inference_mode()
def fast_greedy_ids(model, prompts, max_new_tokens, batch_size, pad_id, stop_ids=(), device=None,
                    cuda_graph=True, stats=None, desc="generate"):
    """Greedy decoding, identical to plain_greedy_ids, fast: each row's new ids, cut before the first stop
    id. No stop ids: every row runs to max_new_tokens. batch_size 0: auto_batch_size. A `stats` dict gets
    batch_size, graphs (CUDA graphs captured) and capture_s."""
    device = device or model.device
    if not batch_size:
        batch_size = auto_batch_size(model, max(map(len, prompts)) + max_new_tokens)
        log.info("generation batch size %d (from free GPU memory)", batch_size)
    stats = {} if stats is None else stats
    stats.update(batch_size=batch_size, graphs=0, capture_s=0.0)
    results, progress, decoder = [None] * len(prompts), _Progress(len(prompts), desc), None
    for batch in _by_length(prompts, batch_size):
        input_ids, attention_mask = left_pad([prompts[i] for i in batch], pad_id, device)
        slots = -(-(input_ids.shape[1] + max_new_tokens - 1) // CACHE_ALIGN) * CACHE_ALIGN
        if decoder is None or (decoder.rows, decoder.slots) != (len(batch), slots):
            decoder = None  # free the previous cache and graph before allocating the next
            decoder = _Decoder(model, len(batch), slots, pad_id, stop_ids, cuda_graph, stats)
        new = [decoder.prefill(input_ids, attention_mask)]
        for step in range(1, max_new_tokens):
            if step % DONE_EVERY == 0 and decoder.done.all():
                break
            new.append(decoder.step())
        generated = torch.stack(new, 1).tolist()
        _store(results, batch, generated, stop_ids, progress)
    progress.close()
    return results


def greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size, device):
    """Greedy continuation of each prompt (lists of token ids), cut at the end of the turn; returns texts."""
    ids_of = fast_greedy_ids if supports_fast_path(model) else plain_greedy_ids
    if not batch_size and ids_of is plain_greedy_ids:  # 0: as many as fit, which the fast path sizes itself
        longest = max(map(len, prompts)) + max_new_tokens
        batch_size = auto_batch_size(model, longest)
    ids = ids_of(model, prompts, max_new_tokens, batch_size, tokenizer.pad_token_id, stop_ids_of(tokenizer), device)
    return decode_answers(tokenizer, ids)


CHUNK_PROMPTS = 2048  # answers are saved every this many prompts, so a killed run loses at most one chunk


def _resume_key(kind_name, trained_dir, test_path, settings, generation, dtype):
    """A hash of everything the answers depend on: a chunk saved under another key is never reused."""
    digest = hashlib.sha256(json.dumps([kind_name, settings, generation, dtype], sort_keys=True).encode())
    files = [Path(test_path)] + (sorted(p for p in Path(trained_dir).rglob("*") if p.is_file()) if trained_dir else [])
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def generate(kind_name, model_dir, trained_dir, test_path, settings, generation, out_path,
             dtype="bfloat16", device="auto", chunk_prompts=None):
    """Answer every test prompt, chunk by chunk. Finished chunks are kept beside out_path (not in it:
    Snakemake deletes a job's outputs before it reruns), so a rerun after a kill resumes after the
    last finished chunk; a changed setting, model or test set starts afresh."""
    device = resolve_device(device)
    chunk_prompts = chunk_prompts or generation.get("chunk_prompts", CHUNK_PROMPTS)
    out_path = Path(out_path)
    chunks_root = out_path.parent / f".{out_path.name}.chunks"
    key = _resume_key(kind_name, trained_dir, test_path, settings, generation, dtype)
    for stale in chunks_root.glob("*"):
        if stale.name != key:
            shutil.rmtree(stale)
    chunk_dir = chunks_root / key
    rows = read_jsonl(test_path)
    split = [split_prompt_reference(row["messages"]) for row in rows]
    tokenizer = model = None
    answers, start = [], time.perf_counter()
    for first in range(0, len(rows), chunk_prompts):
        chunk_path = chunk_dir / f"{first:08d}.json"
        if chunk_path.exists():
            answers += read_json(chunk_path)
            log.info("%s: prompts %d-%d already answered (resumed)", out_path.parent.name, first, first + chunk_prompts)
            continue
        if model is None:  # load only when something is left to do
            tokenizer = load_tokenizer(model_dir)
            model = load_for_eval(METHODS[kind_name], model_dir, trained_dir, settings, device, dtype)
        prompts = [encode_prompt(tokenizer, prompt) for prompt, _ in split[first : first + chunk_prompts]]
        try:
            chunk = greedy_answers(model, tokenizer, prompts, generation["max_new_tokens"],
                                   generation["batch_size"], device)
        except torch.cuda.OutOfMemoryError:
            raise UserError(f"CUDA out of memory generating prompts {first}-{first + len(prompts)}: lower generation."
                            "batch_size (0 sizes it from free memory) or generation.max_new_tokens") from None
        write_json(chunk_path, chunk)
        answers += chunk
    log.info("%s: %d answers in %.0f s", out_path.parent.name, len(answers), time.perf_counter() - start)
    write_jsonl(out_path, (
        {"id": row["id"], "source": row["source"], "prompt": prompt, "reference": reference, "prediction": answer}
        for row, (prompt, reference), answer in zip(rows, split, answers)
    ))
    shutil.rmtree(chunks_root, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, help="the variant's kind (peftbench.methods, or a peft method)")
    parser.add_argument("--model-dir", required=True, help="prepare_model's folder")
    parser.add_argument("--trained", default=None, help="train step's folder (none for an untrained variant)")
    parser.add_argument("--test", required=True, help="test.jsonl from prepare_data")
    parser.add_argument("--settings", default="{}", help="the variant's settings, as JSON")
    parser.add_argument("--generation", required=True, help="the config's generation section, as JSON")
    parser.add_argument("--out", required=True, help="generations.jsonl to write")
    parser.add_argument("--dtype", default="bfloat16", help="the model's dtype on a GPU (a CPU decodes in float32)")
    parser.add_argument("--device", default="auto", help="cuda, cpu, or auto")
    args = parser.parse_args(argv)
    generate(args.kind, args.model_dir, args.trained, args.test, json.loads(args.settings),
             json.loads(args.generation), args.out, args.dtype, args.device)
