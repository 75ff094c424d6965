"""Inference-time modules plugged into transformers models (the factorised projections, their loader and
the recovery fine-tune of their factors)."""
