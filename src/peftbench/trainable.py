"""Turn a method's declaration (methods/) into a trainable model, save what training changed, and rebuild
exactly the trained model for evaluation.

Every trained method is wrapped by peft: LoRA adapters where the method asks for them, and the turn
tokens' embedding rows (peft trainable tokens) for all, so each method learns to end its turn.
Full-rank weights train in the model's dtype: bf16 on a GPU, where the GaLore optimizer keeps their
float32 masters (updates of 1e-5 vanish in bf16 rounding: methods/galore.py), float32 on a CPU
(model.compute_dtype); they are saved in the configured dtype, which is what the GPU's forward pass used.
"""
import dataclasses
import functools
import logging
import shutil
from collections import namedtuple
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from peftbench import attention, graphs
from peftbench.model import DTYPES, compute_dtype, load_model, to_device

log = logging.getLogger(__name__)
ParamGroups = namedtuple("ParamGroups", ["adapter", "full_rank", "tokens"])
ADAPTER_DIR = "adapter"
FULL_WEIGHTS = "full_rank_weights.safetensors"
TURN_TOKENS = "turn_token_rows.safetensors"
# LoRA initialisations that move part of the base weights into the adapter (W = W_res + B A): the trained
# model's base is W_res, not the model a user downloads, so the adapter is saved converted (peft's
# path_initial_model_for_weight_conversion) to one that applies to the original weights.
BASE_CHANGING_INITS = ("pissa", "olora", "corda")


def token_ids(tokenizer, tokens):
    """The ids of training.trainable_tokens; `auto`: the special tokens the chat template writes around a turn."""
    if tokens == "auto":
        from peftbench.chat import format_of

        tokens = format_of(tokenizer).turn_tokens
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unknown = [t for t, i in zip(tokens, ids) if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ValueError(f"training.trainable_tokens: {unknown} are not tokens of this tokenizer")
    return ids


def _peft_config(method, settings, trainable_token_ids):
    """The kind's peft config with the turn tokens' rows trained by peft where it can (LoRA's
    trainable_token_indices; a TrainableTokensConfig alone for kinds without adapters), and whether
    peftbench must train the rows itself (TurnTokenRows: other peft methods cannot train rows beside
    their adapters)."""
    from peft import TrainableTokensConfig

    config = method.peft_config(settings)
    if config is not None:
        if trainable_token_ids and hasattr(config, "trainable_token_indices"):  # replace() reruns its checks
            return dataclasses.replace(config, trainable_token_indices={"embed_tokens": trainable_token_ids}), False
        return config, bool(trainable_token_ids)
    if trainable_token_ids:
        return TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=trainable_token_ids), False
    return None, False


class TurnTokenRows(torch.nn.Module):
    """The turn tokens' embedding rows as a parameter of their own, in float32, used by TokenRows in
    training and written into the embedding for evaluation (load_for_eval)."""

    def __init__(self, weight, ids):
        super().__init__()
        self.register_buffer("index", torch.tensor(ids, device=weight.device), persistent=False)
        self.rows = torch.nn.Parameter(weight.detach()[self.index].float().clone())


def _full_rank_parameters(model, leaf_names):
    """The weights of the decoder's linear layers whose leaf name is in leaf_names, with their names; every
    parameter of the model for "*" (full fine-tuning; a tied output layer counts once)."""
    if leaf_names == "*":
        return dict(model.named_parameters())
    wanted = set(leaf_names)
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if name.split(".")[-1] in wanted and ".layers." in f".{name}" and isinstance(module, torch.nn.Linear)
    }


def build_trainable(method, model_dir, settings, training, tokenizer, device, dtype="bfloat16"):
    """Load the base model as the method wants it; return (model, ParamGroups) with only those trainable."""
    from peft import get_peft_model

    cuda = str(device).startswith("cuda")
    model = load_model(model_dir, dtype, device, quantization_config=method.quantization(settings),
                       attention=training_attention(device))
    model.requires_grad_(False)
    layers = causal_lm(model).model.layers
    checkpointed = checkpointed_layers(training, len(layers))
    if checkpointed:
        # transformers' checkpointing, switched off again past the first `checkpointed` layers: each layer
        # checkpointed frees the same memory at the start of backward, for one more forward of that layer.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for layer in layers[checkpointed:]:
            layer.gradient_checkpointing = False
    if training.get("recompute_elementwise"):
        for layer in layers[checkpointed:]:
            recompute_elementwise(layer)
    full_rank = _full_rank_parameters(model, method.full_rank_targets(settings))
    # Full fine-tuning trains the whole embedding, the turn tokens' rows with it.
    ids = [] if method.full_rank_targets(settings) == "*" else token_ids(tokenizer, training["trainable_tokens"])
    peft_config, own_rows = _peft_config(method, settings, ids)
    if own_rows:
        model.turn_token_rows = TurnTokenRows(model.get_input_embeddings().weight, ids)
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
        init = getattr(peft_config, "init_lora_weights", True)
        if isinstance(init, str) and init.split("_")[0] in BASE_CHANGING_INITS:
            # The adapter as initialised (deterministic: an SVD or QR of the base weights), for save_trained.
            model.initial_adapter = {k: v.detach().clone() for k, v in model.state_dict().items()
                                     if "lora_" in k or "trainable_tokens" in k}
        # peft casts each adapter's input to the adapter's fp32: under bf16 autocast that is a full-width
        # copy of every activation, there and back, for nothing. Autocast runs the adapter in bf16 anyway.
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    if cuda and training["compile"]:
        # Regional compilation: every decoder layer runs the same code, so one compiled graph serves all
        # (fused norms, activations and adapter glue); sequence lengths change every step, hence dynamic.
        for layer in causal_lm(model).model.layers:
            layer.compile(dynamic=True)
    for weight in full_rank.values():
        weight.requires_grad_(True)
    if own_rows:  # get_peft_model froze everything but its adapters
        causal_lm(model).turn_token_rows.rows.requires_grad_(True)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    full_rank_ids = {id(p) for p in full_rank.values()}
    groups = ParamGroups(
        adapter=[p for n, p in trained if not _is_token_rows(n) and id(p) not in full_rank_ids],
        full_rank=list(full_rank.values()),
        tokens=[p for n, p in trained if _is_token_rows(n)],
    )
    assert sum(map(len, groups)) == len(trained), "a trainable parameter belongs to no optimizer group"
    if cuda and training.get("cuda_graphs") and causal_lm(model).config._attn_implementation == attention.NAME:
        # Replayed graphs of the decoder need its attention to take the examples as offsets (no mask built
        # per step, as flex attention's is); a row holds at most batch_size examples and the filler.
        graphs.attach(causal_lm(model), slots=training["batch_size"] + 1)
    return model, groups


def _is_token_rows(name):
    return "trainable_tokens" in name or "turn_token_rows" in name


def training_attention(device):
    """The attention for packed rows (train.pack): FlashAttention over the examples where the GPU runs it
    (peftbench.attention), else flex attention, which skips the masked blocks (other examples, outside the
    sliding window); a CPU uses sdpa with the per-example mask transformers builds."""
    if attention.supported(device):
        return attention.NAME
    return "flex_attention" if str(device).startswith("cuda") else "sdpa"


def checkpointed_layers(training, n_layers):
    """How many decoder layers, from the first, recompute their forward in backward: all of them with
    training.gradient_checkpointing, else the variant's checkpoint_layers knob (at most all)."""
    if training["gradient_checkpointing"]:
        return n_layers
    return min(training.get("checkpoint_layers", 0), n_layers)


@functools.cache
def _products():
    aten = torch.ops.aten
    products = {aten.mm.default, aten.addmm.default, aten.bmm.default,
                aten._scaled_dot_product_efficient_attention.default, aten._scaled_dot_product_flash_attention.default,
                aten._scaled_dot_product_cudnn_attention.default,
                aten._scaled_dot_product_flash_attention_for_cpu.default}
    from torch._higher_order_ops import flex_attention

    if attention.varlen_attn is not None:  # peftbench.attention's FlashAttention over packed examples
        products.add(torch.ops.torch_attn._varlen_attn.default)
    return products | {flex_attention}


def _keep_products(ctx, op, *args, **kwargs):  # asked once per operator the layer runs
    return CheckpointPolicy.MUST_SAVE if op in _products() else CheckpointPolicy.PREFER_RECOMPUTE


def recompute_elementwise(layer):
    """Selective activation checkpointing of one decoder layer: backward gets the outputs of its matrix
    products and attention as saved, and recomputes the elementwise work between them (norms, rotary
    embedding, gelu(gate) * up, bf16 copies of fp32 weights), which is cheap to redo but as large to
    store. Pays where the layer has no adapters (GaLore at the 1B shape: 17.6 GB peak with it, 22.1 GB
    without, docs/history/variants/README.md); with LoRA, each adapter's output is kept beside the base
    product, so it keeps more, not less (benchmarks/2026-11-25-cpu/saved_activations.md). Compiles (the partitioner honours the policy) and runs
    eagerly alike."""
    forward, contexts = layer.forward, functools.partial(create_selective_checkpoint_contexts, _keep_products)

    def forward_keeping_products(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    layer.forward = forward_keeping_products


class TokenRows:
    """The input embedding and output layer with the trained turn-token rows, computed without peft's
    merged copy. peft's TrainableTokensLayer rebuilds the whole 262k x hidden matrix on every call (and,
    in backward, its full gradient, only to keep two rows of it): per training step that is a dozen
    copies of 0.6 GB and one output-layer-sized weight-gradient product per loss chunk. Here the frozen
    matrix is used as it is, and only the trained rows come from the small delta parameter."""

    def __init__(self, lm):
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

        embed = getattr(lm.model.embed_tokens, "token_adapter", lm.model.embed_tokens)
        self.lm, self.layer = lm, embed if isinstance(embed, TrainableTokensLayer) else None
        own = getattr(lm, "turn_token_rows", None)
        if own is not None:  # peftbench's own rows (TurnTokenRows)
            self.layer, self.delta, self.index = own, own.rows, own.index
            self.weight = lm.model.embed_tokens.weight
            self.tied_head = lm.lm_head.weight is self.weight
            self.embed_scale = lambda: getattr(lm.model.embed_tokens, "embed_scale", None)
        elif self.layer is not None:
            self.embed_scale = self.layer._get_embed_scale
            adapter = self.layer.active_adapters[0]
            self.delta = self.layer.trainable_tokens_delta[adapter]
            self.index = to_device(torch.tensor(self.layer.token_indices[adapter]), self.delta.device)
            self.weight = self.layer.base_layer.weight
            tied = getattr(lm.lm_head, "token_adapter", lm.lm_head)
            self.tied_head = getattr(tied, "base_layer", tied).weight is self.weight

    def embed(self, input_ids):
        if self.layer is None:
            return self.lm.model.embed_tokens(input_ids)
        embeds = torch.nn.functional.embedding(input_ids, self.weight)
        is_trained = input_ids[..., None] == self.index
        # A one-hot product picks each position's trained row exactly; its backward is a small matmul,
        # where a gather's is an index_put that sorts thousands of indices into two rows.
        trained = (is_trained.to(self.delta.dtype) @ self.delta).to(embeds.dtype)
        embeds = torch.where(is_trained.any(-1, keepdim=True), trained, embeds)
        scale = self.embed_scale()
        return embeds if scale is None else embeds * scale.to(embeds.dtype)

    def logits(self, hidden):
        if self.layer is None or not self.tied_head:
            return self.lm.lm_head(hidden)
        logits = torch.nn.functional.linear(hidden, self.weight)
        logits[..., self.index] = torch.nn.functional.linear(hidden, self.delta.to(hidden.dtype)).to(logits.dtype)
        return logits


def causal_lm(model):
    """The transformers model under a peft wrapper (peft injects its layers in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_trained(model, method, settings, out_dir, dtype="bfloat16"):
    """Save the adapter (peft) and the full-rank weights (safetensors) into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained") and hasattr(model, "peft_config"):
        initial = getattr(model, "initial_adapter", None)
        if initial is None:
            model.save_pretrained(out_dir / ADAPTER_DIR)
        else:  # PiSSA, OLoRA: saved as an adapter on the original weights, rank 2r (peft's conversion)
            initial_dir = out_dir / "initial_adapter"  # its name becomes a peft adapter name: no dots
            model.save_pretrained(initial_dir, state_dict=initial)
            model.save_pretrained(out_dir / ADAPTER_DIR, path_initial_model_for_weight_conversion=str(initial_dir))
            shutil.rmtree(initial_dir)
            _restore_token_rows(model, out_dir / ADAPTER_DIR / "adapter_model.safetensors")
    full_rank = _full_rank_parameters(causal_lm(model), method.full_rank_targets(settings))
    if full_rank:
        tensors = {name: w.detach().to(DTYPES[dtype]).cpu().contiguous() for name, w in full_rank.items()}
        save_file(tensors, out_dir / FULL_WEIGHTS)
    own = getattr(causal_lm(model), "turn_token_rows", None)
    if own is not None:  # in the dtype the forward used them in
        save_file({"index": own.index.cpu(), "rows": own.rows.detach().to(DTYPES[dtype]).cpu().contiguous()},
                  out_dir / TURN_TOKENS)


def _restore_token_rows(model, adapter_file):
    """peft's conversion keeps only the LoRA weights: put the trained turn-token rows back beside them."""
    from peft import get_peft_model_state_dict

    rows = {k: v for k, v in get_peft_model_state_dict(model).items() if "trainable_tokens" in k}
    if rows:
        save_file({**load_file(adapter_file), **{k: v.detach().cpu().contiguous() for k, v in rows.items()}},
                  adapter_file, metadata={"format": "pt"})


def load_for_eval(method, model_dir, trained_dir, settings, device, dtype="bfloat16"):
    """The trained model as one plain model in compute_dtype(dtype, device): a 4-bit base is dequantized
    first (so the weights are the ones training saw), then the full-rank weights and trained turn-token rows
    are loaded and the adapter merged. An adapter peft cannot merge stays a PeftModel, scored unmerged."""
    from peft import PeftModel

    runtime_dtype = DTYPES[compute_dtype(dtype, device)]
    quantization = method.quantization(settings) if method.TRAINS else None
    model = load_model(model_dir, dtype, device, quantization_config=quantization)
    if quantization is not None:
        model = model.dequantize(dtype=runtime_dtype) or model
    if trained_dir is None:
        return model.eval()
    trained_dir = Path(trained_dir)
    if (trained_dir / FULL_WEIGHTS).exists():
        weights = load_file(trained_dir / FULL_WEIGHTS, device=str(device))
        result = model.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{trained_dir / FULL_WEIGHTS} does not fit this model: {result.unexpected_keys[:3]}")
    if (trained_dir / TURN_TOKENS).exists():
        saved = load_file(trained_dir / TURN_TOKENS, device=str(device))
        with torch.no_grad():  # a tied output layer shares them, as TokenRows did in training
            embedding = model.get_input_embeddings().weight
            embedding[saved["index"]] = saved["rows"].to(embedding.dtype)
    if (trained_dir / ADAPTER_DIR).exists():
        model = PeftModel.from_pretrained(model, trained_dir / ADAPTER_DIR)
        try:
            model = model.merge_and_unload()
        except Exception as error:  # noqa: BLE001 -- peft raises several types for "cannot merge"
            log.warning("%s cannot be merged (%s): scored unmerged, through peft's forward", trained_dir, error)
    return model.to(runtime_dtype).eval().requires_grad_(False)
