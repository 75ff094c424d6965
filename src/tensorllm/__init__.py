"""tensorllm: structural denoising and compression of transformer attention.

Methods: `tucker` (TensorLLM, arXiv 2501.15674), `laser` (arXiv 2312.13558),
`gqa` (aligned MHA -> GQA conversion, arXiv 2412.20677). See README.md.
"""

__version__ = "0.1.0"

from tensorllm.api import compress  # noqa: E402
from tensorllm.errors import UserError  # noqa: E402
from tensorllm.models.io import load_model, save_checkpoint  # noqa: E402
from tensorllm.recipe import Recipe  # noqa: E402

__all__ = ["compress", "load_model", "save_checkpoint", "Recipe", "UserError", "__version__"]
