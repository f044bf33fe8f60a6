"""Training and evaluation (torch): datasets, samplers, losses, trainer, evaluation."""
