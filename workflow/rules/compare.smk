rule compare:
    input:
        expand(rules.score.output.examples, run=RUNS),
    output:
        f"{OUT}/comparison.json",
    params:
        samples=config["bootstrap"]["samples"],
        confidence=config["bootstrap"]["confidence"],
        seed=config["seed"],
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/compare.log",
    benchmark:
        f"{OUT}/benchmarks/compare.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "peftbench compare --examples {input} --samples {params.samples} --confidence {params.confidence}"
        " --seed {params.seed} --out {output} --log {log}"
