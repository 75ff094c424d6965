"""Inference-time modules plugged into transformers models (the factorised projections and their loader)."""
