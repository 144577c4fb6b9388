rule prepare_model:
    input:
        local_model_files(),
    output:
        directory(f"{OUT}/model"),
    params:
        model=as_json(config["model"]),
        embedded_version=embedded_model_version(config["model"]),
    conda:
        "../../environment.yml"
    log:
        f"{OUT}/logs/prepare_model.log",
    benchmark:
        f"{OUT}/benchmarks/prepare_model.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "peftbench prepare-model --model {params.model:q} --out {output} --log {log}"
