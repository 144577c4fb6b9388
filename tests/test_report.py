"""The report renders seeds, intervals and significance from compare's output (no workflow run needed)."""
import re

from peftbench.compare import compare
from peftbench.report import build_report
from test_compare import degraded, write_run

MANIFEST = {
    "sources": {name: {"origin": f"builtin:{name}", "kept": {"train": 8, "test": 20}, "dropped": {},
                       "tokens": {"train": {"mean": 100.0}}, "near_duplicate_prompts": 0}
                for name in ("alpaca", "tulu", "ultrachat")},
    "files": {"train.jsonl": "a" * 64, "test.jsonl": "b" * 64},
}


def train_metrics(method, seed):
    return {"method": method, "device": "cpu", "train_seconds": 10.0 + seed, "peak_memory_gb": 1.5 + seed / 10,
            "memory_kind": "CPU peak RSS", "tokens_seen": 3000, "tokens_per_s": 300.0 - seed, "examples": 24,
            "epochs": 1, "steps": 3, "trainable_params": 30_000,
            "loss": [{"step": s, "loss": 2.0 - s / 10 + seed / 100} for s in (1, 2, 3)]}


def test_report_shows_seed_spread_intervals_significance_and_plots(tmp_path, demo_config):
    paths = [write_run(tmp_path, "base", None, degraded(4))]
    paths += [write_run(tmp_path, "lora", seed, degraded(1 + seed)) for seed in (0, 1, 2)]
    paths += [write_run(tmp_path, "qlora", seed, degraded(1 + seed)) for seed in (0, 1, 2)]
    comparison = compare(paths, samples=300)
    comparison.update(bleu_signature="nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
                      rouge={"type": "rougeL", "use_stemmer": True})
    config = {**demo_config, "compare": ["base", "lora", "qlora"], "seeds": [0, 1, 2]}
    metrics = {m: [train_metrics(m, s) for s in (0, 1, 2)] for m in ("lora", "qlora")}
    for run in metrics["qlora"]:
        run.update(decoder_layers=26, checkpointed_layers=10, recompute_elementwise=False)
    for runs in metrics.values():
        for run in runs:
            run["attention"] = "peftbench_varlen"
    metrics["lora"][1]["cuda_graphs"] = {"row_lengths": 31, "capture_seconds": 95.2,
                                      "first_capture_seconds": 20.0, "token_multiple": 256}
    out = tmp_path / "report" / "report.md"
    build_report(config, comparison, metrics, MANIFEST, [], out)
    report = out.read_text()
    lora = comparison["methods"]["lora"]["overall"]["bleu"]
    row = r"^\| lora +\| lora +\| 0\.0005 +\| 3 +"  # variant, kind, learning rate, seeds
    assert re.search(rf"{row}\| [\d.]+ +\| {lora['mean']:.1f} ± {lora['sd']:.1f} +\|", report, re.M)
    assert re.search(rf"{row}(\|[^|]+){{4}}\| 1\.60 ± 0\.10 +\| 11 ± 1 +\| 299 ± 1 +\|", report, re.M)
    # lora (every answer right on seed 0) beats the base significantly; lora and qlora are the same answers.
    assert re.search(r"^\| lora - base +\| \+[\d.]+ \[[\d.]+, [\d.]+\] +\| \*\*yes\*\* \(p < 0\.0033\)", report, re.M)
    assert re.search(r"^\| lora - qlora +\| \+0\.0 \[0\.0, 0\.0\] +\| no \(p = 1\.000\)", report, re.M)
    assert re.search(r"^\| base +\| base +\| — +\| — +\| ", report, re.M)  # one run, no seed spread
    assert "- **qlora** (kind `qlora`): LoRA adapters on a frozen 4-bit NF4 base" in report
    assert "- **qlora** recomputed the forward of 10 of its 26 decoder layers in backward (`checkpoint_layers`)" \
        in report and "**lora** recomputed" not in report
    assert ("training attention: peftbench_varlen; the decoder's forward and backward replayed as CUDA graphs, "
            "rows padded to a multiple of 256 tokens (up to 31 row lengths captured per run, 95 s at most") in report
    assert "3,000 real (non-padding) tokens per seed" in report and "identical for every method and seed" in report
    for plot in ("loss.png", "cost.png", "scores.png"):
        assert (out.parent / plot).read_bytes().startswith(b"\x89PNG") and f"]({plot})" in report
    page = (out.parent / "report.html").read_text()  # the same page for Snakemake's HTML report
    tables = len(re.findall(r"^\|[-:| ]+\|$", report, re.M))  # one separator row per markdown table
    assert tables == 5 and page.count("<table>") == tables and page.count("data:image/png;base64,") == 3


def test_a_dozen_variants_keep_the_page_readable(tmp_path, demo_config):
    """Past ten pairs, the page shows each variant against the base and against the best; every pair stays in
    comparison.json. Each row names its kind, and each variant line what differs from its kind's defaults."""
    names = [f"lora-r{r}" for r in (2, 4, 8, 16, 32, 64)]
    paths = [write_run(tmp_path, "base", None, degraded(6))]
    paths += [write_run(tmp_path, name, 0, degraded(1 + i)) for i, name in enumerate(names)]
    comparison = compare(paths, samples=200)
    comparison.update(bleu_signature="nrefs:1", rouge={"type": "rougeL", "use_stemmer": True})
    variants = {**demo_config["variants"], **{n: {"kind": "lora", "r": int(n[6:])} for n in names}}
    config = {**demo_config, "compare": ["base", *names], "seeds": [0], "variants": variants}
    metrics = {n: [train_metrics(n, 0)] for n in names}
    out = tmp_path / "report" / "report.md"
    build_report(config, comparison, metrics, MANIFEST, [], out)
    report = out.read_text()
    assert len(comparison["differences"]) == 6 + 15
    shown = re.findall(r"^\| (\S+ - \S+) +\|", report, re.M)
    best = "lora-r2"  # every answer right
    assert shown and all(name.endswith(" - base") or best in name.split(" - ") for name in shown)
    assert len(shown) == 6 + 5 and f"best variant by BLEU-4 (**{best}**)" in report
    assert "- **lora-r64** (kind `lora`): LoRA adapters" in report and '`{"r": 64}`' in report
    assert re.search(r"^\| lora-r8 +\| lora +\| 0\.0002 +\| 1 +\|", report, re.M)  # the kind's default rate


def selection(variant, rates, losses, chosen, edge=None, diverged=None, learning_rates=("lr",)):
    """A sweep's result as tuning.py writes it: losses[i] at rates[i]; `diverged`: {rate: step}."""
    diverged = diverged or {}
    points = [{"lr": lr, "validation_loss": None if lr in diverged else loss, "diverged_at_step": diverged.get(lr),
               "train_seconds": 60.0, "device": "cpu"} for lr, loss in zip(rates, losses)]
    return {"variant": variant, "kind": variant, "learning_rates": list(learning_rates), "configured_lr": 5e-4,
            "seed": 0, "points": points, "chosen_lr": chosen, "edge": edge, "sweep_seconds": 60.0 * len(rates)}


def tuning_report(tmp_path, demo_config, selections):
    """A report on lora and hybrid, 2 seeds each, that ran at tuned rates when `selections` is given."""
    paths = [write_run(tmp_path, "base", None, degraded(4))]
    paths += [write_run(tmp_path, m, seed, degraded(1 + seed)) for m in ("lora", "hybrid") for seed in (0, 1)]
    comparison = compare(paths, samples=100)
    comparison.update(bleu_signature="nrefs:1", rouge={"type": "rougeL", "use_stemmer": True})
    config = {**demo_config, "compare": ["base", "lora", "hybrid"], "seeds": [0, 1]}
    metrics = {m: [train_metrics(m, s) for s in (0, 1)] for m in ("lora", "hybrid")}
    if selections:
        for m, rates in (("lora", {"lr": 1e-3}), ("hybrid", {"lr": 2.5e-4, "galore_lr": 5e-5})):
            for run in metrics[m]:
                run.update(learning_rates=rates, tuned=True, validation_loss=1.9, validation_examples=16,
                           validation=[{"step": 2, "loss": 2.1}, {"step": 3, "loss": 1.9}])
    out = tmp_path / "report" / "report.md"
    build_report(config, comparison, metrics, MANIFEST, [], out, selections)
    return out


def test_a_tuned_report_shows_the_sweeps_and_the_chosen_rates(tmp_path, demo_config):
    selections = [selection("lora", [2.5e-4, 5e-4, 1e-3], [2.4, 2.2, 2.0], 1e-3, edge="highest"),
                  selection("hybrid", [2.5e-4, 5e-4, 1e-3], [2.1, 2.3, None], 2.5e-4, edge="lowest",
                            diverged={1e-3: 2}, learning_rates=("lr", "galore_lr"))]
    out = tuning_report(tmp_path, demo_config, selections)
    report = out.read_text()
    assert "## Learning rates, chosen on validation data" in report
    assert "trained once per rate of its grid (training seed 0)" in report and "the other seeds (1)" in report
    assert "**hybrid** trains 2 rates (`lr`, `galore_lr`)" in report and "keeping their ratio" in report
    # The rates the runs trained at (train_metrics' learning_rates), not the config's 0.0005 / 0.0001.
    assert re.search(r"^\| lora +\| lora +\| 0\.001 +\| 2 +\|", report, re.M)
    assert re.search(r"^\| hybrid +\| hybrid +\| 0\.00025 / 5e-05 +\| 2 +\|", report, re.M)
    assert re.search(r"^\| lora +\| 0\.00025: 2\.400, 0\.0005: 2\.200, \*\*0\.001: 2\.000\*\* +\| 0\.001 +\| "
                     r"0\.0005 +\| 3\.0 min +\| 0\.2 min +\|", report, re.M)
    assert re.search(r"^\| hybrid +\| \*\*0\.00025: 2\.100\*\*, 0\.0005: 2\.300, 0\.001: diverged at step 2 +\| "
                     r"0\.00025 / 5e-05 +\| 0\.0005 / 0\.0001 +\|", report, re.M)
    assert "sweep time (CPU)" in report and "**Total (CPU):** the sweeps took 6.0 min" in report
    assert "- ⚠ lora: the best rate is the highest of its grid: widen `tuning.grids.lora`" in report
    assert "- ⚠ hybrid: the best rate is the lowest of its grid" in report
    assert (out.parent / "tuning.png").read_bytes().startswith(b"\x89PNG") and "](tuning.png)" in report
    page = (out.parent / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "Learning rates, chosen on validation data" in page


def test_an_untuned_report_has_no_tuning_section(tmp_path, demo_config):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "tuning.png").write_bytes(b"an earlier tuned report's plot")
    out = tuning_report(tmp_path, demo_config, None)
    report = out.read_text()
    assert "Learning rates" not in report and "tuning.png" not in report and "chosen on validation" not in report
    assert not (out.parent / "tuning.png").exists()
    assert re.search(r"^\| hybrid +\| hybrid +\| 0\.0005 / 0\.0001 +\| 2 +\|", report, re.M)  # the config's rates
