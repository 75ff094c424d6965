"""Pure tensor math (Tucker decomposition, truncated SVD) on torch tensors.

Nothing in this package knows about models, layers or checkpoints: the method layer
(`tensorllm.methods`) cuts weights into tensors, calls these functions and writes the result back.
"""
