"""benchmarks/train_speed.py's timing of GaLore's projection refresh: the refresh that no timed pass holds must
happen in every "due" step, for every projected weight, and in no other, for galore-torch's optimizer (the
plain recipe's) and peftbench's alike; and the refresh is counted at its rate."""
import importlib.util
from pathlib import Path

import pytest
import torch
from galore_torch import GaLoreAdamW

from peftbench.methods.galore import galore_adamw, galore_group

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_speed", ROOT / "benchmarks/train_speed.py")
train_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_speed)

GAP = 200


@pytest.mark.parametrize("make_optimizer, decomposition",
                         [(lambda g: GaLoreAdamW(g, no_deprecation_warning=True), "svd"), (galore_adamw, "eigh")],
                         ids=["galore-torch", "peftbench"])
def test_a_refresh_is_timed_in_due_steps_only(make_optimizer, decomposition, monkeypatch):
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(shape)) for shape in [(48, 16), (16, 40)]]
    extra = [torch.nn.Parameter(torch.randn(5))]
    optimizer = make_optimizer([galore_group(weights, 4, GAP, 0.25, 1e-3, 0.0),
                                {"params": extra, "lr": 1e-3, "weight_decay": 0.0}])

    def step(batch):
        for p in weights + extra:
            p.grad = torch.randn(p.shape)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # as after the measured passes: projectors made, counters off the gap's multiples
        step(None)
    decompositions = []  # the refresh's: galore-torch's SVDs, peftbench's Gram eigendecompositions
    real = getattr(torch.linalg, decomposition)
    monkeypatch.setattr(torch.linalg, decomposition,
                        lambda *a, **k: decompositions.append(a[0].shape) or real(*a, **k))
    calls = []

    def counted_step(batch):
        before = len(decompositions)
        step(batch)
        calls.append(len(decompositions) - before)

    refresh = train_speed.time_refresh(counted_step, None, optimizer, repeats=3)
    assert calls == [0, 2] * 3  # not due, then due for both projected weights, three times
    assert refresh["every_steps"] == GAP and refresh["matrices"] == 2 and len(refresh["seconds_each"]) == 3
    assert [state["step"] for state, _ in train_speed.projected_states(optimizer)] == [3 * GAP + 1] * 2


def test_an_optimizer_without_projections_has_no_refresh():
    weight = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = torch.optim.AdamW([weight])
    assert train_speed.time_refresh(lambda batch: None, None, optimizer) is None


def test_the_refresh_is_counted_once_per_gap_steps():
    # a pass of 10 steps, 1,000 tokens in 1 s; a refresh of 2 s every 200 steps adds 0.1 s to the pass
    result = {"tokens": 1000, "tokens_per_s": 1000.0, "refresh": {"seconds": 2.0, "every_steps": 200}}
    assert train_speed.with_refresh(result, 10) == pytest.approx(1000 / 1.1)


galore_refresh_spec = importlib.util.spec_from_file_location("galore_refresh", ROOT / "benchmarks/galore_refresh.py")
galore_refresh = importlib.util.module_from_spec(galore_refresh_spec)
galore_refresh_spec.loader.exec_module(galore_refresh)


@pytest.mark.parametrize("shape", [(96, 24), (24, 96), (32, 32)], ids=["tall", "wide", "square"])
def test_every_refresh_route_gives_a_basis_shaped_as_galore_torch_keeps_it(shape):
    """Benchmarks/galore_refresh.py compares routes to GaLore's basis: each returns it in galore-torch's
    orientation, orthonormal; the exact routes keep what the float64 SVD keeps; a warm start from the
    gradient's own basis stays there."""
    torch.manual_seed(0)
    rank = 6
    # a gradient with a decaying spectrum, like a sum of per-token outer products
    grad = torch.randn(shape[0], 12) @ torch.diag(torch.logspace(0, -2, 12)) @ torch.randn(12, shape[1])
    grad += 1e-3 * torch.randn(shape)
    exact = galore_refresh.exact_basis(grad, rank)
    reference = galore_refresh.way_svd(grad, rank, None)
    assert reference.shape == exact.shape == ((rank, shape[1]) if shape[0] >= shape[1] else (shape[0], rank))
    best = galore_refresh.kept(exact, grad)
    for name, way in galore_refresh.ways(False, [1, 2]).items():
        basis = way(grad, rank, exact)
        assert basis.shape == reference.shape, name
        q = galore_refresh.columns(basis, grad)
        torch.testing.assert_close(q.t() @ q, torch.eye(rank), atol=1e-4, rtol=0)
        share = galore_refresh.kept(basis, grad) / best
        if name.startswith(("svd", "gram", "warm")):  # exact, or started from the exact subspace
            assert share == pytest.approx(1.0, abs=1e-4), name
        else:  # randomized: close on a spectrum that decays this fast
            assert share > 0.99, name
