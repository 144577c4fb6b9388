"""The fast greedy decoder gives exactly what transformers' generate(do_sample=False) gives, on the tiny
random Gemma 3 (sliding_window 16, so prompts longer than that exercise the sliding layers)."""
import json

import pytest
import torch

from peftbench.chat import encode_prompt, end_of_turn_id, stop_ids
from peftbench.generate import (
    fast_greedy_ids, greedy_answers, plain_greedy_answers, plain_greedy_ids, supports_fast_path,
)
from peftbench.methods import METHODS
from peftbench.trainable import load_for_eval
from tiny import CORPUS

MAX_NEW = 20
WORDS = " ".join(CORPUS[:4]).split()
SIZES = (1, 2, 4, 6, 9, 13, 18, 25, 33, 45)  # words per question: prompts of about 8 to 90 tokens


@pytest.fixture(scope="module")
def model(model_dir):
    # float32: in bf16 two logits often round to the same value, and then any difference in summation
    # order (another kernel, another batch size: generate itself) may pick either; float32 has no such ties.
    return load_for_eval(METHODS["base"], model_dir, None, {}, "cpu", "float32")


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [encode_prompt(tokenizer, [{"role": "user", "content": " ".join(WORDS[:n])}]) for n in SIZES]


@pytest.fixture(scope="module")
def reference(model, prompts, tokenizer):
    """generate on each prompt alone (no padding), no stop ids: MAX_NEW tokens per prompt."""
    return [plain_greedy_ids(model, [p], MAX_NEW, 1, tokenizer.pad_token_id)[0] for p in prompts]


def test_prompts_exercise_padding_and_sliding_layers(model, prompts, reference):
    window = model.config.sliding_window
    assert supports_fast_path(model) and "sliding_attention" in model.config.layer_types
    assert len(set(map(len, prompts))) == len(prompts) and max(map(len, prompts)) > 3 * window
    assert all(len(ids) == MAX_NEW for ids in reference) and len({tuple(ids) for ids in reference}) > 5


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_fast_path_equals_generate(model, prompts, reference, tokenizer, batch_size):
    before = model.config._attn_implementation
    assert fast_greedy_ids(model, prompts, MAX_NEW, batch_size, tokenizer.pad_token_id) == reference
    assert model.config._attn_implementation == before  # the decoder's own attention only while it decodes
    assert not any("forward" in vars(m) for m in model.modules())  # and its fused norms


@pytest.mark.parametrize("batch_size", [3, 10])
def test_packed_prefill_decodes_what_generate_decodes(model, prompts, reference, tokenizer, batch_size, monkeypatch):
    """Where FlashAttention runs (a GPU), the prompts are prefilled packed, padding left out; here its
    varlen contract is played by the reference kernel the training tests use."""
    from test_attention import reference_varlen

    from peftbench import attention

    import peftbench.generate as generation_module

    monkeypatch.setattr(generation_module, "packs_prompts", lambda model: True)  # float32 on a CPU here
    monkeypatch.setattr(attention, "varlen_kernel", reference_varlen)
    assert fast_greedy_ids(model, prompts, MAX_NEW, batch_size, tokenizer.pad_token_id) == reference


FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_serves_other_families(family, monkeypatch):
    """Llama, Qwen2 (sliding layers after the first), Qwen3 and Mistral (every layer sliding), tiny and
    random: the fast path, padded and packed prefill, gives generate's tokens."""
    from test_attention import reference_varlen
    from tiny import tiny_family_config
    from transformers import AutoModelForCausalLM

    import peftbench.generate as generation_module
    from peftbench import attention
    from peftbench.generate import layer_kinds

    config = tiny_family_config(family, 512)
    torch.manual_seed(0)
    family_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    assert supports_fast_path(family_model)
    if family in ("qwen2", "mistral"):
        assert "sliding_attention" in layer_kinds(family_model.config)
    generator = torch.Generator().manual_seed(1)
    lengths = (3, 9, 17, 30, 41)  # beyond the window of 16
    family_prompts = [[2] + torch.randint(8, 512, (n,), generator=generator).tolist() for n in lengths]
    expected = [plain_greedy_ids(family_model, [p], MAX_NEW, 1, 0)[0] for p in family_prompts]
    assert fast_greedy_ids(family_model, family_prompts, MAX_NEW, 3, 0) == expected
    monkeypatch.setattr(generation_module, "packs_prompts", lambda model: True)
    monkeypatch.setattr(attention, "varlen_kernel", reference_varlen)
    assert fast_greedy_ids(family_model, family_prompts, MAX_NEW, 3, 0) == expected
    # On a GPU, sdpa's memory-efficient kernel can return its output with the head axes' strides swapped
    # (seen at Llama's 8 key/value heads); a view of it then fails where a reshape does not.
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: sdpa(*args, **kwargs).transpose(1, 2).contiguous().transpose(1, 2))
    assert fast_greedy_ids(family_model, family_prompts, MAX_NEW, 3, 0) == expected


def test_sliding_layers_keep_only_their_window(model, prompts, tokenizer):
    """Every batch's cache is longer than the window, so the sliding layers decode from their ring."""
    from peftbench.generate import _Decoder

    decoder = _Decoder(model, 2, 128, tokenizer.pad_token_id, (), False, {})
    window = model.config.sliding_window
    assert decoder.ring == window
    lengths = {kind: k.shape[2] for kind, k in zip(model.config.layer_types, decoder.keys)}
    assert lengths == {"sliding_attention": window, "full_attention": 128}


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@needs_cuda
def test_graph_replays_decode_what_eager_steps_and_generate_decode(model_dir, prompts, tokenizer):
    cuda_model = load_for_eval(METHODS["base"], model_dir, None, {}, "cuda", "float32")
    pad = tokenizer.pad_token_id
    stats = {}
    graphed = fast_greedy_ids(cuda_model, prompts, MAX_NEW, 4, pad, stats=stats)
    assert stats["graphs"] >= 1
    assert graphed == fast_greedy_ids(cuda_model, prompts, MAX_NEW, 4, pad, cuda_graph=False)
    assert graphed == plain_greedy_ids(cuda_model, prompts, MAX_NEW, 4, pad)


def test_row_stops_at_end_of_turn(model, prompts, reference, tokenizer):
    """Make the model say <end_of_turn> wherever it would have said `swapped`: those rows stop there."""
    eot, swapped = end_of_turn_id(tokenizer), reference[-1][3]
    stops = set(stop_ids(tokenizer)) | {swapped}
    expected = [next((ids[:k] for k, t in enumerate(ids) if t in stops), ids) for ids in reference]
    assert sum(len(ids) < MAX_NEW for ids in expected) >= 1 and len(expected[-1]) <= 3

    def say_end_of_turn(module, args, logits):
        logits = logits.clone()
        hit = logits.argmax(-1) == swapped
        logits[..., eot] = torch.where(hit, logits.max(-1).values + 10, logits[..., eot])
        return logits

    hook = model.lm_head.register_forward_hook(say_end_of_turn)
    try:
        ends = stop_ids(tokenizer)
        assert fast_greedy_ids(model, prompts, MAX_NEW, 3, tokenizer.pad_token_id, ends) == expected
        assert plain_greedy_ids(model, prompts, MAX_NEW, 3, tokenizer.pad_token_id, ends) == expected
        answers = greedy_answers(model, tokenizer, prompts, MAX_NEW, 4, "cpu")
        assert answers == plain_greedy_answers(model, tokenizer, prompts, MAX_NEW, 4, "cpu")
        assert answers[-1] == tokenizer.decode(expected[-1], skip_special_tokens=True).strip()
    finally:
        hook.remove()


def test_killed_generation_resumes_after_the_last_finished_chunk(tmp_path, model_dir, monkeypatch):
    """A run that dies after its first chunk keeps that chunk; the rerun answers only the rest, and the
    result equals an uninterrupted run's."""
    import peftbench.generate as generation_module
    from peftbench.io import read_jsonl

    rows = [{"id": str(i), "source": "s", "messages": [{"role": "user", "content": f"Question number {i}?" * (i + 1)},
                                                        {"role": "assistant", "content": "An answer."}]}
            for i in range(7)]
    test_path = tmp_path / "test.jsonl"
    test_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"max_new_tokens": 6, "batch_size": 2}
    run = lambda out: generation_module.generate("base", model_dir, None, test_path, {}, settings, out,  # noqa: E731
                                                 device="cpu", chunk_prompts=3)
    run(tmp_path / "whole.jsonl")

    class Killed(Exception):
        pass

    real_answers, calls, kill = generation_module.greedy_answers, [], [True]

    def dies_on_second_chunk(model, tokenizer, prompts, *args):
        calls.append(len(prompts))
        if kill[0] and len(calls) == 2:
            raise Killed()
        return real_answers(model, tokenizer, prompts, *args)

    monkeypatch.setattr(generation_module, "greedy_answers", dies_on_second_chunk)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(Killed):
        run(out)
    assert not out.exists()
    calls.clear()
    kill[0] = False
    run(out)
    assert calls == [3, 1]  # chunk 1 (3 prompts) was kept; chunks 2 and 3 are answered now
    assert read_jsonl(out) == read_jsonl(tmp_path / "whole.jsonl")
    assert not (tmp_path / ".resumed.jsonl.chunks").exists()


def test_an_unmerged_adapter_decodes_on_the_plain_path_with_batch_size_zero(model, prompts, tokenizer, monkeypatch):
    """A peft model that cannot be merged keeps its own forward: it decodes with generate, and batch_size 0
    (as many as fit, the study's setting) sizes the plain path's batches too, where it used to crash."""
    from peft import IA3Config, get_peft_model

    unmerged = get_peft_model(model, IA3Config(target_modules=["v_proj", "down_proj"], feedforward_modules=["down_proj"],
                                               task_type="CAUSAL_LM")).eval()
    try:
        assert not supports_fast_path(unmerged)
        automatic = greedy_answers(unmerged, tokenizer, prompts[:4], 8, 0, "cpu")
        assert automatic == greedy_answers(unmerged, tokenizer, prompts[:4], 8, 2, "cpu")
    finally:
        unmerged.unload()  # the module-scoped model, as it was


@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_graph_replays_of_other_families_decode_what_generate_decodes(family):
    from tiny import tiny_family_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        family_model = AutoModelForCausalLM.from_config(tiny_family_config(family, 512), dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(1)
    family_prompts = [[2] + torch.randint(8, 512, (n,), generator=generator).tolist() for n in (3, 9, 17, 30, 41)]
    stats = {}
    graphed = fast_greedy_ids(family_model, family_prompts, MAX_NEW, 3, 0, stats=stats)
    assert stats["graphs"] >= 1
    assert graphed == plain_greedy_ids(family_model, family_prompts, MAX_NEW, 3, 0)


@needs_cuda
def test_packed_prefill_fills_the_cache_the_padded_prefill_fills(model_dir, prompts, tokenizer, monkeypatch):
    """bf16 on a GPU: FlashAttention over the packed prompts against sdpa over the padded batch."""
    import peftbench.generate as generation_module
    from peftbench.generate import _Decoder, decode_attention_on, left_pad

    bf16 = load_for_eval(METHODS["base"], model_dir, None, {}, "cuda", "bfloat16")
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id, "cuda")
    decoders, firsts = [], []
    with torch.inference_mode(), decode_attention_on(bf16):
        for packed in (True, False):
            monkeypatch.setattr(generation_module, "packs_prompts", lambda model, packed=packed: packed)
            decoders.append(_Decoder(bf16, len(prompts), 128, tokenizer.pad_token_id, (), False, {}))
            firsts.append(decoders[-1].prefill(input_ids, attention_mask))
    packed, padded = decoders
    monkeypatch.undo()
    assert generation_module.packs_prompts(bf16)
    width, ring = input_ids.shape[1], packed.ring
    for layer, sliding in enumerate(packed.sliding):
        seen = packed.ring_valid if sliding else packed.valid[:, :width]
        slot_axis = torch.arange(ring, device="cuda") if sliding else torch.arange(width, device="cuda")
        for got, expected in ((packed.keys, padded.keys), (packed.values, padded.values)):
            a, b = got[layer][:, 0, : len(slot_axis)], expected[layer][:, 0, : len(slot_axis)]
            torch.testing.assert_close(a[seen], b[seen], rtol=2e-2, atol=2e-2)
    assert (firsts[0] == firsts[1]).float().mean() >= 0.8  # bf16: near-tied logits may round either way


def test_batch_sizing_reads_a_config_without_head_dim():
    """Qwen2's config has no head_dim (hidden / heads): batch_size 0 on a GPU sized its batches from it and
    crashed before any answer; the per-row bytes now come from the head width every family has."""
    from tiny import tiny_family_config

    from peftbench.generate import bytes_per_row, head_dim_of

    qwen2 = tiny_family_config("qwen2", 512)
    assert getattr(qwen2, "head_dim", None) is None and head_dim_of(qwen2) == 64 // 4
    cache = 2 * 2 * 2 * 16 * 100 * 2  # K and V x layers x KV heads x head width x tokens x bf16 bytes
    assert bytes_per_row(qwen2, 100, 2) == cache + 100 * (4 * 64 + 3 * 128) * 2 + 6 * 100**2 + 2 * 512 * 4
