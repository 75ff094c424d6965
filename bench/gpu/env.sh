# Sourced by stage.sh (so by every script here): where things live on the lent GPU machine (bash,
# repo root as cwd).
# $S (outside the repository) survives between calls while the machine stays warm.
export S=/tmp/s PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast off
export PYTHONPATH=$PWD/src:$PWD/bench:$S/site TENSORLLM_CACHE=$S/cache
export MPLBACKEND=Agg
mkdir -p "$S" "$S/logs"
tl() { python3 -m tensorllm.cli "$@"; }
stamp() { date +%s.%N; }
timed() {  # timed NAME CMD...: CMD's output into $S/logs/NAME.log, then "WALL NAME <seconds> s" to it and stdout
  local name=$1 t0=$(stamp); shift
  "$@" > $S/logs/$name.log 2>&1
  echo "WALL $name $(python3 -c "print(round($(stamp) - $t0, 1))") s" | tee -a $S/logs/$name.log
}
