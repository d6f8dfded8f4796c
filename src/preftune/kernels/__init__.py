"""Compute kernels that training and inference both run: packed linear layers, block attention
(float32 and bf16), hand-written elementwise backward passes, fused LoRA, autocast questions and the
allocator. Pure PyTorch (and transformers interfaces); imports nothing else of preftune.
"""
