"""Evaluation data that tensorllm fetches and caches (BIG-bench task files from PyPI)."""

from tensorllm.data.bigbench import MEMBERS, FetchResult, bigbench_file, fetch_bigbench

__all__ = ["MEMBERS", "FetchResult", "bigbench_file", "fetch_bigbench"]
