"""Run (or resume) a layer x rank search: the loop from a SearchSpec to the store and the report.

    from tensorllm.search import SearchSpec, run_search
    report = run_search(SearchSpec("smollm2-135m", "wikidata_qa", "runs/s-tucker", method="tucker",
                                   layers="all", options={"ranks": [(144, 48, 4), (0.5, 0.5, 1.0), "auto"]}))

0. Take the store's lock (rank 0; a second search on the store refuses here, before any load).
1. Load the model once; check the task data and the model against it (a bad file, an empty split,
   ... fails before the store is created); build the grid (grid.py) and the search identity; open
   the store.
2. Validation phase: the baseline and every distinct configuration not yet in the store, each
   applied (apply.py), evaluated on the validation split and appended to the store at once.
   With several processes, the pending list is dealt out round-robin (index % world == rank).
3. Selection (select.py) on validation accuracy, ties by lower loss.
4. Test phase: the winner, the baseline and, for grids with a data-free column (Tucker's `auto`),
   the best data-free configuration and the data-free one at the winner's layer, on the test split.
5. Rank 0 writes report.md / report.json / heatmap.png into the store (report.py).

A rerun of the same command resumes: everything already in the store is read, not recomputed.
`time_budget` stops starting new evaluations after that many seconds (a partial report is written;
rerun to continue), so a long search can be split over several time-limited jobs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tensorllm.base.errors import UserError
from tensorllm.base.progress import fmt_seconds, stderr_log, track
from tensorllm.methods import DEFAULT as DEFAULT_METHOD
from tensorllm.methods import registry
from tensorllm.search import dist, select
from tensorllm.search import report as report_mod
from tensorllm.search.apply import Applier
from tensorllm.search.grid import BASELINE, Config, Grid, hybrid_grid, method_grid, recipes_grid
from tensorllm.search.store import (
    FORMAT,
    Store,
    code_version,
    data_identity,
    mismatch,
    model_fingerprint,
    now,
)

HYBRID = "hybrid"  # not a method: combinations of the best configurations of earlier searches


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


def run_search(spec: SearchSpec, *, loaded=None, log: Callable[[str], None] | None = None) -> dict | None:
    """Run or resume `spec`; return the report (None on ranks other than 0 of a distributed run).

    `loaded` (a `tensorllm.models.io.Loaded`) reuses a model already in memory, as it is; it is
    restored bit-exactly after every configuration, so several searches can share it.
    """
    spec.validate()
    world = dist.world_from_env()
    if world is None and spec.gpus > 1:
        if loaded is not None:
            raise ValueError("an in-memory model cannot be shared with spawned processes; pass loaded=None")
        dist.check_gpus(spec.gpus, spec.device)
        _preflight_store(spec)
        Store(spec.store).check_free()  # rank 0 takes the lock; a second search stops here, before spawning
        dist.spawn(_spawned_main, spec.gpus, (spec,))
        path = os.path.join(os.path.expanduser(spec.store), "report.json")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return Search(spec, world or dist.World(), loaded, log).run()


def _preflight_store(spec: SearchSpec) -> None:
    """Before anything is loaded: --store is no input and not inside one (the model's folder, a data
    file, a --from store, a recipe); whether it can be created is Store.lock's check."""
    from tensorllm.models.io import check_inputs_untouched, input_path

    inputs = [input_path(spec.model), spec.data, *spec.sources, *spec.recipes]
    check_inputs_untouched(spec.store, inputs, what="--store")


def _spawned_main(spec: SearchSpec) -> None:
    Search(spec, dist.world_from_env() or dist.World(), None, None).run()


class Search:
    def __init__(self, spec: SearchSpec, world: dist.World, loaded, log):
        self.spec = spec
        self.world = world
        self.loaded = loaded
        self.log = log or stderr_log(f"[rank {world.rank}] " if world.size > 1 else "")
        self.started = time.perf_counter()
        self.deadline = self.started + spec.time_budget if spec.time_budget else None
        self.evaluated: list[str] = []  # "key/split" evaluated by this process in this run
        self.phases = 0  # phases run so far: names this run's claim counters (the same on every rank)

    # -- setup ---------------------------------------------------------------------------------
    def _load(self, device: torch.device) -> None:
        from tensorllm.base.devices import eval_dtype
        from tensorllm.models.io import load_model

        spec = self.spec
        if self.loaded is None:
            self.loaded = load_model(
                spec.model,
                dtype=eval_dtype(spec.dtype, device),
                device=str(device),
                trust_remote_code=spec.trust_remote_code,
                allow_pickle=spec.allow_pickle,
            )
            if spec.expand_kv:
                from tensorllm.models.expand_kv import expand_kv

                expand_kv(self.loaded.model, self.loaded.arch)
        self.model, self.tokenizer, self.arch = self.loaded.model, self.loaded.tokenizer, self.loaded.arch
        self.device = next(self.model.parameters()).device

    def _check_task(self) -> None:
        """Bad task data (malformed file, empty split, labels the tokenizer cannot tell apart, ...) fails
        here, before the store is created: a store is never left behind by a search that could not start."""
        from tensorllm.eval import get_task
        from tensorllm.eval.evaluate import preflight

        spec, task = self.spec, get_task(self.spec.task)
        for split, limit in (("val", spec.limit_val), ("test", spec.limit_test)):
            preflight(self.model, self.tokenizer, task, split, limit, spec.data)

    def _identity(self) -> tuple[dict, dict]:
        from tensorllm.base.versions import __version__, versions

        spec = self.spec
        identity = {
            "format": FORMAT,
            "model": model_fingerprint(self.model),
            "task": spec.task,
            "data": data_identity(spec.task, spec.data),
            "limit_val": spec.limit_val,
            "limit_test": spec.limit_test,
            "answer_mode": spec.answer_mode,
            "batch_size": spec.batch_size,
            "method": spec.method,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "device_type": self.device.type,
            "tensorllm": __version__,
        }
        info = {
            "model_spec": spec.model,
            "expand_kv": spec.expand_kv,
            "architecture": self.arch.name,
            "data_file": str(spec.data) if spec.data else None,
            "created": now(),
            "code_version": code_version(),
            "versions": versions(),
        }
        return identity, info

    def _grid(self, identity: dict) -> Grid:
        spec = self.spec
        if spec.method != HYBRID:
            return method_grid(self.model, self.arch, spec.method, spec.layers, spec.options)
        if spec.recipes:
            return recipes_grid(list(spec.recipes))
        return hybrid_grid([self._top_k(src, identity) for src in spec.sources])

    def _top_k(self, source: str, identity: dict) -> list[tuple[str, Config]]:
        store = Store(source)
        found = store.manifest()
        if found is None:
            raise UserError(f"--from {source} is not a search store (no store.json)")
        diff = [d for d in mismatch(identity, found) if not d.startswith("method:")]
        if diff:
            raise UserError(f"--from {source} was measured on a different search ({'; '.join(diff)})")
        done = [line for line in store.results("val").values() if line["steps"]]
        if not done:
            raise UserError(f"--from {source} holds no evaluated configuration")
        top = select.rank(done)[: self.spec.top_k]
        return [(Config(tuple(line["steps"])).describe(), Config(tuple(line["steps"]))) for line in top]

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict | None:
        spec, world = self.spec, self.world
        device = dist.rank_device(spec.device, world)
        threads = torch.get_num_threads()  # restored on exit: a library call must not change the caller's
        try:
            with dist.process_group(world, device):
                if spec.threads:
                    torch.set_num_threads(spec.threads)
                elif (
                    world.size > 1
                ):  # CPU ranks compute on them; GPU ranks still tokenise and launch from them
                    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
                return self._run(device)
        finally:
            torch.set_num_threads(threads)

    def _run(self, device: torch.device) -> dict | None:
        world = self.world
        clock = time.perf_counter()

        def lap(name: str) -> None:  # where the set-up time goes, logged and kept in the report
            nonlocal clock
            now_ = time.perf_counter()
            self.setup[name] = round(now_ - clock, 2)
            clock = now_

        self.setup = {"start": round(clock - self.started, 2)}  # process group, threads
        self.run_index = dist.run_index(world)
        self.store = Store(self.spec.store)
        self.writer = None
        try:
            if world.is_main:  # one search per store, found out before the model is loaded
                _preflight_store(self.spec)
                took_over = self.store.lock()
                if took_over:
                    self.log(took_over)
            self._load(device)
            lap("load")
            self._check_task()
            lap("task_check")
            identity, info = self._identity()
            self.grid = self._grid(identity)
            lap("grid")
            if world.is_main:
                self.store.open(identity, info)
            dist.barrier(world)
            if not world.is_main:
                self.store.check(identity)
            self.writer = self.store.writer(world.rank)
            self.applier = Applier(
                self.model,
                self.arch,
                tokenizer=self.tokenizer,
                seed=self.spec.seed,
                cache_bytes=self.spec.cache_bytes,
            )
            lap("store")
            self.log("set-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.setup.items()))
            return self._phases(identity, info)
        finally:
            if self.writer is not None:
                self.writer.close()
            self.store.close()

    def _phases(self, identity: dict, info: dict) -> dict | None:
        configs = [BASELINE] + self.grid.configs()
        val_done = self._phase("val", configs)
        val = self.store.results("val")
        roles: dict[str, Config] = {}
        test_done = False
        if val_done:
            roles = self._test_roles(val)
            unique = list({c.key: c for c in roles.values()}.values())
            test_done = self._phase("test", unique)
        result = None
        if self.world.is_main:
            result = report_mod.build(
                self.grid,
                identity,
                info,
                val,
                self.store.results("test"),
                roles,
                status="complete" if val_done and test_done else "partial",
                run_seconds=time.perf_counter() - self.started,
                evaluated=len(self.evaluated),
                cache=self.applier.cache,
                setup=self.setup,
            )
            report_mod.write(self.store.root, result)
            self.log(f"report: {self.store.root / 'report.md'} ({result['status']})")
        dist.barrier(self.world)
        return result

    def _test_roles(self, val: dict[str, dict]) -> dict[str, Config]:
        by_key = {c.key: c for c in self.grid.configs()}
        winner = select.best([val[k] for k in by_key])
        roles = {"baseline": BASELINE, "winner": by_key[winner["key"]]}
        col = self.grid.data_free_col
        free = [self.grid.cells[(row, col)] for row in self.grid.rows if (row, col) in self.grid.cells]
        if free:  # the roles keep the names of Tucker's data-free column, the only one so far
            roles["auto_best"] = by_key[select.best([val[c.key] for c in free])["key"]]
            winner_row = self.grid.cells_of(winner["key"])[0][0]
            if (winner_row, col) in self.grid.cells:
                roles["auto_at_winner_layer"] = self.grid.cells[(winner_row, col)]
        return roles

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def _phase(self, split: str, configs: list[Config]) -> bool:
        """Evaluate what the store lacks, each configuration on whichever rank is free first; True when
        the split is complete."""
        done = self.store.results(split)
        pending = [c for c in configs if c.key not in done]
        self.phases += 1
        claims = dist.Claims(self.world, f"{self.run_index}/{self.phases}/{split}", len(pending))
        dist.barrier(self.world)  # every rank has read the same store before anyone appends to it
        share = f"; taken by whichever of the {self.world.size} ranks is free" if self.world.size > 1 else ""
        self.log(
            f"{split}: {len(configs) - len(pending)} of {len(configs)} configurations already in the store, "
            f"{len(pending)} to evaluate{share}"
        )
        t0 = time.perf_counter()
        bar = track(
            iter(lambda: None if self._out_of_time() else claims.next(), None),
            f"search ({split})",
            enabled=self.spec.progress and self.world.size == 1,
            total=len(pending),
        )
        for i, index in enumerate(bar):
            cfg = pending[index]
            line = self._evaluate(cfg, split)
            elapsed = time.perf_counter() - t0
            eta = elapsed / (i + 1) * claims.left() / self.world.size
            acc = "-" if line["accuracy"] is None else f"{line['accuracy']:.2f}"
            self.log(
                f"{split} {index + 1}/{len(pending)}  {cfg.describe()}  acc {acc}  loss {line['loss']:.4f}  "
                f"{line['seconds']:.1f} s  (eta {fmt_seconds(eta)})"
            )
        if self._out_of_time() and claims.left():
            self.log(f"time budget of {self.spec.time_budget:g} s reached: stopping; rerun to continue")
        dist.barrier(self.world)
        done = self.store.results(split)
        return all(c.key in done for c in configs)

    def _evaluate(self, cfg: Config, split: str) -> dict:
        from tensorllm.eval import evaluate

        spec = self.spec
        t0 = time.perf_counter()
        with self.applier.applied(cfg) as steps:
            res = evaluate(
                self.model,
                self.tokenizer,
                spec.task,
                split=split,
                limit=spec.limit_val if split == "val" else spec.limit_test,
                batch_size=spec.batch_size,
                answer_mode=spec.answer_mode,
                data=spec.data,
                progress=False,
            )
        ev = res.to_dict()
        ev.pop("examples", None)
        cells = self.grid.cells_of(cfg.key)
        line = {
            "key": cfg.key,
            "split": split,
            "cell": list(cells[0]) if cells else ["baseline", ""],
            "describe": cfg.describe(),
            "steps": list(cfg.steps),
            "accuracy": res.accuracy,
            "loss": res.loss,
            "n": res.n,
            "apply": steps,
            "eval": ev,
            "seconds": round(time.perf_counter() - t0, 3),
            "rank": self.world.rank,
            "world": self.world.size,
            "finished": now(),
        }
        self.writer.append(line)
        self.evaluated.append(f"{cfg.key}/{split}")
        return line
