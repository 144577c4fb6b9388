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


def optimizer(groups, settings, training):
    from galore_torch import GaLoreAdamW

    return GaLoreAdamW(
        [
            galore_group(groups.full_rank, settings["rank"], settings["update_proj_gap"], settings["scale"],
                         settings["lr"], training["weight_decay"]),
            {"params": groups.tokens, "lr": training["trainable_tokens_lr"], "weight_decay": 0.0},
        ]
    )
