"""GQAConfig: every option of the MHA -> GQA conversion (recipe step `method: gqa`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tensorllm.base.errors import UserError
from tensorllm.methods import registry


@dataclass
class GQAConfig:
    """Convert multi-head (or grouped-query) attention to `kv_heads` K/V heads per layer.

    kv_heads          K/V heads after conversion (must divide the query heads; fewer than now)
    grouping          "similarity": group the heads that align best; "contiguous": heads 0..m-1, ...
    align             fold RoPE-safe rotations (keys) and Procrustes (values) into the weights first
    calib_tokens      calibration tokens (streamed statistics; ~32k suffice for the grouping)
    seq_len           calibration sequence length (also the fine-tune's)
    calib_file        text / JSON / JSONL file; None = tensorllm.data.default_calibration_text()
    seed              grouping restarts and fine-tune sampling; None = the recipe's seed
    restarts          random restarts of the swap search (plus one greedy start)
    procrustes_iters  generalised-Procrustes iterations per group
    batch_size        sequences per calibration forward pass
    train_steps       recovery fine-tune steps (0 = training-free merge)
    train_tokens      fine-tune text: the tokens that follow the calibration tokens in the same text
                      (0 = train on the calibration tokens); a long run needs far more text than the
                      grouping does, and reusing 32k tokens thousands of times overfits them
    lr                peak learning rate of the trained weights
    train_scope       "attention": Q, O and the shared K/V of every layer are trained; "all": every
                      weight of the model (MLPs, norms, embeddings too) except the original K/V heads
                      the gates hand over from
    lr_schedule       "cosine": linear warm-up over 2% of the steps, then a cosine down to lr / 10;
                      "constant": lr throughout
    gate_lr           learning rate of the gates' log-alpha and the Lagrange multipliers; None = 10 / warm-up
                      steps (clipped to [0.01, 1]): log-alpha must travel ~10 during the warm-up
    train_batch_size  sequences per fine-tune step
    sparsity_warmup   fraction of the steps over which the target share of closed gates rises 0 -> 1
    train_dir         where the fine-tune checkpoints go (and resume from); None = no checkpoints
    save_every        fine-tune checkpoint interval in steps
    grouping_metric   how a pair of heads is scored for the grouping, after the alignment (align.py):
                      "energy": sum_t <a_i, T a_j> / sqrt(E_i E_j), the cosine of the whole activation
                      sequences (loud tokens weigh more); "cosine": the mean over tokens of the cosine of
                      a_i(t) and T a_j(t) (every token weighs the same: the paper's); "distance": minus
                      the root mean squared distance ||a_i(t) - T a_j(t)|| (metrics.py)
    grouping_on       which activations score the pair: "keys" (pre-RoPE k_proj outputs), "values"
                      (v_proj outputs) or "both" (the sum of the two scores)
    sink_tokens       leave the first N tokens of every calibration sequence (the attention sinks) out of
                      the grouping's statistics (the alignment and merge still use every token)
    l0_schedule       the fine-tune's gates: "ceiling": log-alpha is held under a ceiling that closes every
                      gate when the warm-up ends; "lagrangian": the gates stay free (sampled, no ceiling)
                      until the last step while the Lagrangian pulls the expected share of closed gates
                      to the target, and are closed at the export
    train_precision   "auto" (bfloat16 autocast on CUDA, float32 elsewhere), "bfloat16" or "float32":
                      the fine-tune's matrix products; weights, optimiser state and the KL stay float32,
                      also for a bf16/fp16 checkpoint (the student is float32 while it trains: its size
                      once more in memory; the teacher stays as loaded; the export is in the model's dtype)
    """

    kv_heads: int = 0
    grouping: Literal["similarity", "contiguous"] = "similarity"
    align: bool = True
    calib_tokens: int = 32768
    seq_len: int = 2048
    calib_file: str | None = None
    seed: int | None = None
    restarts: int = 16
    procrustes_iters: int = 20
    batch_size: int = 4
    train_steps: int = 0
    train_tokens: int = 0
    lr: float = 1e-4
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    gate_lr: float | None = None
    train_batch_size: int = 1
    sparsity_warmup: float = 0.3
    train_dir: str | None = None
    save_every: int = 200
    train_precision: Literal["auto", "bfloat16", "float32"] = "auto"
    train_scope: Literal["attention", "all"] = "attention"
    # added later: left out of the canonical step at their default (registry.added_later)
    grouping_metric: Literal["energy", "cosine", "distance"] = registry.added_later("energy")
    grouping_on: Literal["both", "keys", "values"] = registry.added_later("both")
    sink_tokens: int = registry.added_later(0)
    l0_schedule: Literal["ceiling", "lagrangian"] = registry.added_later("ceiling")

    def validate(self) -> None:
        positive = {
            "kv_heads": self.kv_heads,
            "calib_tokens": self.calib_tokens,
            "restarts": self.restarts,
            "procrustes_iters": self.procrustes_iters,
            "batch_size": self.batch_size,
            "train_batch_size": self.train_batch_size,
            "save_every": self.save_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"gqa.{name} must be at least 1, got {value}")
        if self.seq_len < 2:
            raise UserError(f"gqa.seq_len must be at least 2, got {self.seq_len}")
        if self.train_steps < 0:
            raise UserError(f"gqa.train_steps must be 0 or more, got {self.train_steps}")
        if self.train_tokens < 0:
            raise UserError(
                "gqa.train_tokens must be 0 (train on the calibration tokens) or more, "
                f"got {self.train_tokens}"
            )
        if self.lr <= 0 or (self.gate_lr is not None and self.gate_lr <= 0):
            raise UserError("gqa.lr and gqa.gate_lr must be positive")
        if not 0 <= self.sink_tokens < min(self.seq_len, self.calib_tokens):
            raise UserError(
                f"gqa.sink_tokens must be 0 or more and fewer than the calibration sequence length "
                f"({min(self.seq_len, self.calib_tokens)}), got {self.sink_tokens}"
            )
        if not 0 < self.sparsity_warmup <= 1:
            raise UserError(f"gqa.sparsity_warmup must be in (0, 1], got {self.sparsity_warmup}")
