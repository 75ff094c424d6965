"""The `tensorllm` typer app: one module per command group, registered here by explicit import.
Every command turns a UserError into `error: ...` on stderr and exit code 2, and SIGTERM / SIGINT
into one `error: interrupted ...` line and exit code 143 / 130 once temporary outputs are removed.
"""

from __future__ import annotations

import signal
import sys

import typer

from tensorllm.base.errors import Interrupted, UserError
from tensorllm.base.files import signals_raise
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
    # SIGTERM (timeout, docker, SLURM) and SIGINT unwind like an exception, so every temporary output
    # on the way out is removed; then one line and the shell's exit code for the signal (143, 130)
    with signals_raise(signal.SIGTERM, signal.SIGINT, replace=True):
        try:
            _quiet_transformers()
            app(standalone_mode=False)
        except Interrupted as exc:
            name = signal.Signals(exc.signum).name
            msg = "partial outputs removed (resumable runs keep their progress)"
            print(f"error: interrupted by {name}; {msg}", file=sys.stderr)
            sys.exit(128 + exc.signum)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except typer.Abort:  # click's own KeyboardInterrupt / EOF handling
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as exc:  # click's usage errors (typer vendors click) arrive here, non-standalone
            if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
                if exc.format_message():
                    print(f"error: {exc.format_message()}", file=sys.stderr)
                sys.exit(2)
            raise
