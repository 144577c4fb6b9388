"""galore: the projection weights train full-rank, their gradients projected to low rank (galore-torch).

Only the decoder's linear projections are GaLore-trained; embeddings, norms and lm_head stay frozen
(GaLore saves memory only on matrices, and the 262k-row embedding would dominate the optimizer state),
except the turn tokens' embedding rows, which every method trains, in a plain AdamW group.
"""
import math

NAME = "galore"
SUMMARY = "full-rank projections, gradients projected to low rank (GaLoreAdamW)"
MEMORY = ("every projection trains full-rank: full-size weights and gradients for all of them (on a GPU in "
          "bf16, with fp32 masters; on a CPU in float32); only their Adam state is low-rank")
TRAINS = True
DEFAULTS = {"rank": 128, "update_proj_gap": 200, "scale": 0.25,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "lr": 1.0e-5}
SETTINGS = {
    "rank": {"type": "integer", "minimum": 1},
    "update_proj_gap": {"type": "integer", "minimum": 1, "description": "steps between refreshes of the projection bases"},
    "scale": {"type": "number", "exclusiveMinimum": 0},
    "target_modules": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
}


def quantization(settings):
    return None


def peft_config(settings):
    return None


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


def galore_adamw(param_groups):
    """galore-torch's GaLoreAdamW, with the same state (projectors, moments, steps: checkpoint.py saves
    it) and the same arithmetic, but a step that costs a few hundred GPU launches instead of thousands.

    galore-torch steps one matrix at a time, a dozen small operations each: at the 1B shape that is
    about 2,500 launches and 48 ms of CPU time a step, during which the GPU mostly waits
    (benchmarks/2026-11-25-h100/train_profile.md).
    Here the Adam moments of each group update in a handful of multi-tensor (foreach) calls, and each
    matrix gets two products: its gradient projected down, and the update projected back and added to
    the weight in one fused product (addmm), so no full-size update is ever materialized.

    The products run in TF32: GaLore projects in fp32, which without tensor cores is slow, and TF32's
    10-bit mantissa is far finer than the rank-r approximation itself. TF32 is restored afterwards, so
    nothing else changes precision. tests/test_galore_step.py checks the result against GaLoreAdamW.

    A weight kept in bf16 (on a GPU, trainable.build_trainable leaves the model's dtype) gets a float32
    master copy in its state: updates of lr 1e-5 would vanish in bf16 rounding, so they accumulate in the
    master, which is then copied into the weight. The forward and backward thus use the bf16 weight as it
    is: no float32-to-bf16 copy of every weight per forward, held until backward, and the gradients come in
    bf16, half the memory and traffic of float32 ones. Nothing else changes: autocast rounded the float32
    weight and the weight's gradient to bf16 before too."""
    import torch
    from galore_torch import GaLoreAdamW
    from galore_torch.galore_projector import GaLoreProjector

    class FastGaLoreAdamW(GaLoreAdamW):
        @torch.no_grad()
        def step(self, closure=None):
            loss = closure() if closure is not None else None
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                for group in self.param_groups:
                    self._group_step(group)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
            return loss

        def _group_step(self, group):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                return
            projected = "rank" in group
            if projected and group["proj_type"] != "std":
                raise ValueError("only GaLore's proj_type 'std' is supported")
            grads, states = [], []
            for p in params:
                state = self.state[p]
                state.setdefault("step", 0)
                if p.dtype != torch.float32 and "master" not in state:
                    state["master"] = p.detach().float()
                grad = p.grad
                if projected:
                    if "projector" not in state:
                        state["projector"] = GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"],
                                                             scale=group["scale"], proj_type=group["proj_type"])
                    grad = project(state["projector"], grad, state["step"])  # refreshes the basis when due
                else:
                    grad = grad.float()
                if "exp_avg" not in state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(grad), torch.zeros_like(grad)
                state["step"] += 1
                grads.append(grad)
                states.append(state)

            # Adam's moments, as GaLoreAdamW computes them, for the whole group at once.
            beta1, beta2 = group["betas"]
            exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denoms, group["eps"])
            updates = torch._foreach_div(exp_avgs, denoms)
            step_sizes = []
            for state in states:
                step_size = group["lr"]
                if group["correct_bias"]:
                    step_size *= math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
                step_sizes.append(step_size)

            targets = [state.get("master", p) for p, state in zip(params, states)]  # float32 either way
            if projected:  # back to full rank, scaled, straight into the weight: w += -step * scale * (U @ P)
                for target, update, state, step_size in zip(targets, updates, states, step_sizes):
                    projector = state["projector"]
                    alpha = -step_size * projector.scale
                    if update.shape[0] >= update.shape[1]:
                        target.addmm_(update, projector.ortho_matrix, alpha=alpha)
                    else:
                        target.addmm_(projector.ortho_matrix, update, alpha=alpha)
            else:
                torch._foreach_mul_(updates, [-s for s in step_sizes])
                torch._foreach_add_(targets, updates)
            if group["weight_decay"] > 0.0:
                torch._foreach_add_(targets, targets, alpha=-group["lr"] * group["weight_decay"])
            mastered = [(p, target) for p, target in zip(params, targets) if target is not p]
            if mastered:  # the bf16 weights the next forward uses: their masters, rounded
                torch._foreach_copy_([p for p, _ in mastered], [target for _, target in mastered])

    return FastGaLoreAdamW(param_groups, no_deprecation_warning=True)


def project(projector, grad, step):
    """The rank-r gradient in float32, as projector.project(grad, step) computes it (galore-torch's
    proj_type "std"), the basis refreshed by refresh_basis when due. A bf16 gradient meets the bf16-rounded
    basis in a product summed and returned in float32 (CUDA's mixed-precision mm): no float32 copy of the
    full gradient. A CPU, which lacks that product, sees it in float32."""
    import torch

    if projector.ortho_matrix is None or step % projector.update_proj_gap == 0:
        projector.ortho_matrix = refresh_basis(grad, projector.rank, projector.ortho_matrix)
    tall = grad.shape[0] >= grad.shape[1]  # the side galore-torch's proj_type "std" projects on
    if grad.dtype == torch.float32 or not grad.is_cuda:
        grad, basis = grad.float(), projector.ortho_matrix
        return grad @ basis.t() if tall else basis.t() @ grad
    basis = projector.ortho_matrix.to(grad.dtype)
    if tall:
        return torch.mm(grad, basis.t(), out_dtype=torch.float32)
    return torch.mm(basis.t(), grad, out_dtype=torch.float32)


def refresh_basis(grad, rank, previous=None):
    """The gradient's top-r singular vectors on its smaller side, stored as galore-torch stores them
    (r × n for a tall or square matrix, m × r for a wide one), in float32.

    galore-torch takes them from a float32 SVD of the whole gradient, which computes every singular vector
    to keep r of them. Here they are the top eigenvectors of the smaller Gram matrix (GᵀG or GGᵀ, at most
    hidden × hidden), formed and decomposed in float64, since squaring the gradient squares its rounding:
    the same subspace, measured to keep the same share of every gradient as the exact top-r in a fraction
    of the SVD's time (benchmarks/galore_refresh.py; figures in docs/performance.md, "GaLore's projection
    refresh").

    A singular vector's sign is arbitrary (the SVD's too); each new vector takes the sign that agrees with
    the previous basis's vector of the same rank, so that Adam's moments, which GaLore keeps across a
    refresh, keep their meaning where the subspace barely moved."""
    import torch

    tall = grad.shape[0] >= grad.shape[1]
    g = grad.double()
    gram = g.t() @ g if tall else g @ g.t()
    vectors = torch.linalg.eigh(gram).eigenvectors[:, -rank:].flip(-1).float()  # columns, largest first
    if previous is not None and previous.shape == (vectors.t().shape if tall else vectors.shape):
        agreement = (vectors * (previous.t() if tall else previous).float()).sum(0)
        vectors = vectors * torch.where(agreement < 0, -1.0, 1.0)
    return vectors.t().contiguous() if tall else vectors.contiguous()


def optimizer(groups, settings, training):
    return galore_adamw(
        [
            galore_group(groups.full_rank, settings["rank"], settings["update_proj_gap"], settings["scale"],
                         settings["lr"], training["weight_decay"]),
            {"params": groups.tokens, "lr": training["trainable_tokens_lr"], "weight_decay": 0.0},
        ]
    )
