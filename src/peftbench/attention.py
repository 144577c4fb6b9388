"""Attention over a packed row on a GPU: FlashAttention per example, as a transformers attention implementation.

Training packs each batch into one row (train.pack). Flex attention (transformers' choice for that) masks
per example with block masks, but its backward at Gemma 3's head size (256, one key/value head) is slow:
at the gemma-3-1b-it shape on an H200 it took 13.3 ms of GPU time per training step, against 4.7 ms for
torch's built-in FlashAttention over the same examples (benchmarks/2026-12-01-h200/attention_speed.json), which also needs
no block mask built per step. torch.nn.attention.varlen takes the examples as cumulative offsets in the
packed row; each keeps its causal mask and, on sliding layers, its window.
"""
import inspect
import itertools

import torch

from peftbench.model import to_device

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.9
    varlen_attn = None

NAME = "peftbench_varlen"
# Read once here, not in the compiled layers: torch 2.11 has window_size; 2.12 adds enable_gqa (required
# there when key and value have fewer heads than the query; always allowed before).
VARLEN_PARAMETERS = frozenset(inspect.signature(varlen_attn).parameters) if varlen_attn else frozenset()
GQA = {"enable_gqa": True} if "enable_gqa" in VARLEN_PARAMETERS else {}


def supported(device):
    """Whether this torch and GPU run FlashAttention with sliding windows (an Ampere or later GPU)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return False
    return "window_size" in VARLEN_PARAMETERS and torch.cuda.get_device_capability(device) >= (8, 0)


def register():
    """Make NAME an attn_implementation that transformers models accept. transformers builds no mask for
    an implementation it has no mask function for: the offsets (sequence_offsets) carry the examples."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)


def sequence_offsets(lengths, device):
    """Where each example starts in the packed row, and where the last ends (FlashAttention's cu_seqlens)."""
    return to_device(torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32), device)


def length_bound(lengths):
    """The longest length rounded up to a power of two: FlashAttention's max_length argument. Any bound at
    least the longest is exact (it only sizes the kernel's grid); a Python int reaches the compiled layers
    as a constant, so each distinct value compiles them again, and a few powers of two keep that to a few."""
    return 1 << max(1, max(lengths) - 1).bit_length()


def varlen_kernel(query, key, value, offsets, longest, scale, window):
    """FlashAttention over the sequences of (tokens, heads, head_dim) tensors; tests swap in a CPU reference."""
    return varlen_attn(query, key, value, offsets, offsets, longest, longest, scale=scale, window_size=window, **GQA)


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, sliding_window=None,
                             softcap=None, dropout=0.0, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers' attention interface: query (batch, heads, tokens, head_dim), key and value with their
    own head count; returns (batch, tokens, heads, head_dim). Without offsets, each row is one sequence."""
    if attention_mask is not None:
        raise ValueError(f"{NAME} attends within the packed examples given by cu_seq_lens_q; it takes no mask")
    if softcap or dropout:
        raise ValueError(f"{NAME} supports neither attention logit softcapping nor attention dropout")
    batch, heads, length, head_dim = query.shape
    if cu_seq_lens_q is None:
        cu_seq_lens_q = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=query.device)
        max_length_q = length
    # transformers' window of W lets a query see the W - 1 tokens before it (and itself)
    window = (sliding_window - 1, 0) if sliding_window else (-1, 0)

    def tokens_first(states):
        return states.transpose(1, 2).reshape(batch * length, states.shape[1], head_dim)

    out = varlen_kernel(tokens_first(query), tokens_first(key), tokens_first(value), cu_seq_lens_q, max_length_q,
                        scaling, window)
    return out.view(batch, length, heads, head_dim), None
