"""Resumable layer x rank search: evaluate every configuration of a grid, select on validation, report.

    from tensorllm.search import SearchSpec, run_search
    report = run_search(SearchSpec("smollm2-135m", "wikidata_qa", "runs/s-tucker",
                                   method="tucker", options={"ranks": [(144, 48, 4), "auto"]}))

Files: grid.py (configurations and their keys), apply.py (apply/restore, step cache),
store.py (results on disk, resume, refuse-to-mix), select.py (the selection rule),
runner.py (the loop), dist.py (several processes / GPUs), report.py (markdown, PNG, JSON).
"""

from tensorllm.search.grid import BASELINE, Config, Grid, config_key
from tensorllm.search.runner import SearchSpec, run_search
from tensorllm.search.store import Store

__all__ = ["BASELINE", "Config", "Grid", "SearchSpec", "Store", "config_key", "run_search"]
