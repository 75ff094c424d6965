"""SearchSpec: everything that defines one search run, checked before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from tensorllm.base.errors import UserError
from tensorllm.eval.metrics import SELECT_BY
from tensorllm.methods import DEFAULT as DEFAULT_METHOD
from tensorllm.methods import registry
from tensorllm.search.race import RaceParams

HYBRID = "hybrid"  # not a method: combinations of the best configurations of earlier searches
RACE_FIELDS = ("race_first", "race_eta", "race_alpha", "race_finalists", "race_rescore")


def search_methods() -> list[str]:
    return [m.name for m in registry.searchable()] + [HYBRID]


@dataclass
class SearchSpec:
    """Everything that defines one search run. See `tensorllm search --help` for each option."""

    model: str
    task: str
    store: str
    method: str = DEFAULT_METHOD
    layers: str = "all"
    # the grid's columns, read by the method's `columns` hook: e.g. tucker {"ranks": [(144, 48, 4), "auto"],
    # "rates": [20.0], "variant": "multihead"}, laser {"rhos": [0.1, 0.01], "matrices": ("up", "down")}
    options: dict = field(default_factory=dict)
    sources: tuple = ()  # hybrid: stores of earlier searches whose top-k are combined
    recipes: tuple = ()  # hybrid: explicit recipe files, one configuration each
    top_k: int = 3
    data: str | None = None
    limit_val: int | None = None
    limit_test: int | None = None
    batch_size: int = 256
    answer_mode: str = "faithful"
    device: str = "auto"
    dtype: str = "auto"
    expand_kv: bool = False
    gpus: int = 1
    threads: int | None = None
    time_budget: float | None = None
    seed: int = 0
    trust_remote_code: bool = False
    allow_pickle: bool = False
    cache_bytes: int = 2 << 30
    progress: bool = True
    select_by: str = "accuracy"  # the selection metric (tensorllm.eval.metrics.SELECT_BY)
    # racing (race.py) unless exhaustive; None = the default of RaceParams
    exhaustive: bool = False
    race_first: int | None = None
    race_eta: float | None = None
    race_alpha: float | None = None
    race_finalists: int | None = None
    race_rescore: bool | None = None  # finalists on the whole split afresh (None: in half precision)
    # other tasks (transfer.py): scored on test for the roles, or on validation for the selection
    report_on: tuple = ()
    select_on: tuple = ()  # () = (task,)
    side_effects: bool = False
    # the loss pass of validation items starts at a configuration's first edited block, from the unedited
    # model's stored hidden states (eval/reference.py); False = every block
    reference: bool = True
    reference_bytes: int = 16 << 30  # the stored path's limit; past it the search goes on without it

    def race_params(self) -> RaceParams | None:
        """The racing parameters (not yet resolved for the split's size), None for an exhaustive search."""
        if self.exhaustive:
            return None
        given = {
            f.removeprefix("race_"): getattr(self, f) for f in RACE_FIELDS if getattr(self, f) is not None
        }
        return RaceParams(**given, by=self.select_by)

    def validate(self) -> None:
        from tensorllm.eval import ANSWER_MODES, get_task

        get_task(self.task)
        if self.method not in search_methods():
            raise UserError(
                f"unknown search method '{self.method}' (choose from {', '.join(search_methods())})"
            )
        if self.answer_mode not in ANSWER_MODES:
            raise UserError(
                f"unknown answer mode '{self.answer_mode}' (choose from {', '.join(ANSWER_MODES)})"
            )
        if self.select_by not in SELECT_BY:
            raise UserError(f"unknown --select-by '{self.select_by}' (choose from {', '.join(SELECT_BY)})")
        if self.exhaustive:
            given = [f"--{f.replace('_', '-')}" for f in RACE_FIELDS if getattr(self, f) is not None]
            if given:
                raise UserError(f"{', '.join(given)} set the race; an --exhaustive search does not race")
        for name in ("limit_val", "limit_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.batch_size < 1 or self.top_k < 1 or self.gpus < 1:
            raise UserError("--batch-size, --top-k and --gpus must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise UserError(f"--time-budget must be positive, got {self.time_budget}")
        if self.method == HYBRID and bool(self.sources) == bool(self.recipes):
            raise UserError(
                "a hybrid search needs either --from STORE (two or more) or --recipe FILE (one or more)"
            )
        if self.method != HYBRID:
            if self.sources or self.recipes:
                raise UserError("--from and --recipe belong to --method hybrid")
            registry.get(self.method).check_search(self.options)
        if not self.exhaustive:
            self.race_params().check()  # the first slice is checked against the split, once it is read
        for name in (*self.report_on, *self.select_on):
            get_task(name)
        known = (self.task, *self.report_on)
        stray = [t for t in self.select_on if t not in known]
        if stray:
            raise UserError(
                f"--select-on {stray[0]} is not among --task / --report-on ({', '.join(dict.fromkeys(known))})"  # noqa: E501
            )
        if not self.exhaustive and self.select_on and tuple(self.select_on) != (self.task,):
            raise UserError(
                "a race selects on --task alone; add --exhaustive to select on other or several tasks"
            )

    @property
    def selection_tasks(self) -> list[str]:
        return list(dict.fromkeys(self.select_on or (self.task,)))
