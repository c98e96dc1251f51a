"""vae-bench: does the VAE encoder's σ-parameterization matter, and when?"""

__version__ = "0.1.0"
