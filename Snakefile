# peftbench: fine-tune Gemma 3 with several PEFT methods and compare them.
#   snakemake --cores 1                                   # the study (config.yaml), on a GPU
#   snakemake --cores 2 --configfile=configs/demo.yaml    # the offline CPU demo
# The rules are thin: each calls one step of the peftbench package (src/peftbench/).

configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


rule all:
    input:
        REPORT,


include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/forgetting.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/report.smk"
