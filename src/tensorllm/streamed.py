"""Compress a checkpoint larger than memory: weight-only steps, one decoder layer at a time.

    from tensorllm.streamed import compress_streamed
    out, report = compress_streamed("llama-13b/", {"steps": [{"method": "tucker", "layers": "all",
                                                                "ranks": [1280, 64, 3]}]}, "runs/13b")

Every step must stream (`Method.streams`: tucker, laser and their hybrids), or be the recipe's one
calibrated step (a `gqa` conversion without fine-tune: streamed_gqa.py). Checks before any work (models/
shards.py, models/stream.py): the shards the index names are present, their headers are sound and
describe the bytes on disk, shapes and dtype agree with the config, the layers exist, the disk has
room for the output. Then each selected layer is loaded from the shards into CPU memory, every step
that selects it runs on it (the method's own `apply`, on a model whose other layers are on the meta
device; it computes on the recipe's device), and its tensors are written into the output shard being
filled; tensors of unselected layers and outside the layers are copied byte for byte. Peak memory is
one layer plus the transform's own work. The output equals, tensor for tensor, what `compress` +
`save_checkpoint` write for the same recipe (tests/test_streamed.py).

The output is built in `.OUT.stream-partial` beside OUT and renamed into place when complete. After
each layer the shard in progress is synced and `stream-state.json` records where the run stands, so
rerunning the same command after a kill (even kill -9) continues from the last completed layer; a
different command (recipe, input, shard size or versions) starts afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from tensorllm import streamed_gqa
from tensorllm.api import as_recipe, model_info
from tensorllm.base.devices import parse_dtype, resolve_device
from tensorllm.base.errors import Interrupted, OutputError, UserError
from tensorllm.base.files import atomic_write_text, check_free_space, check_location
from tensorllm.base.layers import parse_layers
from tensorllm.base.memory import peak_rss_bytes
from tensorllm.base.progress import track
from tensorllm.base.versions import versions
from tensorllm.methods import registry
from tensorllm.methods.gqa.config import GQAConfig
from tensorllm.models.aliases import ALIASES
from tensorllm.models.io import check_output_dir, load_config
from tensorllm.models.shards import INDEX, Checkpoint, ShardWriter, header_bytes, parse_size, plan_shards
from tensorllm.models.stream import StreamedModel, too_big_for_memory
from tensorllm.recipe import Recipe
from tensorllm.report import Report

STATE = "stream-state.json"
DEFAULT_SHARD_SIZE = "5GB"  # the hub's usual shard size (save_pretrained's own default is 50GB)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
_OURS = ("recipe.yaml", "report.json", INDEX, STATE)


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.stream-partial"


@dataclasses.dataclass
class Plan:
    """What the checks before work established: the input, the model, the steps, the output."""

    recipe: Recipe
    spec: str
    sm: StreamedModel
    selected: list[list[int]]  # per step, its layers
    shards: list
    out: Path
    fingerprint: str
    aux: list[Path]  # config, tokenizer and other small files copied beside the weights
    out_config: object = None  # the output's config where a calibrated step changes it (else copied)


def local_checkpoint(model: str):
    """(config, arch, directory) of a local safetensors checkpoint; one line for anything else."""
    config, arch, path, _, kwargs = load_config(model)
    if path is None or kwargs.get("gguf_file"):
        kind = "a .gguf file" if kwargs.get("gguf_file") else "a hub id"
        raise UserError(f"streaming reads a local safetensors checkpoint directory; '{model}' is {kind}")
    return config, arch, path


# steps that stream with calibration text, by config type: the module that runs them (torchao-style lookup)
CALIBRATED = {GQAConfig: streamed_gqa}


def _calibrated(step) -> bool:
    return type(step.config) in CALIBRATED and not registry.get(step.method).streams(step.config)


def streamable(recipe: Recipe) -> list[str]:
    """The recipe's methods that cannot stream (empty when every step can)."""
    bad = [s.method for s in recipe.steps if not (registry.get(s.method).streams(s.config) or _calibrated(s))]
    if not bad and len(recipe.steps) > 1:
        bad = [s.method for s in recipe.steps if _calibrated(s)]  # a calibrated step streams alone
    return bad


def prepare(
    model: str, recipe, out: Path, *, overwrite: bool = False, max_shard_size=DEFAULT_SHARD_SIZE
) -> Plan:
    """Every check before work; nothing is written."""
    recipe = as_recipe(recipe)
    bad = streamable(recipe)
    if bad:
        raise UserError(
            f"method '{bad[0]}' cannot stream layer by layer (it needs more than one layer's weights"
            + (", or streams only as a recipe's one step)" if len(recipe.steps) > 1 else ")")
        )
    config, arch, path = local_checkpoint(model)
    out = check_output_dir(check_location(out), [path], overwrite)
    sm = StreamedModel(Checkpoint(path), config, arch)
    sm.check(parse_dtype(recipe.dtype))
    resolve_device(recipe.device)
    calibrated = _calibrated(recipe.steps[0])
    out_config = (
        CALIBRATED[type(recipe.steps[0].config)].out_config(sm, recipe.steps[0].config)
        if calibrated
        else None
    )
    every = list(range(sm.n_layers))
    selected = [every if calibrated else parse_layers(s.config.layers, sm.n_layers) for s in recipe.steps]
    shards = plan_shards(sm.plan(out_config), parse_size(max_shard_size))
    aux = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES) and p.name not in _OURS
    )
    inputs = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sm.ckpt.files + aux]
    ident = {
        "recipe": recipe.to_dict(),
        "inputs": inputs,
        "shards": [[(e.name, e.nbytes) for e in s] for s in shards],
    }
    ident["versions"] = versions()
    fp = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    plan = Plan(recipe, model, sm, selected, shards, out, fp, aux, out_config)
    _check_disk(plan)
    return plan


def _check_disk(plan: Plan) -> None:
    """Room for the output: its exact size from the plan, less what a run to continue wrote already."""
    partial = partial_dir(plan.out)
    need = sum(len(header_bytes(s)) + sum(e.nbytes for e in s) for s in plan.shards)
    need += sum(p.stat().st_size for p in plan.aux)
    if partial.is_dir():
        need -= sum(p.stat().st_size for p in partial.iterdir() if p.is_file())
    check_free_space(plan.out, max(need, 1), what="the streamed output")


def _load_state(partial: Path, fingerprint: str, log) -> dict | None:
    """The state of a run of the same command to continue, or None (a stale one is removed)."""
    if not partial.exists():
        return None
    try:
        state = json.loads((partial / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    if state is not None and state.get("fingerprint") == fingerprint:
        return state
    log(f"removing {partial}: an unfinished streamed output of another command")
    shutil.rmtree(partial)
    return None


def compress_streamed(
    model: str,
    recipe,
    out: Path,
    *,
    overwrite: bool = False,
    max_shard_size=DEFAULT_SHARD_SIZE,
    progress: bool = True,
    log=None,
) -> tuple[Path, Report]:
    """Run the recipe layer by layer from `model`'s shards into `out`; return (out, report)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    plan = prepare(model, recipe, out, overwrite=overwrite, max_shard_size=max_shard_size)
    partial = partial_dir(plan.out)
    state = _load_state(partial, plan.fingerprint, log)
    if state is None:
        partial.mkdir(parents=True)
        state = {"fingerprint": plan.fingerprint, "next": -1, "position": None, "results": {}, "timing": {}}
        atomic_write_text(partial / STATE, json.dumps(state))
    else:
        log(f"continuing the unfinished run in {partial} from layer {max(state['next'], 0)}")
    try:
        report = _run(plan, partial, state, progress)
    except OutputError:
        raise
    except UserError:
        shutil.rmtree(partial, ignore_errors=True)  # the same command would fail the same way
        raise
    except OSError as exc:  # a full disk, an I/O error: what is written stays, to continue from
        why = exc.strerror or exc
        raise OutputError(f"streaming into {partial} failed ({why}); it is kept: {_again(state)}") from None
    except (KeyboardInterrupt, Interrupted):
        log(f"stopped: {partial} is kept; {_again(state)}")
        raise
    _publish(partial, plan.out, overwrite)
    return plan.out, report


def _again(state: dict) -> str:
    return f"rerun the same command to continue from layer {max(state['next'], 0)}"


def _run(plan: Plan, partial: Path, state: dict, progress: bool) -> Report:
    recipe, sm = plan.recipe, plan.sm
    device = resolve_device(recipe.device)
    ctx = registry.RunContext(device=device, seed=recipe.seed, progress=False)
    methods = [registry.get(s.method) for s in recipe.steps]
    results: dict = state["results"]  # {step: {layer: apply's result}}, JSON keys
    timing = {k: state["timing"].get(k, 0.0) for k in ("read_s", "compute_s", "write_s", "copy_s")}
    resumed_at = state["next"] if state["position"] else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(recipe.seed)
    t_start = time.perf_counter()
    writer = ShardWriter(partial, plan.shards, resume=state["position"])

    def clock(key: str, t0: float) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        timing[key] += t1 - t0
        return t1

    def mark(next_layer: int) -> None:
        state.update(next=next_layer, position=writer.position(), results=results, timing=timing)
        atomic_write_text(partial / STATE, json.dumps(state, default=str))

    try:
        if state["next"] == -1:
            t0 = time.perf_counter()
            for key in sm.rest:
                writer.copy(sm.ckpt.tensors[key])
            clock("copy_s", t0)
            mark(0)
        if plan.out_config is not None:
            from transformers import AutoTokenizer

            ctx.tokenizer = AutoTokenizer.from_pretrained(sm.ckpt.path)
            step = recipe.steps[0]
            calibrated = CALIBRATED[type(step.config)].run(
                sm, step.config, ctx, writer, state, mark, timing, progress
            )
        else:
            _weight_layers(plan, writer, ctx, methods, results, clock, mark, progress, state["next"])
        writer.finish()
    finally:
        writer.close()
    for p in plan.aux:
        shutil.copy2(p, partial / p.name)
    if plan.out_config is not None:
        plan.out_config.save_pretrained(partial)
    report = Report(recipe=recipe.to_dict(), model=model_info(sm.model, plan.spec))
    if plan.out_config is not None:
        seconds = calibrated["summary"]["seconds"]
        report.steps.append({"method": recipe.steps[0].method, **calibrated, "seconds": seconds})
    for s, step in enumerate([] if plan.out_config is not None else recipe.steps):
        per_layer = [results[str(s)][str(i)] for i in plan.selected[s]]
        merged = methods[s].merge_results(per_layer)
        seconds = sum(r.get("seconds", 0.0) for r in merged["layers"])
        report.steps.append({"method": step.method, **merged, "seconds": seconds})
    report.seconds = sum(timing.values())
    report.extra["stream"] = {
        **timing,
        "this_run_s": time.perf_counter() - t_start,
        "resumed_at_layer": resumed_at,
        "shards": len(plan.shards),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
    }
    (partial / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    (partial / "report.json").write_text(report.to_json(), encoding="utf-8")
    (partial / STATE).unlink()
    return report


def _weight_layers(plan: Plan, writer, ctx, methods, results, clock, mark, progress, start: int) -> None:
    """Weight-only steps, layer by layer from `start`: each step that selects a layer runs `apply` on it."""
    recipe, sm = plan.recipe, plan.sm
    layers = range(start, sm.n_layers)
    for i in track(layers, "streaming layers", enabled=progress, total=len(layers)):
        steps = [s for s, chosen in enumerate(plan.selected) if i in chosen]
        t0 = time.perf_counter()
        if not steps:
            for key in sm.keys(i):
                writer.copy(sm.ckpt.tensors[key])
            clock("copy_s", t0)
            mark(i + 1)
            continue
        loaded = sm.load_layer(i)
        for key, t in loaded.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise UserError(f"weights of '{plan.spec}' contain NaN or Inf (first in {key})")
        t0 = clock("read_s", t0)
        for s in steps:
            cfg = dataclasses.replace(recipe.steps[s].config, layers=(i,))
            results.setdefault(str(s), {})[str(i)] = methods[s].apply(sm.model, sm.arch, cfg, ctx)
        t0 = clock("compute_s", t0)
        for key, t in sm.layer_state(i).items():
            writer.write(key, t)
        sm.unload_layer(i)
        clock("write_s", t0)
        mark(i + 1)


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished output into place (replacing `final` only with `overwrite`)."""
    if not final.exists():
        tmp.rename(final)
        return
    if not overwrite:
        raise UserError(f"output directory {final} already exists (pass --overwrite to replace it)")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def stream_reason(model: str, recipe) -> str | None:
    """Why `compress` should stream when neither --stream nor --no-stream is given, or None: every step
    can stream, the input is a local safetensors checkpoint, and its weights would not fit in memory
    (70% of the RAM available now, or of the GPU's free memory when the recipe runs there)."""
    recipe = as_recipe(recipe)
    refused = [s for s in recipe.steps if _calibrated(s) and not CALIBRATED[type(s.config)].streams(s.config)]
    if streamable(recipe) or refused or not (model in ALIASES or Path(model).expanduser().is_dir()):
        return None  # a hub id or .gguf: the in-memory path loads it (and fails in one line offline)
    try:
        _, _, path = local_checkpoint(model)
    except UserError:
        return None  # the in-memory path gives the right message, or loads what streaming cannot
    return too_big_for_memory(path, resolve_device(recipe.device))
