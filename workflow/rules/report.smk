rule report:
    input:
        scores=expand(rules.score.output.scores, run=RUNS),
        comparison=rules.compare.output[0],
        trained=expand(rules.train.output[0], variant=TRAINED, seed=SEEDS),
        manifest=rules.prepare_data.output.manifest,
        selections=SELECTIONS,
    output:
        report=REPORT,
        page=report(f"{OUT}/report.html", caption="../report/report.rst", category="Report"),
        loss_plot=report(f"{OUT}/loss.png", caption="../report/loss.rst", category="Plots"),
        cost_plot=report(f"{OUT}/cost.png", caption="../report/cost.rst", category="Plots"),
        scores_plot=report(f"{OUT}/scores.png", caption="../report/scores.rst", category="Plots"),
        pareto_plot=report(f"{OUT}/pareto.png", caption="../report/pareto.rst", category="Plots"),
        **({"tuning_plot": report(f"{OUT}/tuning.png", caption="../report/tuning.rst", category="Plots")}
           if TUNING else {}),
    params:
        config=as_json(config),
        metrics=lambda wildcards, input: [f"{d}/train_metrics.json" for d in input.trained],
        benchmarks=step_benchmarks,
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "peftbench report --config {params.config:q} --scores {input.scores} --comparison {input.comparison}"
        " --metrics {params.metrics} --manifest {input.manifest} --benchmarks {params.benchmarks}"
        " --selections {input.selections}"
        " --out {output.report} --log {log}"
