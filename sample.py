"""Sample from a trained checkpoint: `python sample.py ckpt=PATH out=DIR [overrides]` (README)."""

import hydra
from omegaconf import DictConfig

from facediff.cli import reported_errors
from facediff.jobs.sample import run


@hydra.main(config_path="conf", config_name="sample", version_base="1.3")
@reported_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
