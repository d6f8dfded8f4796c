"""The trainer: spec, tokenisation, losses, loop, checkpoints, model loading.

Knows nothing of HTTP or the database; the runner and `preftune train` drive it.
"""
