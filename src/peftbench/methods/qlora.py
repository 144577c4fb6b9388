"""qlora: LoRA adapters over a base quantized to 4-bit NF4 with double quantization (bitsandbytes).

Its settings are lora's: any LoraConfig keyword, plus `lr`.
"""
import torch

from peftbench.methods import lora

NAME = "qlora"
SUMMARY = "LoRA adapters on a frozen 4-bit NF4 base (double quantization)"
MEMORY = ("like LoRA, but the projections are stored in 4 bits (about a quarter of bf16); dequantizing them on "
          "the fly costs speed")
TRAINS = True
DEFAULTS = lora.DEFAULTS
SETTINGS = lora.SETTINGS
PEFT_KEYWORDS = True


def quantization(settings, skip_modules=None):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=skip_modules,
    )


peft_config = lora.peft_config
full_rank_targets = lora.full_rank_targets
optimizer = lora.optimizer
