"""Run (or resume) a layer x rank search: the loop from a SearchSpec to the store and the report.

    from tensorllm.search import SearchSpec, run_search
    report = run_search(SearchSpec("smollm2-135m", "wikidata_qa", "runs/s-tucker", method="tucker",
                                   layers="all", options={"ranks": [(144, 48, 4), (0.5, 0.5, 1.0), "auto"]}))

0. Take the store's lock (rank 0; a second search on the store refuses here, before any load).
1. Load the model once; check the task data and the model against it (a bad file, an empty split,
   ... fails before the store is created); build the grid (grid.py) and the search identity; open
   the store.
2. Validation phase. A racing search (the default; racing.py, race.py) scores the baseline on the
   whole split, then every configuration on a first slice of items, drops those that are behind
   the leader beyond a paired bound, grows the slice for the rest and scores the finalists on the
   whole split. `exhaustive=True` scores the baseline and every configuration on the whole split.
   Each evaluation is applied (apply.py), appended to the store at once with its per-item scores,
   and taken by whichever process is free first (a shared counter, dist.Claims).
3. Selection (select.py) on validation accuracy (or `select_by`), ties by lower loss.
4. Test phase: the winner, the baseline and, for grids with a data-free column (Tucker's `auto`),
   the best data-free configuration and the data-free one at the winner's layer, on the test split.
   Other tasks (transfer.py): `--select-on` adds their validation splits to the selection,
   `--report-on` / `--side-effects` their test splits to the test phase.
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

import torch

from tensorllm.archs import blocks
from tensorllm.base.progress import fmt_seconds, stderr_log, track
from tensorllm.search import dist, racing, select, setup, transfer
from tensorllm.search import report as report_mod
from tensorllm.search.apply import Applier, touched_params
from tensorllm.search.grid import BASELINE, Config, Grid
from tensorllm.search.spec import HYBRID, SearchSpec, search_methods  # noqa: F401  (the API's names)
from tensorllm.search.store import Store, now


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
        self.reference = None  # eval/reference.py: None = not yet made, False = not used
        self.block_of: dict[int, int] | None = None  # id(parameter) -> its decoder block (_first_edited)

    # -- setup (setup.py) ----------------------------------------------------------------------
    def _load(self, device: torch.device) -> None:
        self.loaded = setup.load(self.spec, self.loaded, device)
        self.model, self.tokenizer, self.arch = self.loaded.model, self.loaded.tokenizer, self.loaded.arch
        self.device = next(self.model.parameters()).device

    def _check_task(self) -> None:
        self.n_val, self.race = setup.check_task(self.spec, self.model, self.tokenizer)

    def _identity(self) -> tuple[dict, dict]:
        return setup.identity(self.spec, self.model, self.arch, self.device, self.race)

    def _grid(self, identity: dict) -> Grid:
        return setup.grid(self.spec, self.model, self.arch, identity, self.n_val)

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
        if self.race is None:
            val_done = self.phase("val", [BASELINE] + self.grid.configs())
            val, partial, race = self.store.results("val"), {}, None
        else:
            val_done, val, partial, summary = racing.validation(self)
            race = {"partial": partial, "summary": summary}
        spec, configs = self.spec, [BASELINE] + self.grid.configs()
        pools = {}  # other tasks' lines: {(split, task): {key: line}}
        for task in spec.selection_tasks:  # --select-on: other tasks' validation splits (exhaustive)
            if task != spec.task:
                val_done = self.phase(f"val@{task}", configs) and val_done
                pools[("val", task)] = self.store.results(f"val@{task}")
        chosen = None  # selection lines when several tasks select (transfer.combined)
        if spec.selection_tasks != [spec.task]:
            by_task = {t: pools.get(("val", t)) or val for t in spec.selection_tasks}
            chosen = transfer.combined(by_task, [c.key for c in configs])
        roles: dict[str, Config] = {}
        test_done = False
        if val_done:
            roles = self._test_roles(chosen or val, partial)
            unique = list({c.key: c for c in roles.values()}.values())
            test_done = self.phase("test", unique)
            for task in transfer.report_tasks(spec):  # --report-on / --side-effects: the same edits elsewhere
                test_done = self.phase(f"test@{task}", unique) and test_done
                pools[("test", task)] = self.store.results(f"test@{task}")
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
                by=self.spec.select_by,
                race=race,
                extra=self._extra(roles, pools, chosen),
                store_seconds=sum(line.get("seconds", 0.0) for line in self.store.lines()),
            )
            report_mod.write(self.store.root, result)
            self.log(f"report: {self.store.root / 'report.md'} ({result['status']})")
        dist.barrier(self.world)
        return result

    def _extra(self, roles: dict, pools: dict, chosen: dict | None) -> dict:
        """What the report adds for other tasks (transfer.py): nothing unless they were asked for."""
        out: dict = {"select_val": chosen}
        if pools:
            out["tasks"] = transfer.build(roles, pools, self.spec.selection_tasks)
        if self.spec.side_effects:
            out["generations"] = transfer.generations(roles, self.store.results("test"))
        return out

    def _test_roles(self, val: dict[str, dict], partial: dict[str, dict]) -> dict[str, Config]:
        """The configurations scored on test. A race's winner is the best of its finalists (scored on
        the whole split); its best data-free cell is the one that lasted longest in the race."""
        by_key = {c.key: c for c in self.grid.configs()}
        winner = select.best([val[k] for k in by_key if k in val], self.spec.select_by)
        roles = {"baseline": BASELINE, "winner": by_key[winner["key"]]}
        col = self.grid.data_free_col
        free = [self.grid.cells[(row, col)] for row in self.grid.rows if (row, col) in self.grid.cells]
        if free:  # the roles keep the names of Tucker's data-free column, the only one so far
            lines = [val.get(c.key) or partial[c.key] for c in free]
            roles["auto_best"] = by_key[racing.best_raced(lines, self.spec.select_by)["key"]]
            winner_row = self.grid.cells_of(winner["key"])[0][0]
            if (winner_row, col) in self.grid.cells:
                roles["auto_at_winner_layer"] = self.grid.cells[(winner_row, col)]
        return roles

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def phase(self, split: str, configs: list[Config]) -> bool:
        """Evaluate on the whole split what the store lacks; True when the split is complete."""
        done = self.store.results(split)
        pending = [c for c in configs if c.key not in done]
        self.run_jobs(
            split,
            [(c, None) for c in pending],
            f"{len(configs) - len(pending)} of {len(configs)} configurations already in the store",
        )
        done = self.store.results(split)
        return all(c.key in done for c in configs)

    def run_jobs(self, split: str, pending: list[tuple[Config, tuple[int, int] | None]], note: str) -> None:
        """Evaluate each (configuration, items or None for the whole split) on whichever rank is free
        first. Every rank passes the same list (read from the store after the same barrier)."""
        self.phases += 1
        claims = dist.Claims(self.world, f"{self.run_index}/{self.phases}/{split}", len(pending))
        dist.barrier(self.world)  # every rank has read the same store before anyone appends to it
        share = f"; taken by whichever of the {self.world.size} ranks is free" if self.world.size > 1 else ""
        self.log(f"{split}: {note}, {len(pending)} to evaluate{share}")
        t0 = time.perf_counter()
        bar = track(
            iter(lambda: None if self._out_of_time() else claims.next(), None),
            f"search ({split})",
            enabled=self.spec.progress and self.world.size == 1,
            total=len(pending),
        )
        for i, index in enumerate(bar):
            cfg, span = pending[index]
            line = self._evaluate(cfg, split, span)
            elapsed = time.perf_counter() - t0
            eta = elapsed / (i + 1) * claims.left() / self.world.size
            acc = "-" if line["accuracy"] is None else f"{line['accuracy']:.2f}"
            items = f" items {span[0]}..{span[1] - 1}" if span else ""
            self.log(
                f"{split} {index + 1}/{len(pending)}  {cfg.describe()}{items}  acc {acc}  "
                f"loss {line['loss']:.4f}  {line['seconds']:.1f} s  (eta {fmt_seconds(eta)})"
            )
        if self._out_of_time() and claims.left():
            self.log(f"time budget of {self.spec.time_budget:g} s reached: stopping; rerun to continue")
        dist.barrier(self.world)

    # -- the reference path (eval/reference.py) -----------------------------------------------------
    def _reference_path(self, cfg: Config, task: str, span, kwargs: dict):
        """How this evaluation uses the unedited model's stored path over the validation items: the
        baseline captures it; a configuration first has the path of its items captured if missing (on
        the unedited model, outside `applied`: a resumed search, or a rank that did not score the
        baseline), then starts its loss pass at its first edited block."""
        from tensorllm.eval import get_task, model_kind
        from tensorllm.eval.evaluate import capture_reference
        from tensorllm.eval.reference import Reference, ReferencePath

        if not self.spec.reference or task != self.spec.task or self.reference is False:
            return None
        if self.reference is None:
            # decoder models on generative tasks, whose scoring always runs the teacher-forced loss pass
            usable = model_kind(self.model) == "decoder" and get_task(task).kind == "generate"
            self.reference = Reference(blocks(self.model, self.arch)) if usable else False
            if not usable:
                return None
        start, end = span or (0, self.n_val)
        if cfg.key == BASELINE.key:
            return ReferencePath(self.reference, start, None)
        missing = [i for i in range(start, end) if i not in self.reference.covered]
        if missing:
            lo = missing[0]
            capture_reference(
                self.model,
                self.tokenizer,
                task,
                ReferencePath(self.reference, lo, None),
                kwargs["split"],
                kwargs["limit"],
                span=(lo, end),
                batch_size=kwargs["batch_size"],
                data=kwargs["data"],
            )
            self._check_reference_size()
            if self.reference is False:
                return None
        return ReferencePath(self.reference, start, self._first_edited(cfg))

    def _check_reference_size(self) -> None:
        ref = self.reference
        if ref and ref.nbytes() > self.spec.reference_bytes:
            self.log(
                f"the unedited model's stored path holds {ref.nbytes() / 2**30:.1f} GiB, over the "
                f"{self.spec.reference_bytes / 2**30:.1f} GiB limit: loss passes run every layer from now on"
            )
            self.reference = False

    def _first_edited(self, cfg: Config) -> int:
        """The lowest decoder block any step of `cfg` writes to (0 when one writes outside the blocks)."""
        if self.block_of is None:
            self.block_of = {
                id(p): i for i, b in enumerate(blocks(self.model, self.arch)) for p in b.parameters()
            }
        params = dict(self.model.named_parameters())
        names = [n for step in cfg.steps for n in touched_params(self.model, self.arch, step)]
        return min((self.block_of.get(id(params[n]), 0) for n in names), default=0)

    def _evaluate(self, cfg: Config, split: str, span: tuple[int, int] | None = None) -> dict:
        from tensorllm.eval import evaluate

        spec = self.spec
        base_split, task = transfer.task_of(split, spec.task)  # "test@fever_bigbench": another task
        t0 = time.perf_counter()
        kwargs = dict(
            split=base_split,
            limit=spec.limit_val if base_split == "val" else spec.limit_test,
            batch_size=spec.batch_size,
            answer_mode=spec.answer_mode,
            data=spec.data if task == spec.task else None,
            progress=False,
        )
        path = self._reference_path(cfg, task, span, kwargs) if base_split == "val" else None
        with self.applier.applied(cfg) as steps:
            res = evaluate(
                self.model,
                self.tokenizer,
                task,
                span=span,
                keep_examples=base_split == "test",
                reference=path,
                **kwargs,
            )
        self._check_reference_size()
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
            # per-item scores (eval/metrics.py), so statistics and racing need no recomputation
            "metrics": res.metrics,
            "items": {
                k: [round(x, 4) for x in v] if isinstance(v, list) else v for k, v in res.items.items()
            },
        }
        if span is not None:
            line["part"] = list(span)  # racing: items start..end-1 of the split only
        if res.examples and res.examples[0]["prediction"] is not None:  # a few generations, for the report
            keep = ("prompt", "answer", "prediction")
            line["examples"] = [{k: e[k] for k in keep} for e in res.examples[: transfer.GENERATIONS]]
        self.writer.append(line)
        self.evaluated.append(f"{cfg.key}/{split}")
        return line
