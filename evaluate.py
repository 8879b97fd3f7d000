"""Evaluate a trained checkpoint: `python evaluate.py ckpt=PATH out=DIR [overrides]` (README)."""

import hydra
from omegaconf import DictConfig

from facediff.cli import reported_errors
from facediff.jobs.evaluate import run


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@reported_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
