"""hybrid: 4-bit NF4 MLP layers with LoRA adapters + bf16 attention layers trained full-rank under GaLore.

The MLP holds most of the weights, so quantizing it saves the most memory; attention is small enough
to train full-rank, and GaLore keeps its optimizer state low-rank. One GaLoreAdamW optimizer: a GaLore
group for the attention weights, plain groups for the LoRA parameters and the turn-token rows.
"""
from peftbench.methods import galore, lora, qlora

NAME = "hybrid"
SUMMARY = "4-bit MLP + LoRA, full-rank attention under GaLore"
MEMORY = ("the MLP (70-90 % of the decoder's weights) is 4-bit as in QLoRA; the attention projections "
          "add full-size gradients and float32 masters but a rank-r Adam state")
TRAINS = True
MLP = ["gate_proj", "up_proj", "down_proj"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# A learning-rate sweep scales both rates by one factor, keeping their ratio (tuning.py).
LEARNING_RATES = ("lr", "galore_lr")
DEFAULTS = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "lr": 2.0e-4,
            "rank": 128, "update_proj_gap": 200, "scale": 0.25, "galore_lr": 1.0e-5}
SETTINGS = {
    **{k: lora.SETTINGS[k] for k in ("r", "lora_alpha", "lora_dropout", "lr")},
    **{k: galore.SETTINGS[k] for k in ("rank", "update_proj_gap", "scale")},
    "galore_lr": galore.SETTINGS["lr"],
}


def quantization(settings):
    # The skip list replaces bitsandbytes' default, so lm_head must be named again; names match leaves.
    return qlora.quantization(settings, skip_modules=ATTENTION + ["lm_head"])


def peft_config(settings):
    from peft import LoraConfig

    return LoraConfig(r=settings["r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                      target_modules=MLP, task_type="CAUSAL_LM")


def full_rank_targets(settings):
    return ATTENTION


def optimizer(groups, settings, training):
    return galore.galore_adamw(
        [
            galore.galore_group(groups.full_rank, settings["rank"], settings["update_proj_gap"],
                                settings["scale"], settings["galore_lr"], training["weight_decay"]),
            {"params": groups.adapter, "lr": settings["lr"], "weight_decay": training["weight_decay"]},
            {"params": groups.tokens, "lr": training["trainable_tokens_lr"], "weight_decay": 0.0},
        ]
    )
