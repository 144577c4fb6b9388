"""galore: the projection weights train full-rank, their gradients projected to low rank (galore-torch).

Only the decoder's linear projections are GaLore-trained; embeddings, norms and lm_head stay frozen
(GaLore saves memory only on matrices, and the 262k-row embedding would dominate the optimizer state),
except the turn tokens' embedding rows, which every method trains, in a plain AdamW group.
"""
NAME = "galore"
SUMMARY = "full-rank projections, gradients projected to low rank (GaLoreAdamW)"
MEMORY = ("every projection trains full-rank: fp32 master weights and gradients for all of them; GaLore "
          "keeps only their Adam state low-rank, so it is the largest of the four")
TRAINS = True


def quantization(settings):
    return None


def lora_targets(settings):
    return []


def full_rank_targets(settings):
    return settings["target_modules"]


def galore_group(params, rank, update_proj_gap, scale, lr, weight_decay):
    return {
        "params": params,
        "rank": rank,
        "update_proj_gap": update_proj_gap,
        "scale": scale,
        "proj_type": "std",
        "lr": lr,
        "weight_decay": weight_decay,
    }


def tf32_galore_adamw(param_groups):
    """galore-torch's GaLoreAdamW, its steps run with TF32 matrix products: it projects every gradient to
    low rank and back in fp32, which on a GPU is slow without tensor cores; TF32's 10-bit mantissa is far
    finer than the rank-r approximation itself. Restored afterwards, so nothing else changes precision."""
    import torch
    from galore_torch import GaLoreAdamW

    class TF32GaLoreAdamW(GaLoreAdamW):
        def step(self, closure=None):
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                return super().step(closure)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous

    return TF32GaLoreAdamW(param_groups)


def optimizer(groups, settings, training):
    return tf32_galore_adamw(
        [
            galore_group(groups.full_rank, settings["rank"], settings["update_proj_gap"], settings["scale"],
                         settings["lr"], training["weight_decay"]),
            {"params": groups.tokens, "lr": training["trainable_tokens_lr"], "weight_decay": 0.0},
        ]
    )
