"""GaLore's projection refresh at a real model's shape: galore-torch's SVD against other ways to a rank-r
basis, in time and in how much of each gradient the basis keeps.

Every update_proj_gap steps GaLore replaces each projection's basis with the top-r singular vectors of its
current gradient, on the smaller side (galore-torch's proj_type "std"), by a float32 torch.linalg.svd of
the whole matrix. On the H200 at the gemma-3-1b shape that refresh took about 9.4 s for 182 matrices
(benchmarks/study-h200/README.md), about 40 % of GaLore's training time in peftbench's path. This measures
what the same basis costs by other routes, before any of them goes into the optimizer:

  svd            galore-torch's GaLoreProjector.get_orthogonal_matrix (the plain recipe's refresh)
  svd-gesvdj, svd-gesvda   torch.linalg.svd with cuSOLVER's Jacobi / approximate drivers (CUDA only)
  gram-eigh      the eigenvectors of the smaller Gram matrix (GᵀG or GGᵀ): the same subspace in exact
                 arithmetic, float32
  gram-eigh64    the same in float64: peftbench's optimizer's refresh (methods/galore.py, refresh_basis)
  lowrank-N      torch.svd_lowrank (randomized, oversampled by 8, N power iterations), from a random start
  warm-N         N steps of subspace iteration started from the previous basis (a different batch's), then
                 Rayleigh-Ritz: products and a thin QR only

Gradients: one backward of the architecture (random bf16 weights, as train_speed.py builds it) over a
batch of synthetic examples in the study's length mix, each projection's gradient in float32 (what the
refresh sees); the "previous" basis for warm-N comes from a second batch. Random weights and batches are a
proxy for the gradients of a training run 200 steps apart: the quality figures rank the routes, they do not
promise a training curve.

Quality: kept = |projected G|² / |G|² (the share of the gradient's squared norm the basis keeps), divided by
what float64 SVD's exact top-r keeps (1.0: as good as exact; the SVD itself is at 1.0 up to rounding); the
worst and the mean over the model's matrices. Time: one whole refresh (every matrix of every layer, one
after another as the optimizer does them), synchronized, after an untimed one, median of --repeats.

  python benchmarks/galore_refresh.py --tokenizer /tmp/tok          # on the GPU: galore_refresh.json, .md
  python benchmarks/galore_refresh.py --tiny --out /tmp              # CPU smoke test on a toy model
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402  (the shapes, the synthetic batches and the model builder)

from peftbench.methods.galore import refresh_basis  # noqa: E402
from peftbench.model import load_model, load_tokenizer  # noqa: E402
from peftbench.train import collate  # noqa: E402


def gradients(model, examples, pad_id, targets):
    """Each target projection's float32 gradient of the stock loss over one padded batch, by name."""
    weights = train_speed.projection_weights(model, targets)
    model.requires_grad_(False)
    for weight in weights.values():
        weight.requires_grad_(True)
        weight.grad = None
    device = next(iter(weights.values())).device
    input_ids, labels, attention_mask = collate(examples, pad_id, device)
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    return {n: w.grad.float() for n, w in weights.items()}


def right_side(grad):
    """galore-torch's proj_type "std": a tall or square matrix keeps its right singular vectors."""
    return grad.shape[0] >= grad.shape[1]


def orient(vectors, grad):
    """Column vectors spanning the smaller side (k × r, best first) as galore-torch stores the basis:
    r × n for the right side, m × r for the left."""
    return vectors.t().contiguous() if right_side(grad) else vectors.contiguous()


def columns(basis, grad):
    """The basis as k × r columns, whatever its orientation."""
    return basis.t() if right_side(grad) else basis


def kept(basis, grad):
    """The share of the gradient's squared norm that its projection on the basis keeps."""
    projected = grad @ basis.t() if right_side(grad) else basis.t() @ grad
    return float(projected.double().square().sum() / grad.double().square().sum())


def gram(grad):
    g = grad.float()
    return g.t() @ g if right_side(grad) else g @ g.t()


def way_svd(grad, rank, previous):
    from galore_torch.galore_projector import GaLoreProjector

    return GaLoreProjector(rank).get_orthogonal_matrix(grad, rank, "right" if right_side(grad) else "left")


def way_svd_driver(driver):
    def way(grad, rank, previous):
        u, _, vh = torch.linalg.svd(grad, full_matrices=False, driver=driver)
        return vh[:rank].contiguous() if right_side(grad) else u[:, :rank].contiguous()
    return way


def way_gram_eigh(grad, rank, previous):
    _, vectors = torch.linalg.eigh(gram(grad))  # ascending eigenvalues
    return orient(vectors[:, -rank:].flip(-1), grad)


def way_gram_eigh64(grad, rank, previous):
    return refresh_basis(grad, rank)


def way_lowrank(iterations):
    def way(grad, rank, previous):
        u, _, v = torch.svd_lowrank(grad, q=min(rank + 8, min(grad.shape)), niter=iterations)
        return orient((v if right_side(grad) else u)[:, :rank], grad)
    return way


def way_warm(iterations):
    def way(grad, rank, previous):
        q = columns(previous, grad)
        for _ in range(iterations):  # q <- orth(Gram q), without forming the Gram matrix
            z = grad.t() @ (grad @ q) if right_side(grad) else grad @ (grad.t() @ q)
            q, _ = torch.linalg.qr(z)
        # Rayleigh-Ritz: order the subspace's vectors by how much of the gradient each keeps
        z = grad @ q if right_side(grad) else grad.t() @ q
        _, vectors = torch.linalg.eigh(z.t() @ z)
        return orient(q @ vectors.flip(-1), grad)
    return way


def ways(cuda, iterations):
    found = {"svd": way_svd}
    if cuda:
        found.update({"svd-gesvdj": way_svd_driver("gesvdj"), "svd-gesvda": way_svd_driver("gesvda")})
    found.update({"gram-eigh": way_gram_eigh, "gram-eigh64": way_gram_eigh64})
    for n in iterations:
        found[f"lowrank-{n}"] = way_lowrank(n)
    for n in iterations:
        found[f"warm-{n}"] = way_warm(n)
    return found


def exact_basis(grad, rank):
    u, _, vh = torch.linalg.svd(grad.double(), full_matrices=False)
    return (vh[:rank] if right_side(grad) else u[:, :rank]).float()


def refresh_seconds(way, grads, rank, previous, repeats):
    """One whole refresh (every matrix, in order), untimed once, then `repeats` timed: their median, every
    pass's seconds, and the last pass's bases by name."""
    cuda = torch.cuda.is_available()
    times = []
    for attempt in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        bases = {name: way(grad, rank, previous[name]) for name, grad in grads.items()}
        if cuda:
            torch.cuda.synchronize()
        if attempt:
            times.append(time.perf_counter() - start)
    return statistics.median(times), times, bases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(train_speed.SHAPES), default="gemma-3-1b")
    parser.add_argument("--tokenizer", help="a Gemma 3 tokenizer folder (gemma-3-1b only)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--iterations", type=int, nargs="+", default=[1, 2, 4],
                        help="power / subspace iterations of lowrank-N and warm-N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default="/tmp/peftbench-refresh")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--tiny", action="store_true", help="toy model on CPU (smoke test)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    _, settings, _ = train_speed.study_variant("galore", args.tiny)
    rank, targets = settings["rank"], settings["target_modules"]
    model_dir = train_speed.make_model_dir(Path(args.work), args.tokenizer, args.tiny, args.shape)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "bfloat16" if cuda else "float32", device, None)
    vocab = model.config.get_text_config().vocab_size
    batch = lambda seed: train_speed.synthetic_examples(args.batch_size, args.max_length, vocab, seed)  # noqa: E731
    grads = gradients(model, batch(0), tokenizer.pad_token_id, targets)
    previous = {n: exact_basis(g, rank) for n, g in
                gradients(model, batch(1), tokenizer.pad_token_id, targets).items()}
    del model
    if cuda:
        torch.cuda.empty_cache()
    best = {n: kept(exact_basis(g, rank), g) for n, g in grads.items()}

    rows = {}
    for name, way in ways(cuda, args.iterations).items():
        previous_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 products, as the refresh runs today
        try:
            seconds, times, bases = refresh_seconds(way, grads, rank, previous, args.repeats)
            quality = [kept(bases[n], g) / best[n] for n, g in grads.items()]
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous_tf32
        rows[name] = {"seconds": seconds, "seconds_each": times, "kept_vs_exact_worst": min(quality),
                      "kept_vs_exact_mean": statistics.fmean(quality)}
        print(name, json.dumps(rows[name]), flush=True)
    base = rows["svd"]["seconds"]
    for row in rows.values():
        row["speedup_vs_svd"] = base / row["seconds"]

    stem = train_speed.SHAPES[args.shape][2].replace("train", "galore_refresh")
    report = {
        "command": "python benchmarks/galore_refresh.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": args.shape if not args.tiny else f"tiny {train_speed.SHAPES[args.shape][1]}",
        "rank": rank, "matrices": len(grads),
        "matrix_shapes": sorted({tuple(g.shape) for g in grads.values()}),
        "exact_kept_mean": statistics.fmean(best.values()),
        "versions": {"torch": torch.__version__},
        "ways": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# GaLore's projection refresh at the {report['shape']} shape on {report['device']}", "",
             f"Command: `{report['command']}`", "",
             f"{report['matrices']} matrices ({', '.join('×'.join(map(str, s)) for s in report['matrix_shapes'])}), "
             f"rank {rank}; the exact top-{rank} keeps {100 * report['exact_kept_mean']:.1f} % of a gradient's "
             "squared norm on average (random weights, synthetic batch).", "",
             "| way | one refresh (s) | vs svd | kept vs exact, worst | kept vs exact, mean |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['seconds']:.3f} | {row['speedup_vs_svd']:.1f}x | "
                     f"{row['kept_vs_exact_worst']:.4f} | {row['kept_vs_exact_mean']:.4f} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
