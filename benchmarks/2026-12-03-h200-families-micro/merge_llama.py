"""benchmarks/train_llama.json from this folder's two Llama processes (the first cut by its call's time limit
after four methods): each method's plain and peftbench paths come from one process, side by side; the
first-in-process check is the second process's (the first ended before its own)."""
import json
from pathlib import Path

here = Path(__file__).parent
first, second = (json.loads((here / f"train_llama_{n}.json").read_text()) for n in (1, 2))
merged = {**first, "command": first["command"] + " (lora, qlora, galore, hybrid; cut during dora) and "
          + second["command"], "first_in_process_check": second["first_in_process_check"],
          "processes": "two, on two machines of one kind, one after the other; `measured` counts within each; "
                       f"burn-in {first['burn_in_s']:.0f} s and {second['burn_in_s']:.0f} s",
          "methods": {**first["methods"], **second["methods"]}}
(here.parent / "train_llama.json").write_text(json.dumps(merged, indent=2) + "\n")
