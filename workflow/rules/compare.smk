rule compare:
    input:
        examples=expand(rules.score.output.examples, run=RUNS),
        general_loss=expand(rules.general_loss.output[0], run=RUNS) if FORGETTING else [],
    output:
        f"{OUT}/comparison.json",
    params:
        samples=config["bootstrap"]["samples"],
        confidence=config["bootstrap"]["confidence"],
        seed=config["seed"],
        full=[name for name in TRAINED if VARIANTS[name].kind == "full"],
        general_loss=lambda wildcards, input: f"--general-loss {' '.join(input.general_loss)}" if FORGETTING else "",
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
        "peftbench compare --examples {input.examples} {params.general_loss} --samples {params.samples}"
        " --confidence {params.confidence} --seed {params.seed} --full {params.full} --out {output} --log {log}"
