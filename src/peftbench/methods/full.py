"""full: full fine-tuning, the reference every parameter-efficient variant is measured against.

Every parameter of the model trains: the decoder's projections and norms, and the embedding (tied to the
output layer in Gemma 3), so the turn tokens' rows train as part of it, at this variant's learning rate.
On a GPU the weights stay bf16 and AdamW keeps float32 masters (updates of 1e-5 would vanish in bf16
rounding): galore-torch's AdamW arithmetic in peftbench's multi-tensor step (methods/galore.py), without
projection.
"""
from peftbench.methods import galore

NAME = "full"
SUMMARY = "full fine-tuning: every weight trains (embeddings, norms, projections; AdamW)"
MEMORY = ("every weight trains: full-size gradients, float32 masters and Adam moments for all of them "
          "(about 14 bytes per parameter beside bf16 weights on a GPU; a CPU trains float32 weights directly)")
TRAINS = True
DEFAULTS = {"lr": 1.0e-5}
SETTINGS = {"lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}
EVERY_WEIGHT = "*"  # full_rank_targets: not a list of leaf names but the whole model


def quantization(settings):
    return None


def peft_config(settings):
    return None


def full_rank_targets(settings):
    return EVERY_WEIGHT


def optimizer(groups, settings, training):
    return galore.galore_adamw([{"params": groups.full_rank, "lr": settings["lr"],
                                 "weight_decay": training["weight_decay"]}])
