# Sourced first by the scripts for the next GPU session: stages whatever this call carried
# (idempotent). The GGUF is over one call's 64 MiB, so it travels in two halves (.m1, .m2; see
# ../shared/GPU.md): the first call carries .m1 + .whl, the second .m2 + .tc (the BIG-bench cache).
source bench/gpu/env.sh
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S/site .whl/*.whl || exit 1
fi
[ -d .m1 ] && cp .m1/part.aa $S/
if [ -f .tc/data.tar.xz ]; then mkdir -p $S/cache && tar xJf .tc/data.tar.xz -C $S/cache; fi
if [ -d .m2 ] && [ -f $S/part.aa ] && [ ! -d $S/cache/models/smollm2-135m ]; then
  cat $S/part.aa .m2/part.ab > $S/smol.gguf && python3 bench/stage_gguf_alias.py $S/smol.gguf || exit 1
fi
nvidia-smi -L
