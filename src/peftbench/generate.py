"""generate: greedy answers of the trained model to every test prompt -> generations.jsonl.

Prompts are batched by length (left-padded), decoding is greedy with a fixed max_new_tokens, and each
answer stops at <end_of_turn> (or <eos>). The model is the trained one, rebuilt by trainable.load_for_eval:
adapters merged into the weights, a 4-bit base dequantized first, so what is scored is what was trained.

Decoding is our own loop (fast_greedy_ids), not model.generate: large length-sorted batches, one prefill
forward, then one forward of one token per row per step, through the model's own layers but with our KV
cache and attention (decode_attention): the query heads that share a key/value head read the cache once,
and sliding-window layers keep only their window. On CUDA the step is captured once as a CUDA graph, so a
step costs one launch instead of ~700 small kernel launches. benchmarks/generate.md measures it against
transformers' generate, plain and static-cache compiled. It computes what generate(do_sample=False)
computes: the same model forward, the same masks (a key is seen if its cache slot is at or before the
query's, and within sliding_window slots on sliding layers, as transformers counts for left-padded
batches), the same position ids, argmax. plain_greedy_ids keeps model.generate for comparison;
tests/test_generate.py checks that both agree token for token. (In bf16 two logits can round to the same
value; which one wins then depends on summation order inside kernels, which differs between any two ways
of batching, for generate itself too.)
"""
import argparse
import contextlib
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from peftbench import attention
from peftbench.chat import encode_prompts, split_prompt_reference, stop_ids
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
                           stop_ids(tokenizer), device)
    return decode_answers(tokenizer, ids)


def decode_answers(tokenizer, ids):
    return [tokenizer.decode(answer, skip_special_tokens=True).strip() for answer in ids]


# ---------------------------------------------------------------------------------------------------------
# Fast path: our own KV cache and decode attention, the decode step replayed as a CUDA graph.

DECODE_ATTENTION = "peftbench_decode"
# sdpa's memory-efficient kernel for the decode step where it runs (CUDA), else the math one: measured the
# fastest at the decode shape, ahead of sdpa's own choice (benchmarks/2026-12-03-h200/decode_attention.md).
DECODE_KERNELS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def layer_kinds(config):
    """Each decoder layer's attention, as transformers names it: its config's layer_types where it has them
    (Gemma 3, Qwen2/3), else every layer sliding if the config has a window (Mistral), else full (Llama)."""
    kinds = getattr(config, "layer_types", None)
    if kinds:
        return list(kinds)
    kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
    return [kind] * config.num_hidden_layers


def supports_fast_path(model):
    """Whether the fast decoder serves this model: a decoder-only causal LM whose attention layers go through
    transformers' attention interface (so decode_attention can stand in), with full or sliding-window
    attention and no attention logit softcapping. Anything else decodes with model.generate."""
    config = model.config
    return (
        not hasattr(model, "peft_config")  # an adapter peft cannot merge runs through its own forward
        and not getattr(config, "is_encoder_decoder", False)
        and getattr(model, "_supports_attention_backend", False)
        and hasattr(model, "model") and hasattr(model, "lm_head")
        and not getattr(config, "attn_logit_softcapping", None)
        and set(layer_kinds(config)) <= FAST_LAYER_TYPES
    )


def packs_prompts(model):
    """Whether prefill runs on the real prompt tokens only: FlashAttention's varlen kernel, which needs a
    CUDA GPU and 16-bit weights."""
    return model.dtype in (torch.bfloat16, torch.float16) and attention.supported(model.device)


def attention_masks(valid, query_slots, window=None):
    """{layer type: bool mask [rows, 1, queries, slots]} for queries at cache slots query_slots over the slots
    of valid (valid[row, slot] is False where the slot holds left padding). The rule is transformers': a key
    is seen if its slot is at or before the query's (and, on sliding layers, fewer than `window` slots
    before it; None: no window to apply)."""
    slots = torch.arange(valid.shape[1], device=valid.device)
    query = query_slots[:, None]
    seen = valid[:, None, None, :] & (slots <= query)
    # A padding query sees itself, so no row is fully masked (sdpa could return NaN there); no real token
    # ever looks at a padding slot, so this changes nothing that is kept.
    seen = seen | (slots == query)
    return {"full_attention": seen, "sliding_attention": seen & (slots > query - window) if window else seen}


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                     decoder=None, **kwargs):
    """transformers' attention interface (query (rows, heads, tokens, head_dim); returns (rows, tokens, heads,
    head_dim)) over the _Decoder's own cache: this layer's new keys and values are stored first. The mask is
    the decoder's for this layer's kind (transformers builds none for an implementation it does not know).

    A decode step has one query per head, and the query heads of a group share one key/value head: the
    group becomes the query axis, so each row's cached keys and values are read once, where transformers'
    sdpa path (under torch.compile, or before transformers 5.2x) copies them once per query head."""
    if softcap or dropout:
        raise ValueError(f"{DECODE_ATTENTION} supports neither attention logit softcapping nor dropout")
    rows, heads, tokens, head_dim = query.shape
    if kwargs.get("cu_seq_lens_q") is not None:  # packed prefill: FlashAttention within each prompt
        decoder.store(module.layer_idx, key, value)
        return attention.varlen_attention_forward(module, query, key, value, None, scaling=scaling, **kwargs)
    key, value = decoder.store(module.layer_idx, key, value)
    attention_mask = decoder.masks[decoder.kinds[module.layer_idx]]
    groups = heads // key.shape[1]
    if tokens == 1:
        with sdpa_kernel(DECODE_KERNELS):
            out = F.scaled_dot_product_attention(query.view(rows, key.shape[1], groups, head_dim), key, value,
                                                 attn_mask=attention_mask, scale=scaling)
        return out.reshape(rows, 1, heads, head_dim), None  # the efficient kernel may return it strided
    if groups > 1:  # the prefill: once per batch
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    return out.transpose(1, 2), None


@contextlib.contextmanager
def decode_attention_on(model):
    """While inside, the model's attention layers call decode_attention and its RMSNorms run fused;
    afterwards the model is as it was."""
    from transformers import AttentionInterface

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    before = model.config._attn_implementation
    model.set_attn_implementation(DECODE_ATTENTION)
    norms = [m for m in model.modules() if type(m).__name__ in FUSED_NORMS and "forward" not in vars(m)]
    for norm in norms:
        norm.forward = FUSED_NORMS[type(norm).__name__](norm)
    try:
        yield
    finally:
        model.set_attn_implementation(before)
        for norm in norms:
            del norm.forward


def _fused_gemma_norm(norm):
    """Gemma's RMSNorm, x / rms(x) * (1 + weight) in float32, through torch's rms_norm with the 1 + weight
    computed once: fewer kernels than transformers' (cast, square, mean, add, rsqrt, multiplies), which at
    decode batch sizes cost more in launches than in work (benchmarks/2026-12-03-h200/README.md)."""
    scale = 1.0 + norm.weight.detach().float()

    def forward(x):
        return F.rms_norm(x.float(), scale.shape, scale, norm.eps).type_as(x)

    return forward


def _fused_llama_norm(norm):
    """Llama's RMSNorm (and Qwen's, Mistral's): x / rms(x) in float32, cast back, times the weight."""
    shape = norm.weight.shape

    def forward(x):
        return norm.weight * F.rms_norm(x.float(), shape, None, norm.variance_epsilon).to(x.dtype)

    return forward


FUSED_NORMS = {"Gemma3RMSNorm": _fused_gemma_norm, "LlamaRMSNorm": _fused_llama_norm,
               "Qwen2RMSNorm": _fused_llama_norm, "Qwen3RMSNorm": _fused_llama_norm,
               "MistralRMSNorm": _fused_llama_norm}


class _Decoder:
    """The static state of one batch shape (rows x cache slots): KV cache, the step's input buffers, and on
    CUDA the decode step captured as a CUDA graph. Reused by every batch of that shape.

    The cache is ours, not transformers': full-attention layers keep every slot; sliding layers keep only
    their window, as a ring (slot s at s mod window), so a step reads window slots there, not the whole
    cache. Attention ignores the order of keys (positions are already rotated into them), so the ring needs
    no reordering; its mask says which ring slots hold real tokens."""

    def __init__(self, model, rows, slots, pad_id, stop_ids, use_graph, stats):
        self.model, self.config, self.pad_id = model, model.config, pad_id
        self.rows, self.slots, device = rows, slots, model.device
        config, dtype = self.config, model.dtype
        self.kinds = layer_kinds(config)
        window = getattr(config, "sliding_window", None) if "sliding_attention" in self.kinds else None
        self.ring = window if window and window < slots else None
        shape = lambda length: (rows, config.num_key_value_heads, length, head_dim_of(config))  # noqa: E731
        self.sliding = [kind == "sliding_attention" and self.ring is not None for kind in self.kinds]
        self.keys = [torch.zeros(shape(self.ring if ring else slots), dtype=dtype, device=device)
                     for ring in self.sliding]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.valid = torch.ones(rows, slots, dtype=torch.bool, device=device)  # slot holds a real token
        self.ring_valid = torch.zeros(rows, self.ring or 1, dtype=torch.bool, device=device)  # ring slot does
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=device)  # last picked token, next input
        self.position = torch.zeros(rows, 1, dtype=torch.long, device=device)  # its position id
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # its cache slot
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)  # row has emitted a stop id
        self.stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        self.use_graph = use_graph and device.type == "cuda"
        self.graph, self.warm, self.stats = None, 0, stats
        self.packed = self.packed_ring = None  # during a packed prefill: where its tokens go in the cache
        self.masks = None  # {layer kind: bool mask} of the forward under way

    def store(self, layer, key, value):
        """Write this layer's new keys and values into the cache; return what its queries attend over."""
        if self.packed is not None:  # packed prefill: token i of the row goes to (row, slot) of the cache
            rows, slots = self.packed
            if self.sliding[layer]:  # the ring keeps the last `ring` prompt slots, each at its slot mod ring
                rows, slots, kept = self.packed_ring
                key, value = key[:, :, kept], value[:, :, kept]
            self.keys[layer][rows, :, slots] = key[0].transpose(0, 1)
            self.values[layer][rows, :, slots] = value[0].transpose(0, 1)
            return None, None  # the prompt attends over its own keys (decode_attention has them)
        if key.shape[2] > 1:  # padded prefill: the prompt's own keys are everything there is to attend over
            width = key.shape[2]
            if self.sliding[layer]:
                kept = torch.arange(max(0, width - self.ring), width, device=key.device)
                self.keys[layer][:, :, kept % self.ring] = key[:, :, kept]
                self.values[layer][:, :, kept % self.ring] = value[:, :, kept]
            else:
                self.keys[layer][:, :, :width] = key
                self.values[layer][:, :, :width] = value
            return key, value
        where = self.slot % self.ring if self.sliding[layer] else self.slot
        self.keys[layer].index_copy_(2, where, key)
        self.values[layer].index_copy_(2, where, value)
        return self.keys[layer], self.values[layer]

    def _hidden(self, input_ids, masks, position_ids, **packing):
        """The model's layers with our attention, cache and masks."""
        self.masks = masks
        return self.model.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, decoder=self,
                                **packing).last_hidden_state

    def _logits(self, last_hidden):
        """Logits of the given positions (rows, 1, hidden), contiguous: a strided slice sends frozen CPU
        weights down a batched-matmul path that copies the whole 262k-row output layer per row (100x slower)."""
        logits = self.model.lm_head(last_hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _pick(self, logits):
        """Greedy pick from the last position's logits; finished rows get padding (their output is ignored)."""
        token = logits[:, -1].argmax(-1)
        token = torch.where(self.done, self.pad_id, token)
        self.done |= (token[:, None] == self.stop).any(-1)
        self.token.copy_(token[:, None])

    def prefill(self, input_ids, attention_mask):
        """Run the left-padded prompts in one forward; return each row's first new token. With FlashAttention
        (a CUDA GPU) the forward runs on the real tokens only, packed into one row, so padding costs nothing;
        their keys and values land where the left-padded layout puts them."""
        width = input_ids.shape[1]
        self.done.zero_()
        self.valid.fill_(True)
        self.valid[:, :width] = attention_mask.bool()
        if self.ring:  # ring slot r holds the last prompt slot s with s mod ring == r, if there is one
            kept = torch.arange(max(0, width - self.ring), width, device=input_ids.device)
            self.ring_valid.zero_()
            self.ring_valid[:, kept % self.ring] = self.valid[:, kept]
        # generate's position ids: count of real tokens before, padding at 1
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        if packs_prompts(self.model):
            real = attention_mask.bool()
            rows, slots = real.nonzero(as_tuple=True)  # row-major: each row's tokens in order, row after row
            self.packed = rows, slots
            if self.ring:
                in_ring = slots >= width - self.ring
                self.packed_ring = rows[in_ring], slots[in_ring] % self.ring, in_ring.nonzero()[:, 0]
            lengths = attention_mask.sum(-1)
            offsets = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
            try:
                hidden = self._hidden(input_ids[real][None], None, position_ids[real][None], cu_seq_lens_q=offsets,
                                      max_length_q=attention.length_bound(lengths.tolist()))
            finally:
                self.packed = None
            last = hidden[0, offsets[1:].long() - 1][:, None]
        else:
            masks = attention_masks(self.valid[:, :width], torch.arange(width, device=input_ids.device),
                                    self.ring)  # a prompt longer than the window needs it within itself
            last = self._hidden(input_ids, masks, position_ids)[:, -1:].contiguous()
        self._pick(self._logits(last))
        self.position.copy_(position_ids[:, -1:] + 1)
        self.slot.fill_(width)
        return self.token[:, 0].clone()

    def _step(self):
        """Feed each row's last token at self.slot; everything reads and writes fixed buffers (graph-safe)."""
        # No window term: sliding layers either keep a ring of exactly their window (its own mask below) or
        # a cache no longer than the window, where the window hides nothing.
        masks = attention_masks(self.valid, self.slot)
        if self.ring:  # the new token's ring slot holds a real token from now on
            self.ring_valid.index_fill_(1, self.slot % self.ring, True)
            masks["sliding_attention"] = self.ring_valid[:, None, None, :]
        self._pick(self._logits(self._hidden(self.token, masks, self.position)))
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


def head_dim_of(config):
    """Per-head width: the config's head_dim where it has one (Gemma, Llama, Qwen3), else hidden / heads (Qwen2's
    config has no head_dim)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def bytes_per_row(config, max_length, itemsize):
    """GPU memory one row of a batch needs while decoding max_length tokens: its KV cache, its prefill
    activations and its float32 logits."""
    cache = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim_of(config) * max_length * itemsize
    activations = max_length * (4 * config.hidden_size + 3 * config.intermediate_size) * itemsize + 6 * max_length**2
    return cache + activations + 2 * config.vocab_size * 4


def auto_batch_size(model, max_length, fraction=0.6, cap=512):
    """The largest batch (a multiple of 8, at most cap) whose static KV cache and prefill activations fit in
    `fraction` of the free GPU memory, for sequences of max_length tokens. 16 off CUDA."""
    if model.device.type != "cuda":
        return 16
    free, _ = torch.cuda.mem_get_info(model.device)
    rows = int(fraction * free / bytes_per_row(model.config, max_length, model.dtype.itemsize))
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
    with decode_attention_on(model):
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
    ids = ids_of(model, prompts, max_new_tokens, batch_size, tokenizer.pad_token_id, stop_ids(tokenizer), device)
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
        prompts = encode_prompts(tokenizer, [prompt for prompt, _ in split[first : first + chunk_prompts]])
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
