rule score:
    input:
        rules.generate.output[0],
    output:
        scores=f"{OUT}/{{run}}/scores.json",
        examples=f"{OUT}/{{run}}/example_scores.json",
    params:
        variant=lambda wildcards: run_variant(wildcards).name,
        seed=run_seed_arg,
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/{{run}}/score.log",
    benchmark:
        f"{OUT}/benchmarks/{{run}}/score.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "peftbench score --generations {input} --variant {params.variant} {params.seed} --out {output.scores}"
        " --examples {output.examples} --log {log}"
