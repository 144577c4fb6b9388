"""lora: low-rank adapters on the attention and MLP projections of a frozen bf16 base (peft)."""
import torch

NAME = "lora"
SUMMARY = "LoRA adapters on a frozen bf16 base"
MEMORY = ("bf16 base weights (frozen) + small fp32 adapters and their Adam state; activations dominate")
TRAINS = True


def quantization(settings):
    return None


def lora_targets(settings):
    return settings["target_modules"]


def full_rank_targets(settings):
    return []


def optimizer(groups, settings, training):
    return torch.optim.AdamW(
        [
            {"params": groups.lora, "lr": settings["lr"], "weight_decay": training["weight_decay"]},
            {"params": groups.tokens, "lr": training["trainable_tokens_lr"], "weight_decay": 0.0},
        ],
        fused=groups.lora[0].is_cuda,  # one kernel for the ~400 small adapter tensors instead of a loop
    )
