"""peftbench's GaLore step (methods/galore.py) computes what galore-torch's GaLoreAdamW computes.

The fast step batches the Adam moments into multi-tensor calls and folds the projection back, the
scale and the learning rate into one fused product per matrix. Both optimizers get the same gradients
for a few steps, across a projector refresh (SVD), on tall and wide matrices (right and left
projections), a plain group beside the GaLore group, and weight decay; their weights and state must
agree to float32 rounding.
"""
import pytest
import torch
from galore_torch import GaLoreAdamW

from peftbench.methods.galore import galore_adamw, galore_group

SHAPES = [(48, 16), (16, 40), (24, 24), (8, 64)]  # tall: right projection; wide: left; square
STEPS, RANK, GAP = 5, 6, 2  # the projectors refresh at steps 0, 2 and 4


def groups(weights, extra, weight_decay):
    return [galore_group(weights, RANK, GAP, 0.25, 1e-2, weight_decay),
            {"params": extra, "lr": 3e-2, "weight_decay": 0.0}]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fast_galore_step_matches_galore_torch(weight_decay):
    torch.manual_seed(0)
    start = [torch.randn(shape) for shape in SHAPES]
    start_extra = [torch.randn(2, 8), torch.randn(5)]
    gradients = [[torch.randn(w.shape) for w in start + start_extra] for _ in range(STEPS)]

    def train(make_optimizer):
        weights = [torch.nn.Parameter(w.clone()) for w in start]
        extra = [torch.nn.Parameter(w.clone()) for w in start_extra]
        optimizer = make_optimizer(groups(weights, extra, weight_decay))
        for step_gradients in gradients:
            for p, g in zip(weights + extra, step_gradients):
                p.grad = g.clone()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return weights + extra, optimizer

    reference, reference_optimizer = train(lambda g: GaLoreAdamW(g, no_deprecation_warning=True))
    fast, fast_optimizer = train(galore_adamw)
    for r, f, s in zip(reference, fast, start + start_extra):
        assert (r - s).abs().max() > 1e-3  # the weights did move
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-6)
    for r, f in zip(reference, fast):
        r_state, f_state = reference_optimizer.state[r], fast_optimizer.state[f]
        assert f_state["step"] == r_state["step"] == STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(f_state[key], r_state[key], rtol=1e-5, atol=1e-7)
        if "projector" in r_state:
            torch.testing.assert_close(f_state["projector"].ortho_matrix, r_state["projector"].ortho_matrix)


def test_fast_galore_step_leaves_tf32_as_it_found_it():
    weight = torch.nn.Parameter(torch.randn(16, 8))
    optimizer = galore_adamw([galore_group([weight], 4, 10, 0.25, 1e-2, 0.0)])
    weight.grad = torch.randn(16, 8)
    before = torch.backends.cuda.matmul.allow_tf32
    optimizer.step()
    assert torch.backends.cuda.matmul.allow_tf32 == before
