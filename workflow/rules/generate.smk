rule generate:
    input:
        model=rules.prepare_model.output[0],
        test=rules.prepare_data.output.test,
        trained=trained_dir,
    output:
        f"{OUT}/{{method}}/generations.jsonl",
    params:
        trained=lambda wildcards, input: f"--trained {input.trained}" if input.trained else "",
        settings=method_settings,
        generation=as_json(config["generation"]),
        dtype=config["model"]["dtype"],
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/generate_{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/generate_{{method}}.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=6 * 60,
    shell:
        "peftbench generate --method {wildcards.method} --model-dir {input.model} {params.trained}"
        " --test {input.test} --settings {params.settings:q} --generation {params.generation:q}"
        " --dtype {params.dtype} --out {output} > {log} 2>&1"
