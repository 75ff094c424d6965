"""The bottom layer: errors, devices and dtypes, files and the cache, progress bars, layer
selections, version stamps. It imports nothing else of tensorllm."""
