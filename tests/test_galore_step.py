"""peftbench's GaLore step (methods/galore.py) computes what galore-torch's GaLoreAdamW computes.

The fast step batches the Adam moments into multi-tensor calls and folds the projection back, the
scale and the learning rate into one fused product per matrix. Both optimizers get the same gradients
for a few steps, across a projector refresh, on tall and wide matrices (right and left projections), a
plain group beside the GaLore group, and weight decay; their weights and state must agree to float32
rounding. Its refresh takes the basis from the Gram matrix's eigenvectors, not galore-torch's SVD: the
same subspace with its own signs, checked on its own below; the step's arithmetic is checked with the
SVD's basis in both.
"""
import pytest
import torch
from galore_torch import GaLoreAdamW
from galore_torch.galore_projector import GaLoreProjector

from peftbench.methods import galore
from peftbench.methods.galore import galore_adamw, galore_group, refresh_basis

SHAPES = [(48, 16), (16, 40), (24, 24), (8, 64)]  # tall: right projection; wide: left; square
STEPS, RANK, GAP = 5, 6, 2  # the projectors refresh at steps 0, 2 and 4


def groups(weights, extra, weight_decay):
    return [galore_group(weights, RANK, GAP, 0.25, 1e-2, weight_decay),
            {"params": extra, "lr": 3e-2, "weight_decay": 0.0}]


def svd_basis(grad, rank, previous=None):
    """galore-torch's refresh, for checking the step's arithmetic on the same basis."""
    side = "right" if grad.shape[0] >= grad.shape[1] else "left"
    return GaLoreProjector(rank).get_orthogonal_matrix(grad.float(), rank, side)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fast_galore_step_matches_galore_torch(weight_decay, monkeypatch):
    monkeypatch.setattr(galore, "refresh_basis", svd_basis)
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


@pytest.mark.parametrize("shape", [(96, 24), (24, 96), (32, 32)], ids=["tall", "wide", "square"])
def test_refresh_basis_is_the_svds_basis_up_to_sign(shape):
    """The Gram matrix's top eigenvectors are the gradient's top singular vectors on its smaller side: the
    same vectors as galore-torch's SVD, in its orientation and order, each up to its sign."""
    torch.manual_seed(0)
    rank = 6
    # a decaying spectrum with distinct values, like a sum of per-token outer products
    grad = torch.randn(shape[0], 12) @ torch.diag(torch.logspace(0, -2, 12)) @ torch.randn(12, shape[1])
    basis, reference = refresh_basis(grad, rank), svd_basis(grad, rank)
    assert basis.shape == reference.shape and basis.dtype == torch.float32
    tall = shape[0] >= shape[1]
    agreement = (basis @ reference.t()).diagonal() if tall else (basis.t() @ reference).diagonal()
    torch.testing.assert_close(agreement.abs(), torch.ones(rank), atol=1e-4, rtol=0)


def test_refresh_basis_keeps_the_previous_bases_signs():
    """A new basis whose vectors point against the previous ones' is flipped to agree with them, so that
    Adam's moments, kept across a refresh, keep their meaning; a new subspace keeps its orientation."""
    torch.manual_seed(0)
    grad = torch.randn(48, 8) @ torch.diag(torch.logspace(0, -1, 8)) @ torch.randn(8, 16)
    basis = refresh_basis(grad, 4)
    torch.testing.assert_close(refresh_basis(grad, 4, previous=-basis), -basis)
    torch.testing.assert_close(refresh_basis(grad, 4, previous=basis), basis)
    flipped = basis.clone()
    flipped[1] *= -1
    torch.testing.assert_close(refresh_basis(grad, 4, previous=flipped), flipped)


def test_refresh_basis_decomposes_the_gram_matrix_in_float64(monkeypatch):
    """The Gram matrix squares the gradient's rounding: it is formed and decomposed in float64 (never TF32,
    which the optimizer's step allows for its products), inside the optimizer's step as on its own."""
    seen = []
    real_eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda a, *r, **k: seen.append(a.dtype) or real_eigh(a, *r, **k))
    weight = torch.nn.Parameter(torch.randn(16, 8))
    optimizer = galore_adamw([galore_group([weight], 4, 10, 0.25, 1e-2, 0.0)])
    weight.grad = torch.randn(16, 8)
    optimizer.step()
    basis = optimizer.state[weight]["projector"].ortho_matrix
    assert seen == [torch.float64] and basis.shape == (4, 8) and basis.dtype == torch.float32


def test_bf16_weights_follow_their_float32_masters():
    """A bf16 weight (a GPU's) trains through a float32 master in the optimizer's state: given the same
    gradients, the master follows exactly the float32 weight's trajectory, and the weight is the master
    rounded to bf16. A checkpoint brings the master and moments back in float32."""
    from peftbench.checkpoint import load_optimizer, optimizer_to_safe

    torch.manual_seed(0)
    start = [torch.randn(shape) for shape in SHAPES]
    start_extra = [torch.randn(2, 8)]
    # gradients a bf16 backward could give: bf16 values, the same for both runs
    gradients = [[torch.randn(w.shape).bfloat16() for w in start + start_extra] for _ in range(STEPS)]

    def train(dtype):
        weights = [torch.nn.Parameter(w.to(dtype, copy=True)) for w in start]
        extra = [torch.nn.Parameter(w.to(dtype, copy=True)) for w in start_extra]
        optimizer = galore_adamw(groups(weights, extra, 0.1))
        for step_gradients in gradients:
            for p, g in zip(weights + extra, step_gradients):
                p.grad = g.to(dtype)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return weights + extra, optimizer

    # the float32 run starts from the bf16-rounded weights, as the master does
    start = [w.bfloat16().float() for w in start]
    start_extra = [w.bfloat16().float() for w in start_extra]
    reference, _ = train(torch.float32)
    weights, optimizer = train(torch.bfloat16)
    for r, w in zip(reference, weights):
        master = optimizer.state[w]["master"]
        assert w.dtype == torch.bfloat16 and master.dtype == torch.float32
        torch.testing.assert_close(master, r.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(w.detach(), master.bfloat16())
        assert optimizer.state[w]["exp_avg"].dtype == torch.float32

    tensors, plain = optimizer_to_safe(optimizer)
    fresh = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    restored = galore_adamw(groups(fresh[: len(SHAPES)], fresh[len(SHAPES):], 0.1))
    load_optimizer(restored, tensors, plain)
    for w, f in zip(weights, fresh):
        for key in ("master", "exp_avg", "exp_avg_sq"):
            assert restored.state[f][key].dtype == torch.float32
            assert torch.equal(restored.state[f][key], optimizer.state[w][key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's mixed-precision product")
@pytest.mark.parametrize("shape", [(48, 16), (16, 40)])
def test_bf16_gradient_projects_as_its_float32_copy(shape):
    from galore_torch.galore_projector import GaLoreProjector

    from peftbench.methods.galore import project

    torch.manual_seed(0)
    projector = GaLoreProjector(RANK, update_proj_gap=GAP, scale=0.25, proj_type="std")
    project(projector, torch.randn(shape, device="cuda"), 0)  # step 0: the SVD refresh
    grad = torch.randn(shape, device="cuda").bfloat16()
    low = project(projector, grad, 1)
    assert low.dtype == torch.float32
    # against the float32 product: within the bf16 rounding of the basis
    torch.testing.assert_close(low, projector.project(grad.float(), 1), rtol=2e-2, atol=2e-2)
