"""CUDA graphs of the decoder (peftbench.graphs): rows padded to fixed shapes compute what unpadded rows
compute (on any machine), and replayed graphs compute what the eager decoder computes (on a GPU only:
`python -m pytest tests/test_graphs.py` there, which scripts/offline_gpu_bundle.sh makes possible)."""
import importlib.util

import pytest
import torch
from test_attention import reference_varlen
from test_methods import CONVERSATIONS, SETTINGS, TRAINING

from peftbench import attention, graphs
from peftbench.chat import IGNORE_INDEX, encode_chat
from peftbench.methods import METHODS
from peftbench.model import load_model
from peftbench.train import answer_loss, micro_batches, pack, training_step, validation_loss
from peftbench.trainable import build_trainable, causal_lm

MULTIPLE, SLOTS = 32, 5  # small enough that the tiny examples meet several padded lengths


@pytest.fixture()
def examples(tokenizer):
    return [encode_chat(tokenizer, c) for c in CONVERSATIONS]


def test_pack_pads_rows_to_fixed_shapes(examples):
    input_ids, labels, position_ids, lengths, predicting = pack(examples, "cpu", multiple=MULTIPLE, slots=SLOTS)
    real = sum(len(ids) for ids, _ in examples)
    assert input_ids.shape[1] % MULTIPLE == 0 and 0 <= input_ids.shape[1] - real < MULTIPLE
    assert len(lengths) == SLOTS and sum(lengths) == input_ids.shape[1]
    assert lengths[: len(examples)] == tuple(len(ids) for ids, _ in examples)
    assert lengths[len(examples) + 1:] == (0,) * (SLOTS - len(examples) - 1)  # the empty slots
    assert (labels[0, real:] == IGNORE_INDEX).all()  # the filler is outside the loss
    assert (position_ids[0, real:] == torch.arange(input_ids.shape[1] - real)).all()
    assert predicting.tolist() == (labels[0, 1:] != IGNORE_INDEX).nonzero().flatten().tolist()
    # one example fewer: the same shapes whenever the tokens round up alike
    shorter = pack(examples[:-1] + [examples[0]], "cpu", multiple=4096, slots=SLOTS)
    assert shorter[0].shape == (1, 4096) and len(shorter[3]) == SLOTS
    with pytest.raises(ValueError, match="at most 4 examples"):
        pack(examples * 2, "cpu", multiple=MULTIPLE, slots=SLOTS)


def loss_and_grads(model, *batch):
    loss = answer_loss(model, *batch)
    weights = [p for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "down_proj.weight"))]
    return loss.detach(), torch.autograd.grad(loss, weights)


@pytest.mark.parametrize("kernel", ["sdpa", attention.NAME])
def test_a_padded_row_computes_what_the_unpadded_row_computes(monkeypatch, model_dir, examples, kernel):
    if kernel == attention.NAME:  # FlashAttention's offsets, with the filler and the empty slots
        monkeypatch.setattr(attention, "varlen_kernel", reference_varlen)
    model = load_model(model_dir, "float32", "cpu", attention=kernel)
    expected = loss_and_grads(model, *pack(examples, "cpu"))
    got = loss_and_grads(model, *pack(examples, "cpu", multiple=MULTIPLE, slots=SLOTS))
    torch.testing.assert_close(got[0], expected[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(got[1], expected[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- on a GPU

needs_gpu = pytest.mark.skipif(not attention.supported("cuda"), reason="CUDA graphs of FlashAttention need a GPU")
# Variants beyond one per kind: DoRA (LoRA's fast path with its magnitude vectors) and one other peft method.
VARIANTS = {"dora": ("lora", {**SETTINGS["lora"], "use_dora": True}),
            "loha": ("loha", {**METHODS["loha"].DEFAULTS, "r": 4, "alpha": 8, "lr": 1e-2}),
            "full": ("full", {"lr": 1e-5})}  # full fine-tuning at its default rate (test_methods' is larger)
GPU_CASES = [("lora", False), ("qlora", False), ("galore", False), ("hybrid", False), ("full", False),
             ("dora", False), ("loha", False), ("lora", True), ("full", True), ("dora", True)]


def kind_and_settings(name):
    kind, settings = VARIANTS.get(name, (name, SETTINGS.get(name)))
    return METHODS[kind], settings


def gpu_build(method, model_dir, tokenizer, cuda_graphs, compile_layers, **overrides):
    kind, settings = kind_and_settings(method)
    if kind.quantization(settings) is not None and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    # GaLore also checkpoints its first layer: the recomputed forward is captured in the backward graph.
    training = dict(TRAINING, compile=compile_layers, cuda_graphs=cuda_graphs, batch_size=SLOTS - 1,
                    checkpoint_layers=1 if method == "galore" else 0, **overrides)
    torch.manual_seed(0)
    model, groups = build_trainable(kind, model_dir, settings, training, tokenizer, "cuda")
    model.train()
    return model, [p for group in groups for p in group], groups


@needs_gpu
@pytest.mark.parametrize("method,compile_layers", GPU_CASES)
def test_replayed_graphs_compute_the_eager_gradients(model_dir, tokenizer, examples, method, compile_layers):
    replays_match_eager(model_dir, tokenizer, examples, method, compile_layers)


@needs_gpu
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("method,compile_layers", [("lora", False), ("qlora", False), ("galore", False),
                                                   ("full", True), ("dora", True)])
def test_other_families_replay_the_eager_gradients(family_model_dir, family, method, compile_layers):
    """Packed FlashAttention and CUDA-graph training on a tiny Llama (no padding token) and Qwen2 (sliding
    layers after the first), compiled or not: the replays compute what the family's eager decoder computes."""
    from peftbench.model import load_tokenizer

    model_dir = family_model_dir(family)
    tokenizer = load_tokenizer(model_dir)
    # the turn tokens of this family's template (TRAINING names Gemma's)
    replays_match_eager(model_dir, tokenizer, [encode_chat(tokenizer, c) for c in CONVERSATIONS], method,
                        compile_layers, trainable_tokens="auto")


def replays_match_eager(model_dir, tokenizer, examples, method, compile_layers, **overrides):
    eager, eager_trained, _ = gpu_build(method, model_dir, tokenizer, False, compile_layers, **overrides)
    graphed, graphed_trained, _ = gpu_build(method, model_dir, tokenizer, True, compile_layers, **overrides)
    decoder_graphs = graphs.attached(causal_lm(graphed))
    assert decoder_graphs is not None and graphs.attached(causal_lm(eager)) is None
    reordered = [examples[1], examples[0], examples[2]]  # the same padded length as `examples`, other data
    for batch in (examples, examples[:1], reordered):
        packed = pack(batch, "cuda", multiple=MULTIPLE, slots=SLOTS)
        results = []
        for model, trained in ((eager, eager_trained), (graphed, graphed_trained)):
            for p in trained:  # zeroed in place: the graphs add into these tensors
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = answer_loss(model, *packed)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in trained]))
        (eager_loss, eager_grads), (graphed_loss, graphed_grads) = results
        torch.testing.assert_close(graphed_loss, eager_loss, rtol=1e-3, atol=1e-3)
        for a, b in zip(graphed_grads, eager_grads):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)
        assert any(g.abs().sum() > 0 for g in graphed_grads)
    assert len(decoder_graphs.captures) == 2  # `reordered` replayed the graphs captured for `examples`


@needs_gpu
@pytest.mark.parametrize("method", ["lora", "galore", "full", "dora"])
def test_training_steps_with_graphs_follow_the_eager_steps(model_dir, tokenizer, examples, method):
    """The optimizer updates the weights in place between replays, and the graphs read the new values."""
    runs = []
    for cuda_graphs in (False, True):
        model, trained, groups = gpu_build(method, model_dir, tokenizer, cuda_graphs, False)
        kind, settings = kind_and_settings(method)
        optimizer = kind.optimizer(groups, settings, TRAINING)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        losses = [training_step(model, optimizer, scheduler, batch, trained, 1.0)[0].float()
                  for batch in (examples, examples[:1], examples, examples[:1])]
        runs.append((torch.stack(losses), [p.detach().float().clone() for p in trained]))
        assert all(loss.device.type == "cpu" for loss in losses)  # read after the forward: no wait later
    (eager_losses, eager_weights), (graphed_losses, graphed_weights) = runs
    assert eager_losses[2] < eager_losses[0]  # it learns
    torch.testing.assert_close(graphed_losses, eager_losses, rtol=2e-2, atol=2e-2)
    for a, b in zip(graphed_weights, eager_weights):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)


@needs_gpu
@pytest.mark.parametrize("method", ["lora", "hybrid"])
def test_micro_batched_steps_with_graphs_follow_the_whole_batch_eager_steps(model_dir, tokenizer, examples, method):
    """micro_batch_tokens (config.yaml's LoRA and hybrid): each group replays the graphs of its own row length,
    the groups' gradients add up in the graphs' .grad tensors to the whole batch's gradient, and the steps
    follow the eager whole-batch ones."""
    budget = max(len(ids) for ids, _ in examples)  # the longest alone, the others together or alone
    assert len(micro_batches(examples, budget)) > 1
    runs = []
    for cuda_graphs, tokens in ((False, 0), (True, budget)):
        model, trained, groups = gpu_build(method, model_dir, tokenizer, cuda_graphs, False)
        initial = [p.detach().float().clone() for p in trained]
        kind, settings = kind_and_settings(method)
        optimizer = kind.optimizer(groups, settings, TRAINING)
        stepped_grads = []  # what each optimizer step receives, after clipping
        optimizer.register_step_pre_hook(
            lambda *_, grads=stepped_grads, trained=trained: grads.append([p.grad.float().clone() for p in trained]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        losses = [training_step(model, optimizer, scheduler, batch, trained, 1.0, tokens)[0].float()
                  for batch in (examples, examples[:1], examples)]
        moved = [p.detach().float() - w for p, w in zip(trained, initial)]
        runs.append((torch.stack(losses), stepped_grads, moved))
    (eager_losses, eager_grads, eager_moved), (losses, grads, moved) = runs
    assert eager_losses[2] < eager_losses[0]  # it learns
    torch.testing.assert_close(losses, eager_losses, rtol=2e-2, atol=2e-2)
    # The first step's gradient, from the same weights: the groups' sum is the whole batch's.
    for a, b in zip(grads[0], eager_grads[0]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)
    # The weights after three steps. Summed in groups, a bf16 gradient rounds differently, and Adam turns a
    # near-zero gradient (LoRA's A at the second step: B starts at zero) into a step of about ±lr whatever its
    # size, so its elements may end a fraction of lr apart; a wrong weighting of the groups moves them by
    # about as much as the steps do (the CPU test of every kind, test_methods, holds the exact arithmetic).
    for a, b in zip(moved, eager_moved):
        assert (a - b).norm() <= 0.25 * b.norm(), ((a - b).norm(), b.norm())


@needs_gpu
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_validation_between_graphed_compiled_steps_changes_nothing(model_dir, tokenizer, examples, method):
    """The study's path (compiled layers, CUDA graphs) with a validation pass after every step: the passes run
    the eager decoder without gradients and leave the graphs' replays, hence training, as they were."""
    runs = []
    for validate in (False, True):
        model, trained, groups = gpu_build(method, model_dir, tokenizer, True, True)
        kind, settings = kind_and_settings(method)
        optimizer = kind.optimizer(groups, settings, TRAINING)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        losses, validations = [], []
        for batch in (examples, examples[:1], examples):
            losses.append(training_step(model, optimizer, scheduler, batch, trained, 1.0)[0].float())
            if validate:
                validations.append(validation_loss(model, examples[1:], SLOTS - 1))
        runs.append((torch.stack(losses), [p.detach().float().clone() for p in trained], validations))
    (plain_losses, plain_weights, _), (losses, weights, validations) = runs
    assert all(v is not None and v > 0 for v in validations), validations
    torch.testing.assert_close(losses, plain_losses, rtol=1e-3, atol=1e-3)
    for a, b in zip(weights, plain_weights):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


@needs_gpu
def test_graphs_refuse_gradients_set_to_none(model_dir, tokenizer, examples):
    model, trained, _ = gpu_build("lora", model_dir, tokenizer, True, False)
    packed = pack(examples, "cuda", multiple=MULTIPLE, slots=SLOTS)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        answer_loss(model, *packed).backward()
    for p in trained:
        p.grad = None
    with pytest.raises(RuntimeError, match="set_to_none=False"), torch.autocast("cuda", dtype=torch.bfloat16):
        answer_loss(model, *packed)


def test_peak_memory_adds_back_what_a_forward_graph_holds(monkeypatch):
    """A replay allocates nothing, so torch sees a forward graph's activations only while capturing: the
    peak outside captures gets the most any forward graph holds added back (an upper bound)."""
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 10)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 30)
    decoder_graphs = object.__new__(graphs.DecoderGraphs)  # its arithmetic only: no GPU to capture on
    decoder_graphs.reset_peaks()
    decoder_graphs.held_bytes = 7
    decoder_graphs.outside = {"allocated": 12, "reserved": 25}  # folded in before a capture reset torch's
    decoder_graphs.in_captures = {"allocated": 15, "reserved": 28}
    assert decoder_graphs.peak("allocated") == 15  # nothing replayed yet: the captures' peak
    decoder_graphs.replayed = True
    assert decoder_graphs.peak("allocated") == 12 + 7  # a loss's peak while its activations are held
    assert decoder_graphs.peak("reserved") == 30  # the pool is reserved memory, which torch counts
    decoder_graphs.reset_peaks()
    assert decoder_graphs.peak("allocated") == 10 and not decoder_graphs.replayed
