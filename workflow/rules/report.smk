rule report:
    input:
        scores=expand(f"{OUT}/{{method}}/scores.json", method=METHOD_NAMES),
        trained=expand(f"{OUT}/{{method}}/trained", method=TRAINED),
        manifest=rules.prepare_data.output.manifest,
    output:
        report=REPORT,
        loss_plot=f"{OUT}/loss.png",
        cost_plot=f"{OUT}/cost.png",
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
        "peftbench report --config {params.config:q} --scores {input.scores} --metrics {params.metrics}"
        " --manifest {input.manifest} --benchmarks {params.benchmarks} --out {output.report} > {log} 2>&1"
