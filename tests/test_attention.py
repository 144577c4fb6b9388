"""The packed-row FlashAttention path (peftbench.attention), on a CPU: FlashAttention itself needs a GPU, so a
reference kernel with its contract (cumulative offsets, causal, left window, fewer key/value heads) stands in,
and the model's loss and gradients must equal transformers' own per-example masking over the same packed row.
benchmarks/2026-12-01-h200/attention_speed.json compares the real kernel with flex attention on the GPU."""
import pytest
import torch
import torch.nn.functional as F

from peftbench import attention
from peftbench.chat import encode_chat
from peftbench.model import load_model, load_tokenizer
from peftbench.train import answer_loss, collate, pack
from peftbench.trainable import training_attention
from test_methods import CONVERSATIONS


def reference_varlen(query, key, value, offsets, longest, scale, window):
    """FlashAttention's varlen contract, one sequence at a time: (tokens, heads, head_dim) in and out."""
    bounds = offsets.tolist()
    longest_example = max(end - start for start, end in zip(bounds, bounds[1:]))
    assert longest_example <= longest < 2 * max(longest_example, 1)  # a bound on it (attention.length_bound)
    out = torch.empty_like(query)
    for start, end in zip(bounds, bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        k, v = (t.repeat_interleave(q.shape[0] // t.shape[0], 0) for t in (k, v))
        position = torch.arange(end - start)
        distance = position[:, None] - position[None, :]
        allowed = (distance >= 0) & ((distance <= window[0]) if window[0] >= 0 else True)
        out[start:end] = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale).transpose(0, 1)
    return out


@pytest.fixture()
def varlen_on_cpu(monkeypatch):
    monkeypatch.setattr(attention, "varlen_kernel", reference_varlen)


def loss_and_grads(model, *batch, **kwargs):
    loss = answer_loss(model, *batch, **kwargs)
    weights = [p for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight"))]
    return loss.detach(), torch.autograd.grad(loss, weights)


FAMILIES = ["gemma", "llama", "qwen2"]  # Qwen2's tiny model: sliding layers after the first, as Mistral's


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_flash_path_equals_per_example_masking(varlen_on_cpu, family, family_model_dir):
    model_dir = family_model_dir(family)
    tokenizer = load_tokenizer(model_dir)
    examples = [encode_chat(tokenizer, c) for c in CONVERSATIONS]
    assert max(len(ids) for ids, _ in examples) > 16  # longer than the tiny model's sliding window
    packed = pack(examples, "cpu")
    assert packed[3] == tuple(len(ids) for ids, _ in examples)
    sdpa = load_model(model_dir, "float32", "cpu", attention="sdpa")
    varlen = load_model(model_dir, "float32", "cpu", attention=attention.NAME)
    expected = loss_and_grads(sdpa, *packed)
    for got in (loss_and_grads(varlen, *packed),
                loss_and_grads(varlen, *packed[:3])):  # lengths read from the position ids
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
        for a, b in zip(got[1], expected[1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the packed row is what the padded batch computes, so nothing crossed between examples
    input_ids, labels, mask = collate(examples, tokenizer.pad_token_id, "cpu")
    padded = loss_and_grads(sdpa, input_ids, labels, attention_mask=mask)
    torch.testing.assert_close(padded[0], expected[0], rtol=1e-5, atol=1e-5)


def test_packed_flash_path_refuses_a_padding_mask(varlen_on_cpu, model_dir, tokenizer):
    examples = [encode_chat(tokenizer, c) for c in CONVERSATIONS]
    input_ids, labels, mask = collate(examples, tokenizer.pad_token_id, "cpu")
    varlen = load_model(model_dir, "float32", "cpu", attention=attention.NAME)
    with pytest.raises(ValueError, match="packed rows"):
        answer_loss(varlen, input_ids, labels, attention_mask=mask)


def test_a_cpu_trains_with_sdpa():
    assert not attention.supported("cpu")
    assert training_attention("cpu") == "sdpa"


def test_the_length_bound_is_a_power_of_two_at_least_the_longest():
    assert [attention.length_bound([n, 3]) for n in (1, 4, 5, 255, 256, 257, 1024)] == [4, 4, 8, 256, 256, 512, 1024]
    # so a study's batches reach the compiled layers with a few values, not one per longest example
    assert len({attention.length_bound([n]) for n in range(100, 1025)}) == 4


def test_offsets_mark_where_each_example_starts():
    assert attention.sequence_offsets((3, 5, 2), "cpu").tolist() == [0, 3, 8, 10]
    assert attention.sequence_offsets((3, 5, 2), "cpu").dtype == torch.int32


@pytest.mark.skipif(not attention.supported("cuda"), reason="FlashAttention needs a GPU")
@pytest.mark.parametrize("family", FAMILIES)
def test_flash_attention_on_a_gpu_computes_what_padded_sdpa_computes(family, family_model_dir):
    """The real varlen kernel in bf16, per family: the packed row's loss and gradients against sdpa over the
    padded batch (bf16 tolerances: the two kernels sum in different orders)."""
    model_dir = family_model_dir(family)
    tokenizer = load_tokenizer(model_dir)
    examples = [encode_chat(tokenizer, c) for c in CONVERSATIONS]
    sdpa = load_model(model_dir, "bfloat16", "cuda", attention="sdpa")
    varlen = load_model(model_dir, "bfloat16", "cuda", attention=attention.NAME)
    got = loss_and_grads(varlen, *pack(examples, "cuda"))
    input_ids, labels, mask = collate(examples, tokenizer.pad_token_id, "cuda")
    expected = loss_and_grads(sdpa, input_ids, labels, attention_mask=mask)
    torch.testing.assert_close(got[0], expected[0], rtol=2e-2, atol=2e-2)
    for a, b in zip(got[1], expected[1]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-3)
