"""Each method on the tiny Gemma 3: what trains, what is 4-bit, the optimizer groups, one step, save/reload."""
import pytest
import torch

from peftbench.chat import encode_chat
from peftbench.methods import METHODS, TRAINED_KINDS
from peftbench.train import answer_loss, collate, micro_batches, pack, training_step
from peftbench.trainable import TokenRows, build_trainable, causal_lm, load_for_eval, save_trained

ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP = {"gate_proj", "up_proj", "down_proj"}
TRAINING = {"gradient_checkpointing": False, "compile": True, "trainable_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "trainable_tokens_lr": 1e-2, "weight_decay": 0.0}
# Each kind's defaults, made tiny where they size the model's adapters or projections.
TINY = {"lora": {"r": 4, "lora_alpha": 8, "lr": 1e-2}, "qlora": {"r": 4, "lora_alpha": 8, "lr": 1e-2},
        "galore": {"rank": 4, "update_proj_gap": 10, "lr": 1e-2},
        "hybrid": {"r": 4, "lora_alpha": 8, "lr": 1e-2, "rank": 4, "update_proj_gap": 10, "galore_lr": 1e-2},
        "full": {"lr": 1e-2}}  # large enough that two steps change more than saving in bf16 rounds off
SETTINGS = {kind: {**METHODS[kind].DEFAULTS, **TINY.get(kind, {})} for kind in TRAINED_KINDS}
CONVERSATIONS = [
    [{"role": "user", "content": "What does the Python function do?"},
     {"role": "assistant", "content": "It returns the value of the argument."}],
    [{"role": "user", "content": "Which module provides dedent?"},
     {"role": "assistant", "content": "The textwrap module: from textwrap import dedent."}],
    [{"role": "user", "content": "The signature is json.dumps(obj, *, skipkeys=False). Explain this keyword."},
     {"role": "assistant", "content": "Name some functions from the math module: gcd, sqrt and floor."},
     {"role": "user", "content": "Which module provides dedent?"},
     {"role": "assistant", "content": "It returns the value of the argument: from textwrap import dedent."}],
]


def build(method, model_dir, tokenizer):
    torch.manual_seed(0)
    return build_trainable(METHODS[method], model_dir, SETTINGS[method], TRAINING, tokenizer, "cpu")


def leaf(name):
    """'...layers.0.self_attn.q_proj.lora_A.default.weight' -> ('q_proj', 'lora')."""
    parts = name.split(".")
    kind = "lora" if "lora_A" in parts or "lora_B" in parts else "tokens" if "trainable_tokens_delta" in parts else "full"
    projection = next((p for p in parts if p.endswith("_proj")), None)
    return projection, kind


def trainable_summary(model):
    return {leaf(n) for n, p in model.named_parameters() if p.requires_grad}


def four_bit_leaves(model):
    import bitsandbytes as bnb

    return {name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


@pytest.mark.parametrize("method, trainable, four_bit", [
    ("lora", {(p, "lora") for p in ATTENTION | MLP} | {(None, "tokens")}, set()),
    ("qlora", {(p, "lora") for p in ATTENTION | MLP} | {(None, "tokens")}, {"base_layer"}),
    ("galore", {(p, "full") for p in ATTENTION | MLP} | {(None, "tokens")}, set()),
    ("hybrid", {(p, "full") for p in ATTENTION} | {(p, "lora") for p in MLP} | {(None, "tokens")}, {"base_layer"}),
])
def test_exact_trainable_set_and_quantized_modules(method, trainable, four_bit, model_dir, tokenizer):
    model, groups = build(method, model_dir, tokenizer)
    assert trainable_summary(model) == trainable
    assert four_bit_leaves(model) == four_bit
    if method in ("qlora", "hybrid"):
        import bitsandbytes as bnb
        quantized = {n.split(".")[-2] for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
        assert quantized == (ATTENTION | MLP if method == "qlora" else MLP)
    # On a CPU the model computes and trains in float32, 4-bit layers included (bf16 products there are
    # 8-100x slower); nothing trainable is hidden from the optimizer.
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.float32}
    if four_bit:
        assert {m.compute_dtype for m in model.modules() if hasattr(m, "compute_dtype")} == {torch.float32}
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g) == n_trainable


def test_hybrid_optimizer_groups(model_dir, tokenizer):
    model, groups = build("hybrid", model_dir, tokenizer)
    optimizer = METHODS["hybrid"].optimizer(groups, SETTINGS["hybrid"], TRAINING)
    galore_group, lora_group, token_group = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert galore_group["rank"] == 4 and galore_group["update_proj_gap"] == 10 and galore_group["scale"] == 0.25
    assert {leaf(names[id(p)]) for p in galore_group["params"]} == {(p, "full") for p in ATTENTION}
    assert len(galore_group["params"]) == 4 * 2  # four projections in each of the two layers
    assert {leaf(names[id(p)]) for p in lora_group["params"]} == {(p, "lora") for p in MLP}
    assert "rank" not in lora_group and "rank" not in token_group
    assert {leaf(names[id(p)]) for p in token_group["params"]} == {(None, "tokens")}
    assert token_group["lr"] == TRAINING["trainable_tokens_lr"]


def base_state(model):
    """Every parameter and buffer of the transformers model, keyed by name, as float copies."""
    return {n: t.detach().clone() for n, t in causal_lm(model).state_dict().items()}


def one_step(method, model, groups, tokenizer):
    optimizer = METHODS[method].optimizer(groups, SETTINGS[method], TRAINING)
    batch = pack([encode_chat(tokenizer, c) for c in CONVERSATIONS], "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = answer_loss(model, *batch)
    loss.backward()
    optimizer.step()
    # LoRA B starts at zero, so a second step is needed before A's change shows in outputs.
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        answer_loss(model, *batch).backward()
    optimizer.step()


@pytest.mark.parametrize("method", TRAINED_KINDS)
def test_one_step_changes_only_the_trained_parameters(method, model_dir, tokenizer):
    model, groups = build(method, model_dir, tokenizer)
    before = base_state(model)
    one_step(method, model, groups, tokenizer)
    after = base_state(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    # what changed is exactly what trains (a kind added later is checked by this alone)
    assert changed == {n for n, t in causal_lm(model).state_dict(keep_vars=True).items() if t.requires_grad}
    kinds = {leaf(n) for n in changed}
    expected = {"lora": {(p, "lora") for p in ATTENTION | MLP},
                "qlora": {(p, "lora") for p in ATTENTION | MLP},
                "galore": {(p, "full") for p in ATTENTION | MLP},
                "hybrid": {(p, "full") for p in ATTENTION} | {(p, "lora") for p in MLP}}.get(method)
    if method == "full":
        return
    if expected is not None:
        assert kinds == expected | {(None, "tokens")}
    # Embedding, norms and (4-bit) base weights are untouched.
    assert not any("norm" in n or n.endswith("embed_tokens.weight") or "base_layer" in n for n in changed)


RECOMPUTE = {"full": {"gradient_checkpointing": True},
             "first layer": {"checkpoint_layers": 1},
             "elementwise": {"recompute_elementwise": True},
             "micro-batches": {"micro_batch_tokens": 64}}


@pytest.mark.parametrize("recompute", list(RECOMPUTE))
@pytest.mark.parametrize("method", TRAINED_KINDS)
def test_memory_knobs_train_the_same_weights(method, recompute, model_dir, tokenizer):
    """The memory knobs recompute in backward what the forward did not keep: each layer's whole forward
    (training.gradient_checkpointing, the knob the out-of-memory error names), the first layers' whole
    forward (the checkpoint_layers knob) or only the elementwise work (the recompute_elementwise knob); or
    run the batch in groups of examples whose gradients add up (the micro_batch_tokens knob). Two training
    steps end with the weights of a run without."""
    examples = [encode_chat(tokenizer, c) for c in CONVERSATIONS]
    if recompute == "micro-batches":  # the tiny conversations in more than one group, one example alone
        groups = micro_batches(examples, RECOMPUTE[recompute]["micro_batch_tokens"])
        assert len(groups) > 1 and min(map(len, groups)) == 1, [[len(ids) for ids, _ in g] for g in groups]
    trained = []
    for training in (TRAINING, dict(TRAINING, **RECOMPUTE[recompute])):
        torch.manual_seed(0)
        model, groups = build_trainable(METHODS[method], model_dir, SETTINGS[method], training, tokenizer, "cpu")
        model.train()
        optimizer = METHODS[method].optimizer(groups, SETTINGS[method], training)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        trainable = [p for group in groups for p in group]
        losses = [training_step(model, optimizer, scheduler, examples, trainable, 1.0,
                                training.get("micro_batch_tokens", 0))[0] for _ in range(2)]
        trained.append((losses, [p.detach().clone() for p in trainable]))
    (losses, weights), (recomputed_losses, recomputed_weights) = trained
    torch.testing.assert_close(recomputed_losses, losses, rtol=1e-5, atol=1e-6)
    # Summed in groups, a gradient rounds differently; Adam divides a near-zero one by its own size, so a
    # weight may move by up to ~1e-3 of a step (lr 1e-2) apart: a wrong weighting of the groups moves it by more.
    atol = 5e-5 if recompute == "micro-batches" else 1e-6
    for a, b in zip(recomputed_weights, weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol)


def backward_ops(model_dir, tokenizer, **training):
    """How many times each aten operator ran in one GaLore backward pass."""
    from collections import Counter

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = Counter()

    class CountOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model, _ = build_trainable(METHODS["galore"], model_dir, SETTINGS["galore"], dict(TRAINING, **training),
                               tokenizer, "cpu")
    model.train()
    with sdpa_kernel(SDPBackend.MATH):  # as training_step runs on a CPU
        loss = answer_loss(model, *pack([encode_chat(tokenizer, c) for c in CONVERSATIONS], "cpu"))
        with CountOps():
            loss.backward()
    return counts


def test_recompute_elementwise_keeps_the_products_and_redoes_the_rest(model_dir, tokenizer):
    """Selective recomputation: backward runs no more matrix products than without it (their outputs were
    kept), unlike full checkpointing, but redoes elementwise work (norms, rotary, gelu) it did not keep."""
    default = backward_ops(model_dir, tokenizer)
    elementwise = backward_ops(model_dir, tokenizer, recompute_elementwise=True)
    full = backward_ops(model_dir, tokenizer, gradient_checkpointing=True)
    assert elementwise["mm"] == default["mm"] < full["mm"]
    assert elementwise["mul"] > default["mul"]
    assert elementwise["rsqrt"] > default["rsqrt"] == 0


def test_checkpoint_layers_recomputes_the_first_layers_only(model_dir, tokenizer):
    """A variant's checkpoint_layers knob checkpoints that many layers from the first; gradient_checkpointing:
    true checkpoints every layer whatever it says."""
    def checkpointed(method, **training):
        model, _ = build_trainable(METHODS[method], model_dir, SETTINGS[method], dict(TRAINING, **training),
                                   tokenizer, "cpu")
        return [layer.gradient_checkpointing for layer in causal_lm(model).model.layers]

    assert checkpointed("galore", checkpoint_layers=1) == [True, False]
    assert checkpointed("lora", checkpoint_layers=1) == [True, False]
    assert checkpointed("lora") == [False, False]
    assert checkpointed("galore", checkpoint_layers=5) == [True, True]
    assert checkpointed("galore", checkpoint_layers=1, gradient_checkpointing=True) == [True, True]
    default = backward_ops(model_dir, tokenizer)
    first = backward_ops(model_dir, tokenizer, checkpoint_layers=1)
    full = backward_ops(model_dir, tokenizer, gradient_checkpointing=True)
    assert default["mm"] < first["mm"] < full["mm"]


# LoRA variants through LoraConfig keywords; PiSSA and OLoRA change the base weights at initialisation,
# so what is saved must be converted to apply to the original weights.
LORA_VARIANTS = {"dora": {"use_dora": True}, "rslora": {"use_rslora": True}, "pissa": {"init_lora_weights": "pissa"},
                 "olora": {"init_lora_weights": "olora"}}


# Other peft methods, built from their config classes' keywords (tiny sizes), and full fine-tuning.
OTHER_KINDS = {"loha": {"r": 4, "alpha": 8}, "lokr": {"r": 4, "alpha": 8}, "ia3": {}, "vera": {"r": 8},
               "oft": {"oft_block_size": 16}, "full": {}}


@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_other_kinds_train_what_they_say_and_reload_as_trained(kind, model_dir, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(SETTINGS, kind, {**METHODS[kind].DEFAULTS, **OTHER_KINDS[kind], "lr": 1e-2})
    model, groups = build(kind, model_dir, tokenizer)
    names = {id(p): n for n, p in model.named_parameters()}
    if kind == "full":  # every weight, the embedding (and its turn-token rows) included; nothing else
        assert not groups.adapter and not groups.tokens
        assert {names[id(p)] for p in groups.full_rank} == {n for n, _ in causal_lm(model).named_parameters()}
    else:  # the method's adapters on every projection, and peftbench's own turn-token rows
        assert {leaf(names[id(p)])[0] for p in groups.adapter} == ATTENTION | MLP
        assert [names[id(p)].split(".")[-2:] for p in groups.tokens] == [["turn_token_rows", "rows"]]
    before = base_state(model)
    one_step(kind, model, groups, tokenizer)
    after = base_state(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert ("model.embed_tokens.weight" in changed) == (kind == "full")
    assert all(p.grad is not None for p in groups.tokens)
    test_saved_model_reloads_with_the_same_logits(kind, model_dir, tokenizer, tmp_path / "saved")


@pytest.mark.parametrize("variant", LORA_VARIANTS)
def test_lora_variants_reload_as_trained(variant, model_dir, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(SETTINGS, "lora", {**SETTINGS["lora"], **LORA_VARIANTS[variant]})
    test_saved_model_reloads_with_the_same_logits("lora", model_dir, tokenizer, tmp_path)


@pytest.mark.parametrize("method", TRAINED_KINDS)
def test_saved_model_reloads_with_the_same_logits(method, model_dir, tokenizer, tmp_path):
    model, groups = build(method, model_dir, tokenizer)
    one_step(method, model, groups, tokenizer)
    model.eval()
    input_ids, _, attention_mask = collate([encode_chat(tokenizer, c) for c in CONVERSATIONS],
                                           tokenizer.pad_token_id, "cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the training path's logits
        rows, lm = TokenRows(causal_lm(model)), causal_lm(model)
        hidden = lm.model(inputs_embeds=rows.embed(input_ids), attention_mask=attention_mask).last_hidden_state
        trained_logits = rows.logits(hidden).float()
    save_trained(model, METHODS[method], SETTINGS[method], tmp_path)
    reloaded = load_for_eval(METHODS[method], model_dir, tmp_path, SETTINGS[method], "cpu")
    with torch.no_grad():
        reloaded_logits = reloaded(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        base_logits = load_for_eval(METHODS["base"], model_dir, None, {}, "cpu")(
            input_ids=input_ids, attention_mask=attention_mask).logits.float()
    real = attention_mask.bool()
    difference = (reloaded_logits - trained_logits)[real].abs().max()
    training_effect = (base_logits - trained_logits)[real].abs().max()
    # bf16 rounding of merged weights only: far below what training changed.
    assert difference < 0.05 * training_effect, (difference, training_effect)


def test_packed_answer_loss_matches_the_stock_loss_on_padded_batches(model_dir, tokenizer):
    """Training's path (examples packed into one row, answer-only loss, chunked or not) gives the plain
    recipe's loss and gradients (padded rows, the model's stock loss): attention never crosses examples,
    sliding windows included (the tiny model's window is 16 tokens, shorter than these conversations)."""
    model, groups = build("lora", model_dir, tokenizer)
    for name, weight in model.named_parameters():  # B starts at zero: A's gradients would be zero on both paths
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.02)
    examples = [encode_chat(tokenizer, c) for c in CONVERSATIONS]
    assert all(len(ids) > 16 for ids, _ in examples)
    trainable = [p for g in groups for p in g]

    def loss_and_grads(compute):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compute()
        grads = torch.autograd.grad(loss, trainable)
        return loss.detach(), grads

    input_ids, labels, attention_mask = collate(examples, tokenizer.pad_token_id, "cpu")
    packed = pack(examples, "cpu")
    assert packed[0].shape == (1, sum(len(ids) for ids, _ in examples))
    stock = loss_and_grads(lambda: model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss)
    whole = loss_and_grads(lambda: answer_loss(model, *packed))
    chunked = loss_and_grads(lambda: answer_loss(model, *packed, chunk=3))
    for other in (whole, chunked):
        torch.testing.assert_close(other[0], stock[0], rtol=2e-2, atol=2e-2)  # bf16 compute
        for a, b in zip(other[1], stock[1]):
            # Relative to the whole gradient: a few bf16-rounded elements differ by more than 5 % of their
            # own (tiny) value, while attention across examples would change the gradient as a whole.
            assert (a - b).norm() <= 2e-2 * b.norm(), ((a - b).norm() / b.norm()).item()
