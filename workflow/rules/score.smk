rule score:
    input:
        rules.generate.output[0],
    output:
        f"{OUT}/{{method}}/scores.json",
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/score_{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/score_{{method}}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "peftbench score --generations {input} --method {wildcards.method} --out {output} > {log} 2>&1"
