"""lora: low-rank adapters on the attention and MLP projections of a frozen bf16 base (peft).

Every setting but `lr` is a keyword of peft's LoraConfig, passed as written: `use_dora: true` gives DoRA,
`use_rslora: true` rank-stabilized LoRA, `init_lora_weights: pissa` (or `olora`) PiSSA (OLoRA)
initialisation, and so on (peft's LoraConfig documents them all).
"""
import torch

NAME = "lora"
SUMMARY = "LoRA adapters on a frozen base (peft LoraConfig)"
MEMORY = ("the base weights (frozen, in the model's dtype) + small float32 adapters and their Adam state")
TRAINS = True
DEFAULTS = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "lr": 2.0e-4}
SETTINGS = {
    "r": {"type": "integer", "minimum": 1},
    "lora_alpha": {"type": "number", "exclusiveMinimum": 0},
    "lora_dropout": {"type": "number", "minimum": 0, "maximum": 0.9},
    "target_modules": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    # any other LoraConfig keyword (use_dora, use_rslora, init_lora_weights, ...): checked by peft
}
PEFT_KEYWORDS = True  # settings this module does not name go to the peft config class


def quantization(settings):
    return None


def peft_config(settings):
    from peft import LoraConfig

    return LoraConfig(**{k: v for k, v in settings.items() if k != "lr"}, task_type="CAUSAL_LM")


def full_rank_targets(settings):
    return []


def optimizer(groups, settings, training):
    return torch.optim.AdamW(
        [
            {"params": groups.adapter, "lr": settings["lr"], "weight_decay": training["weight_decay"]},
            {"params": groups.tokens, "lr": training["trainable_tokens_lr"], "weight_decay": 0.0},
        ],
        fused=groups.adapter[0].is_cuda,  # one kernel for the ~400 small adapter tensors instead of a loop
    )
