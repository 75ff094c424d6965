"""Inference-time modules plugged into transformers models (e.g. the grouped decode attention)."""
