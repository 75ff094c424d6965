"""The command line, the top layer: `tensorllm` = `tensorllm.cli:main`.

One module per command group, each with a `register(app)`:

    compress.py   compress, expand-kv         info.py    info
    demo.py       demo (the main job)          eval.py    eval, data fetch
    gqa.py        gqa (+ gqa_pipeline.py: load -> measure -> convert -> measure -> save)
    search.py     search
"""

from tensorllm.cli.app import app, main

__all__ = ["app", "main"]
