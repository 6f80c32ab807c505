"""Training and evaluation machinery: trainer, optimiser and schedule, checkpoints, distributed helpers, evaluator, TTA."""
