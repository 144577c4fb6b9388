"""The registry of fine-tuning methods. A new method is one module here plus one entry below.

A method module declares what it changes in the base model, and trainable.py does the rest:
  NAME, SUMMARY, MEMORY          name, a one-line description and where its memory goes, for the report
  TRAINS                         False for the untrained baseline
  quantization(settings)         a BitsAndBytesConfig for the frozen base weights, or None
  lora_targets(settings)         leaf module names that get LoRA adapters ([] for none)
  full_rank_targets(settings)    leaf module names whose weights train full-rank ([] for none)
  optimizer(groups, settings, training)  the torch optimizer over a ParamGroups
"""
from peftbench.methods import base, galore, hybrid, lora, qlora

METHODS = {module.NAME: module for module in (base, lora, qlora, galore, hybrid)}
