"""facediff: class-conditional diffusion models of faces (Lightning + Hydra + W&B).

Packages, lower layers first (README, "Code layout"):
    data/        listing, indexing, splitting and loading face images (FaceDataModule)
    models/      the denoising networks (UNet, UNetConfig) and their registry
    diffusion/   schedule, objective, samplers, SamplingSettings: pure PyTorch
    evaluation/  the judging classifier, feature spaces, metrics, reports
    inference/   Generator (sampling a checkpoint) and figures that need a model; no Lightning
    lightning/   LightningModule, callbacks, EMA, optimizer groups, the training run, loggers
    jobs/        the bodies of sample.py and evaluate.py
Shared leaves: untrusted.py (checks of file-borne names and values), checkpoint.py (reading
checkpoints), tensor_figures.py (pictures from tensors, no model).
"""

__version__ = "0.1.0"
