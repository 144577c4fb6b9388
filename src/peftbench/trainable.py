"""Turn a method's declaration (methods/) into a trainable model, save what training changed, and rebuild
exactly the trained model for evaluation.

Every trained method is wrapped by peft: LoRA adapters where the method asks for them, and the turn
tokens' embedding rows (peft trainable tokens) for all, so each method learns to end its turn.
Full-rank weights train in the model's dtype: bf16 on a GPU, where the GaLore optimizer keeps their
float32 masters (updates of 1e-5 vanish in bf16 rounding: methods/galore.py), float32 on a CPU
(model.compute_dtype); they are saved in the configured dtype, which is what the GPU's forward pass used.
"""
import functools
from collections import namedtuple
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from peftbench import attention, graphs
from peftbench.model import DTYPES, compute_dtype, load_model, to_device

ParamGroups = namedtuple("ParamGroups", ["lora", "full_rank", "tokens"])
ADAPTER_DIR = "adapter"
FULL_WEIGHTS = "full_rank_weights.safetensors"


def token_ids(tokenizer, tokens):
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unknown = [t for t, i in zip(tokens, ids) if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ValueError(f"training.trainable_tokens: {unknown} are not tokens of this tokenizer")
    return ids


def _peft_config(method, settings, trainable_token_ids):
    from peft import LoraConfig, TrainableTokensConfig

    targets = method.lora_targets(settings)
    if targets:
        return LoraConfig(
            r=settings["r"],
            lora_alpha=settings["alpha"],
            lora_dropout=settings["dropout"],
            target_modules=list(targets),
            trainable_token_indices={"embed_tokens": trainable_token_ids} if trainable_token_ids else None,
            task_type="CAUSAL_LM",
        )
    if trainable_token_ids:
        return TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=trainable_token_ids)
    return None


def _full_rank_parameters(model, leaf_names):
    """The weights of the decoder's linear layers whose leaf name is in leaf_names, with their names."""
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
    checkpointed = checkpointed_layers(method.NAME, training, len(layers))
    if checkpointed:
        # transformers' checkpointing, switched off again past the first `checkpointed` layers: each layer
        # checkpointed frees the same memory at the start of backward, for one more forward of that layer.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for layer in layers[checkpointed:]:
            layer.gradient_checkpointing = False
    if method.NAME in training.get("recompute_elementwise", []):
        for layer in layers[checkpointed:]:
            recompute_elementwise(layer)
    full_rank = _full_rank_parameters(model, method.full_rank_targets(settings))
    peft_config = _peft_config(method, settings, token_ids(tokenizer, training["trainable_tokens"]))
    if peft_config is not None:
        model = get_peft_model(model, peft_config)
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
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = ParamGroups(
        lora=[p for n, p in trained if "lora_" in n],
        full_rank=list(full_rank.values()),
        tokens=[p for n, p in trained if "trainable_tokens" in n],
    )
    assert sum(map(len, groups)) == len(trained), "a trainable parameter belongs to no optimizer group"
    if cuda and training.get("cuda_graphs") and causal_lm(model).config._attn_implementation == attention.NAME:
        # Replayed graphs of the decoder need its attention to take the examples as offsets (no mask built
        # per step, as flex attention's is); a row holds at most batch_size examples and the filler.
        graphs.attach(causal_lm(model), slots=training["batch_size"] + 1)
    return model, groups


def training_attention(device):
    """The attention for packed rows (train.pack): FlashAttention over the examples where the GPU runs it
    (peftbench.attention), else flex attention, which skips the masked blocks (other examples, outside the
    sliding window); a CPU uses sdpa with the per-example mask transformers builds."""
    if attention.supported(device):
        attention.register()
        return attention.NAME
    return "flex_attention" if str(device).startswith("cuda") else "sdpa"


def checkpointed_layers(method_name, training, n_layers):
    """How many decoder layers, from the first, recompute their forward in backward: all of them with
    training.gradient_checkpointing, else the method's training.checkpoint_layers (at most all)."""
    if training["gradient_checkpointing"]:
        return n_layers
    return min(training.get("checkpoint_layers", {}).get(method_name, 0), n_layers)


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
    without, benchmarks/variants/README.md); with LoRA, each adapter's output is kept beside the base
    product, so it keeps more, not less (benchmarks/saved_activations.md). Compiles (the partitioner honours the policy) and runs
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
        if self.layer is not None:
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
        scale = self.layer._get_embed_scale()
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
        model.save_pretrained(out_dir / ADAPTER_DIR)
    full_rank = _full_rank_parameters(causal_lm(model), method.full_rank_targets(settings))
    if full_rank:
        tensors = {name: w.detach().to(DTYPES[dtype]).cpu().contiguous() for name, w in full_rank.items()}
        save_file(tensors, out_dir / FULL_WEIGHTS)


def load_for_eval(method, model_dir, trained_dir, settings, device, dtype="bfloat16"):
    """The trained model as one plain model in compute_dtype(dtype, device): a 4-bit base is dequantized
    first (so the weights are the ones training saw), then the full-rank weights are loaded and the adapter
    merged."""
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
    if (trained_dir / ADAPTER_DIR).exists():
        model = PeftModel.from_pretrained(model, trained_dir / ADAPTER_DIR).merge_and_unload()
    return model.to(runtime_dtype).eval().requires_grad_(False)
