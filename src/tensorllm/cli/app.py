"""The `tensorllm` typer app: one module per command group, registered here by explicit import.
Every command turns a UserError into `error: ...` on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from tensorllm.base.errors import UserError
from tensorllm.cli import compress, demo, export, gqa, info, search
from tensorllm.cli import eval as eval_cmds

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Structural denoising and compression of transformer attention (TensorLLM, LASER, MHA->GQA).",
)
for _module in (compress, export, info, demo, eval_cmds, gqa, search):
    _module.register(app)


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main() -> None:
    _quiet_transformers()
    try:
        app(standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click's usage errors (typer vendors click) arrive here in non-standalone mode
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            if exc.format_message():
                print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(2)
        raise
