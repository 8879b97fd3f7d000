"""Train a class-conditional diffusion model: `python train.py [overrides]` (see README)."""

import hydra
from omegaconf import DictConfig

from facediff.cli import reported_errors
from facediff.lightning.training import run


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@reported_errors
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
