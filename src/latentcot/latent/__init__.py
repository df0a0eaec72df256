"""Shared latent-reasoning machinery beneath the method files: the stage curriculum (`curriculum`) and the
latent rollouts used in training and generation (`rollout`). Nothing here imports a method."""
