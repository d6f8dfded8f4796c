"""Contracts shared by several rooms: `TrainingSpec` (every hyperparameter once), the base-model
registry and import, and the token report of a data file under a model's tokenizer.

Training, inference, service, api and cli all import from here; this room imports only `data`,
`errors` and third-party libraries.
"""
