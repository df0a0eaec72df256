"""latentcot: latent ("soft") chain-of-thought reasoning for HF causal language models.

Every method (SoftCoT, Coconut, CODI, Soft Thinking, their baselines) is a registered plug-in over one
batched, KV-cached decode engine, one training loop and one evaluation runner.
"""

__version__ = "0.1.0"
