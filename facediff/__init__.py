"""facediff: class-conditional diffusion models of faces (Lightning + Hydra + W&B)."""

__version__ = "0.1.0"
