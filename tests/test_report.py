"""The report renders seeds, intervals and significance from compare's output (no workflow run needed)."""
import json
import re
from pathlib import Path

import pytest

from peftbench.compare import compare
from peftbench.report import build_report, pareto_front
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
        run.update(decoder_layers=26, checkpointed_layers=10, recompute_elementwise=False, micro_batch_tokens=4096,
                   micro_batched_steps=2)
    for run in metrics["lora"]:  # no batch was long enough to split: nothing to say
        run.update(micro_batch_tokens=4096, micro_batched_steps=0)
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
    steps = metrics["qlora"][0]["steps"]
    assert (f"- **qlora** ran the forward and backward of 2 of its {steps:,} batches in groups of at most 4,096 "
            "tokens, their gradients summed into one step (`micro_batch_tokens`)") in report
    assert "**lora** ran the forward" not in report
    assert ("training attention: peftbench_varlen; the decoder's forward and backward replayed as CUDA graphs, "
            "rows padded to a multiple of 256 tokens (up to 31 row lengths captured per run, 95 s at most") in report
    assert "3,000 real (non-padding) tokens per seed" in report and "identical for every method and seed" in report
    for plot in ("loss.png", "cost.png", "scores.png"):
        assert (out.parent / plot).read_bytes().startswith(b"\x89PNG") and f"]({plot})" in report
    page = (out.parent / "report.html").read_text()  # the same page for Snakemake's HTML report
    tables = len(re.findall(r"^\|[-:| ]+\|$", report, re.M))  # one separator row per markdown table
    assert tables == 5 and page.count("<table>") == tables and page.count("data:image/png;base64,") == 4


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
    assert page.count("data:image/png;base64,") == 5 and "Learning rates, chosen on validation data" in page


def test_an_untuned_report_has_no_tuning_section(tmp_path, demo_config):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "tuning.png").write_bytes(b"an earlier tuned report's plot")
    out = tuning_report(tmp_path, demo_config, None)
    report = out.read_text()
    assert "Learning rates" not in report and "tuning.png" not in report and "chosen on validation" not in report
    assert not (out.parent / "tuning.png").exists()
    assert re.search(r"^\| hybrid +\| hybrid +\| 0\.0005 / 0\.0001 +\| 2 +\|", report, re.M)  # the config's rates


# The verdict: every number in it is recomputed here from comparison.json and the training metrics, without
# the report's own helpers.

DEMO = Path(__file__).resolve().parent.parent / "benchmarks" / "demo-cpu"
# The three-seed demo of 2026-12-02 (commit 859ca35): its comparison.json, kept as data whose tables are known.
THREE_SEED_DEMO = Path(__file__).resolve().parent / "data" / "demo-three-seeds-comparison.json"


def verdict(report):
    """The verdict section's text: from its heading to the next."""
    return report.split("## Verdict", 1)[1].split("\n## ", 1)[0]


def between(comparison, a, b, metric):
    """a minus b as the report states it: '+0.2 [-2.6, 6.6]', from whichever order comparison.json holds."""
    if f"{a} - {b}" in comparison["differences"]:
        d = comparison["differences"][f"{a} - {b}"]["overall"][metric]
        return d["diff"], d["ci"][0], d["ci"][1], d["significant"]
    d = comparison["differences"][f"{b} - {a}"]["overall"][metric]
    return -d["diff"], -d["ci"][1], -d["ci"][0], d["significant"]


def stated(diff, low, high):
    return f"{diff:+.1f} [{low:.1f}, {high:.1f}]"


def cpu_metrics(means):
    """Three seeds per variant around the given (peak GB, training seconds), CPU-measured like the demo's."""
    return {m: [{**train_metrics(m, 0), "peak_memory_gb": memory + d / 100, "train_seconds": seconds + d}
                for d in (-5, 0, 5)] for m, (memory, seconds) in means.items()}


def test_the_demo_verdict_states_the_tables_numbers(tmp_path, demo_config):
    """The demo's comparison.json, with its table's memory and time: the verdict's best, runner-up, difference
    and cheapest variant are the tables', and the CPU peaks are not used to rank."""
    comparison = json.loads(THREE_SEED_DEMO.read_text())
    comparison.update(bleu_signature="nrefs:1", rouge={"type": "rougeL", "use_stemmer": True})
    config = {**demo_config, "compare": list(comparison["methods"]), "seeds": [0, 1, 2]}
    means = {"lora": (5.49, 110), "qlora": (5.25, 108), "galore": (5.29, 143), "hybrid": (5.38, 126)}
    out = tmp_path / "report" / "report.md"
    build_report(config, comparison, cpu_metrics(means), MANIFEST, [], out)
    report = out.read_text()
    assert report.startswith("# peftbench report\n\n## Verdict\n")
    text = verdict(report)

    methods = comparison["methods"]
    trained = [m for m in methods if m not in comparison["untrained"]]
    order = sorted(trained, key=lambda m: (-methods[m]["overall"]["bleu"]["mean"],
                                           -methods[m]["overall"]["rouge_l"]["mean"]))
    best, second = order[:2]
    assert (best, second) == ("qlora", "lora")  # the demo's table: 41.5 against 41.2
    bleu = methods[best]["overall"]["bleu"]
    assert f"**Best overall: {best}**, BLEU-4 {bleu['mean']:.1f} [{bleu['ci'][0]:.1f}, {bleu['ci'][1]:.1f}]" in text
    diff, low, high, significant = between(comparison, best, second, "bleu")
    assert not significant and f"By BLEU-4 it is not significantly ahead of the second, **{second}**" in text
    assert f"{diff:+.1f} BLEU-4 [{low:.1f}, {high:.1f}] (95 % CI), not significant" in text
    # The same difference, the other way round, in the differences table.
    row = re.search(rf"^\| {second} - {best} +\| (\S+) \[(\S+), (\S+)\]", report, re.M)
    assert [float(x) for x in row.groups()] == [round(-diff, 1), round(-high, 1), round(-low, 1)]
    diff, low, high, _ = between(comparison, best, second, "rouge_l")
    assert f"{diff:+.1f} ROUGE-L [{low:.1f}, {high:.1f}] (95 % CI), not significant" in text

    assert "measured on a CPU (CPU peak RSS, the whole process)" in text and "do not rank" in text
    assert "within" not in text and " GB (peak" not in text  # no memory budget from CPU peaks
    assert "fastest first): qlora 108 s, lora 110 s, hybrid 126 s, galore 143 s." in text
    # Cheapest not significantly worse on either metric: the tie with the best is lora only.
    tied = [m for m in trained if m == best or not any(
        between(comparison, m, best, metric)[3] and between(comparison, m, best, metric)[0] < 0
        for metric in ("bleu", "rouge_l"))]
    assert sorted(tied) == ["lora", "qlora"]
    cheapest = min(tied, key=lambda m: means[m][1])
    assert f"not significantly worse than the best** on BLEU-4 or ROUGE-L: **{cheapest}** itself, 108 s" in text
    lora = [stated(*between(comparison, "lora", best, metric)[:3]) for metric in ("bleu", "rouge_l")]
    assert f"lora 110 s (BLEU-4 {lora[0]}, ROUGE-L {lora[1]})" in text
    assert "Forgetting" not in text and "gain kept" not in text  # neither measured in the demo
    assert "general-text loss" not in report


def test_the_committed_demo_report_opens_with_its_verdict():
    """benchmarks/demo-cpu/report.md: its verdict's best variant and difference are its comparison.json's."""
    report = (DEMO / "report.md").read_text()
    assert report.startswith("# peftbench report\n\n## Verdict\n")
    comparison = json.loads((DEMO / "comparison.json").read_text())
    methods = comparison["methods"]
    order = sorted((m for m in methods if m not in comparison["untrained"]),
                   key=lambda m: (-methods[m]["overall"]["bleu"]["mean"], -methods[m]["overall"]["rouge_l"]["mean"]))
    diff, low, high, _ = between(comparison, order[0], order[1], "bleu")
    text = verdict(report)
    assert f"**Best overall: {order[0]}**" in text and f"**{order[1]}**" in text
    assert f"{diff:+.1f} BLEU-4 [{low:.1f}, {high:.1f}]" in text
    assert "measured on a CPU" in text and "do not rank" in text


def gpu_report(tmp_path, demo_config, peaks, full=(), forgetting=None):
    """base one answer in four, lora every answer, galore one in two, qlora one in three right (3 seeds, the same
    answers); `peaks`: each variant's GPU peak in GB."""
    keep = {"base": 4, "lora": 1, "galore": 2, "qlora": 3, "full": 1}
    names = ["base", *peaks]
    paths = [write_run(tmp_path, "base", None, degraded(4))]
    paths += [write_run(tmp_path, m, seed, degraded(keep[m])) for m in peaks for seed in (0, 1, 2)]
    comparison = compare(paths, samples=300, full=full)
    comparison.update(bleu_signature="nrefs:1", rouge={"type": "rougeL", "use_stemmer": True})
    if forgetting:
        comparison["forgetting"] = forgetting
    config = {**demo_config, "compare": names, "seeds": [0, 1, 2],
              "variants": {**demo_config["variants"], "full": {"kind": "full"}}}
    metrics = {m: [{**train_metrics(m, s), "peak_memory_gb": peak, "memory_kind": "CUDA max allocated",
                    "train_seconds": 100.0 * (i + 1) + s} for s in (0, 1, 2)]
               for i, (m, peak) in enumerate(peaks.items())}
    out = tmp_path / "report" / "report.md"
    build_report(config, comparison, metrics, MANIFEST, [], out)
    return comparison, out.read_text()


def test_memory_budgets_name_the_best_variant_that_fits(tmp_path, demo_config):
    """lora is best and needs 30 GB; galore (second) 20 GB; qlora (third) 10 GB: 12, 24 and 32 GB each change
    the best variant that fits; 8 GB holds none and 16 GB changes nothing."""
    comparison, report = gpu_report(tmp_path, demo_config, {"lora": 30.0, "galore": 20.0, "qlora": 10.0})
    text = verdict(report)
    budgets = re.findall(r"^  - within (\d+) GB: \*\*(\S+)\*\*", text, re.M)
    assert budgets == [("12", "qlora"), ("24", "galore"), ("32", "lora")]
    for fit in ("qlora", "galore"):
        diff, low, high, significant = between(comparison, fit, "lora", "bleu")
        assert (f"**{fit}** (peak {'10.00' if fit == 'qlora' else '20.00'} GB): against lora, "
                f"{diff:+.1f} BLEU-4 [{low:.1f}, {high:.1f}] (95 % CI), "
                f"{'significant' if significant else 'not significant'}") in text
    assert "within 32 GB: **lora** (peak 30.00 GB), the best overall" in text
    assert "CUDA max allocated" in text and "CPU" not in text
    # qlora is the fastest (100 s) but significantly worse than lora: lora itself is the cheapest tie.
    assert between(comparison, "qlora", "lora", "bleu")[3]
    assert "on BLEU-4 or ROUGE-L: **lora** itself, 101 s" in text


def test_one_budget_when_the_best_is_also_the_smallest(tmp_path, demo_config):
    _, report = gpu_report(tmp_path, demo_config, {"lora": 6.0, "galore": 20.0})
    assert ("the best variant, lora, fits within 8 GB (peak 6.00 GB; CUDA max allocated, mean over seeds, GB of "
            "10^9 bytes), the smallest common GPU size that holds any variant") in verdict(report)


def test_each_variant_keeps_a_share_of_full_fine_tunings_gain(tmp_path, demo_config):
    """With a full row, compare measures each other variant's share of full's gain over the base on the same
    resamples, and the verdict states it with its interval."""
    comparison, report = gpu_report(tmp_path, demo_config, {"full": 40.0, "lora": 12.0, "galore": 20.0},
                                    full=["full"])
    methods = comparison["methods"]
    for m in ("lora", "galore"):
        for metric in ("bleu", "rouge_l"):
            entry = comparison["gain_kept"]["full"][m][metric]
            base, full, own = (methods[x]["overall"][metric]["mean"] for x in ("base", "full", m))
            assert entry["share"] == pytest.approx((own - base) / (full - base))
            assert entry["ci"][0] <= entry["share"] <= entry["ci"][1]
    assert list(comparison["gain_kept"]["full"]) == ["lora", "galore"]  # not full against itself, nor the base
    text = verdict(report)
    galore = comparison["gain_kept"]["full"]["galore"]
    shares = [f"{100 * galore[k]['share']:.0f} % [{100 * galore[k]['ci'][0]:.0f}, {100 * galore[k]['ci'][1]:.0f}]"
              for k in ("bleu", "rouge_l")]
    assert f"  - galore: {shares[0]} of the BLEU-4 gain, {shares[1]} of the ROUGE-L gain" in text
    assert "  - lora: 100 % [100, 100] of the BLEU-4 gain" in text  # the same answers as full
    assert "share = (variant − base) / (full − base)" in text
    # Without a full variant there is no share: the demo test checks the verdict says nothing of it.
    assert "gain_kept" not in compare([write_run(tmp_path, "base", None, degraded(4)),
                                       write_run(tmp_path, "lora", 0, degraded(1))], samples=100)


def forgetting_entry(changes):
    """comparison.json's forgetting, as forgetting.py writes it: `changes` {variant: (diff, low, high)}."""
    methods = {"base": {"loss": 2.5, "ci": [2.4, 2.6], "per_seed": [2.5], "sd": None}}
    methods.update({m: {"loss": 2.5 + d, "ci": [2.4 + d, 2.6 + d], "per_seed": [2.5 + d] * 3, "sd": 0.01}
                    for m, (d, _, _) in changes.items()})
    return {"text": {"name": "wikitext", "origin": "builtin:wikitext", "revision": None, "passages": 40,
                     "tokens": 12345},
            "methods": methods,
            "differences": {f"{m} - base": {"diff": d, "ci": [low, high], "p": 0.01 if low > 0 else 0.5,
                                            "significant": low > 0 or high < 0}
                            for m, (d, low, high) in changes.items()}}


def test_forgetting_in_the_table_and_the_verdict(tmp_path, demo_config):
    forgetting = forgetting_entry({"lora": (0.05, 0.02, 0.08), "galore": (0.01, -0.01, 0.03)})
    _, report = gpu_report(tmp_path, demo_config, {"lora": 30.0, "galore": 20.0}, forgetting=forgetting)
    assert "general-text loss (nats/token)" in report
    assert re.search(r"^\| lora .*\| 2\.550 ± 0\.010 \(\*\*\+0\.050\*\* \[0\.020, 0\.080\]\) +\|$", report, re.M)
    assert re.search(r"^\| galore .*\| 2\.510 ± 0\.010 \(\+0\.010 \[-0\.010, 0\.030\]\) +\|$", report, re.M)
    assert re.search(r"^\| base .*\| 2\.500 \[2\.400, 2\.600\] +\|$", report, re.M)
    assert ("**Forgetting:** significantly higher loss than base on general text (wikitext; 95 % CI): "
            "lora +0.050 nats/token [0.020, 0.080].") in verdict(report)
    assert "on 40 passages (12,345 tokens) of wikitext (builtin:wikitext), text none of them trained on" in report


def test_no_variant_forgot(tmp_path, demo_config):
    forgetting = forgetting_entry({"lora": (-0.01, -0.03, 0.01), "galore": (0.02, -0.01, 0.05)})
    _, report = gpu_report(tmp_path, demo_config, {"lora": 30.0, "galore": 20.0}, forgetting=forgetting)
    assert ("no variant's loss on general text (wikitext) is significantly above base's; the largest change is "
            "galore's, +0.020 nats/token [-0.010, 0.050] (95 % CI).") in verdict(report)


def test_pareto_plots_are_in_every_report_form_with_captions(tmp_path, demo_config):
    _, report = gpu_report(tmp_path, demo_config, {"lora": 30.0, "galore": 20.0, "qlora": 10.0})
    out = tmp_path / "report"
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG") and "](pareto.png)" in report
    # A caption line under every plot.
    plots = re.findall(r"^!\[[^]]*\]\((\w+)\.png\)\n\n\*[^*\n]+\*$", report, re.M)
    assert plots == ["loss", "cost", "scores", "pareto"] and report.count("](") == 4
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "the frontier, the variants" in page
    # Snakemake's --report: the rule registers the plot with its caption.
    rule = (Path(__file__).resolve().parent.parent / "workflow" / "rules" / "report.smk").read_text()
    assert 'report(f"{OUT}/pareto.png", caption="../report/pareto.rst"' in rule
    assert (Path(__file__).resolve().parent.parent / "workflow" / "report" / "pareto.rst").exists()


def test_the_frontier_keeps_the_variants_nothing_beats_on_both():
    points = {"cheap": (1, 10), "dear": (5, 30), "dominated": (6, 20), "tied": (5, 30), "middle": (3, 15)}
    assert pareto_front(points) == ["cheap", "dear", "tied", "middle"]


def test_a_cpu_report_states_float32_and_names_its_one_memory_figure(tmp_path, demo_config):
    """A CPU run: the page says what it computed in (float32, not the bf16 of a GPU), that its peak memory is
    the process's RSS, which ranks nothing, and shows one memory figure per step (training's in Results)."""
    paths = [write_run(tmp_path, "base", None, degraded(4)), write_run(tmp_path, "lora", 0, degraded(1))]
    comparison = compare(paths, samples=200)
    comparison.update(bleu_signature="sig", rouge={"type": "rougeL", "use_stemmer": True})
    metrics = {"lora": [{**train_metrics("lora", 0), "compute_dtype": "float32"}]}
    bench = tmp_path / "report" / "benchmarks" / "lora" / "seed0"
    bench.mkdir(parents=True)
    for step, rss in (("train", 4317.0), ("generate", 2300.5)):
        (bench / f"{step}.tsv").write_text(f"s\th:m:s\tmax_rss\n12.0\t0:00:12\t{rss}\n")
    out = tmp_path / "report" / "report.md"
    build_report({**demo_config, "compare": ["base", "lora"], "seeds": [0]}, comparison, metrics, MANIFEST,
                 [str(bench / "train.tsv"), str(bench / "generate.tsv")], out)
    report = out.read_text()
    assert "Training ran on a CPU and computed in float32: peak memory is the training process's peak RSS" in report
    assert "training computed in float32" in report  # the Environment line
    assert "bf16 base" not in report and "bfloat16" not in report
    main_row = next(line for line in report.splitlines() if line.startswith("| lora ") and "| lora " in line[7:])
    assert "1.50" in main_row  # the peak the text names, in the table it describes
    assert re.search(r"^\| lora/seed0/train +\| 12 +\| in Results +\|", report, re.M)
    assert re.search(r"^\| lora/seed0/generate +\| 12 +\| 2300\.5 +\|", report, re.M)
    assert "4317" not in report  # Snakemake's sampled RSS of training is not a second memory figure for it


def test_a_report_on_the_builtin_demo_data_says_what_its_gains_do_not_mean(tmp_path, demo_config):
    paths = [write_run(tmp_path, "base", None, degraded(4)), write_run(tmp_path, "lora", 0, degraded(1))]
    comparison = compare(paths, samples=200)
    comparison.update(bleu_signature="sig", rouge={"type": "rougeL", "use_stemmer": True})
    config = {**demo_config, "compare": ["base", "lora"], "seeds": [0]}
    for origin, said in (("builtin:alpaca", True), ("tatsu-lab/alpaca", False)):
        manifest = {**MANIFEST, "sources": {n: {**s, "origin": origin} for n, s in MANIFEST["sources"].items()}}
        out = tmp_path / origin.replace("/", "_").replace(":", "_") / "report.md"
        build_report(config, comparison, {"lora": [train_metrics("lora", 0)]}, manifest, [], out)
        assert ("templated from Python's documentation" in out.read_text()) == said


def test_forgetting_of_a_4bit_variant_is_said_to_include_the_bases_rounding(tmp_path, demo_config):
    """QLoRA is scored on its 4-bit base: a rise in its general-text loss is partly the rounding, and the page
    says so wherever it reports one (the demo measured +0.21 nats for qlora, -0.02 for galore)."""
    paths = [write_run(tmp_path, "base", None, degraded(4)), write_run(tmp_path, "qlora", 0, degraded(1)),
             write_run(tmp_path, "galore", 0, degraded(2))]
    comparison = compare(paths, samples=200)
    comparison.update(bleu_signature="sig", rouge={"type": "rougeL", "use_stemmer": True})
    significant = {"diff": 0.2, "ci": [0.15, 0.25], "p": 0.0, "significant": True}
    comparison["forgetting"] = {
        "text": {"name": "builtin", "origin": "builtin", "revision": None, "passages": 24, "tokens": 1512},
        "methods": {m: {"loss": loss, "ci": [loss - 0.1, loss + 0.1], "per_seed": [loss], "sd": None}
                    for m, loss in (("base", 3.4), ("qlora", 3.6), ("galore", 3.6))},
        "differences": {"qlora - base": significant, "galore - base": significant}}
    out = tmp_path / "report" / "report.md"
    build_report({**demo_config, "compare": ["base", "qlora", "galore"], "seeds": [0]}, comparison,
                 {m: [train_metrics(m, 0)] for m in ("qlora", "galore")}, MANIFEST, [], out)
    report = out.read_text()
    verdict_text = report.split("## Results")[0]
    assert "qlora: on a 4-bit base, so this includes the base's rounding" in verdict_text
    assert "galore: on a 4-bit base" not in verdict_text
    assert "**qlora** is measured as trained, on a base stored in 4 bits" in report
