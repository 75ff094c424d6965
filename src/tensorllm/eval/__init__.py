"""Reasoning evaluation with LASER's protocol: tasks, batched generation / scoring, lm-eval bridge.

from tensorllm.eval import evaluate
result = evaluate(model, tokenizer, "wikidata_qa", split="val")   # EvalResult
result.accuracy, result.loss                                      # percent, mean per-token NLL
"""

from tensorllm.eval.evaluate import ANSWER_MODES, EvalResult, evaluate, model_kind
from tensorllm.eval.sources import SPLITS, Dataset, load_task, select, split_examples
from tensorllm.eval.tasks import TASKS, Example, TaskSpec, get_task

__all__ = [
    "ANSWER_MODES",
    "SPLITS",
    "TASKS",
    "Dataset",
    "EvalResult",
    "Example",
    "TaskSpec",
    "evaluate",
    "get_task",
    "load_task",
    "model_kind",
    "select",
    "split_examples",
]
