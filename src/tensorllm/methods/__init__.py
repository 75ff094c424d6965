"""The methods, each one module registered by its import here (adding a method = one file + one line).

tucker.py   TensorLLM multi-head Tucker (+ single-matrix and TRAWL variants; GQA-aware)
laser.py    LASER rank reduction of one matrix
gqa/        MHA -> GQA conversion with aligned heads
"""

from tensorllm.methods import gqa, laser, tucker  # noqa: F401  (each registers itself)

DEFAULT = tucker.NAME  # what `tensorllm compress` applies without --method
