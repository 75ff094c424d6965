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
