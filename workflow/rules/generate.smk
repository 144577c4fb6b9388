rule generate:
    input:
        model=rules.prepare_model.output[0],
        test=rules.prepare_test.output[0],
        trained=trained_dir,
    output:
        f"{OUT}/{{run}}/generations.jsonl",
    params:
        trained=lambda wildcards, input: f"--trained {input.trained}" if input.trained else "",
        kind=lambda wildcards: run_variant(wildcards).kind,
        settings=variant_settings,
        generation=as_json(config["generation"]),
        dtype=config["model"]["dtype"],
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/{{run}}/generate.log",
    benchmark:
        f"{OUT}/benchmarks/{{run}}/generate.tsv"
    threads: config["threads"]
    resources:
        gpu=config["gpu_per_step"],
        mem_mb=16000,
        runtime=6 * 60,
    shell:
        "OMP_NUM_THREADS={threads} peftbench generate --kind {params.kind} --model-dir {input.model} {params.trained}"
        " --test {input.test} --settings {params.settings:q} --generation {params.generation:q}"
        " --dtype {params.dtype} --out {output} --log {log}"
