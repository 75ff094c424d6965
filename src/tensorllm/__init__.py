"""tensorllm: structural denoising and compression of transformer attention.

Methods: `tucker` (TensorLLM, arXiv 2501.15674), `laser` (arXiv 2312.13558),
`gqa` (aligned MHA -> GQA conversion, arXiv 2412.20677). See README.md.
"""

from tensorllm.api import compress
from tensorllm.base.errors import UserError
from tensorllm.base.versions import __version__
from tensorllm.models.io import load_model, save_checkpoint
from tensorllm.recipe import Recipe
from tensorllm.runtime.factorised_load import load

__all__ = ["compress", "load", "load_model", "save_checkpoint", "Recipe", "UserError", "__version__"]
