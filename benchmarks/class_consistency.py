"""Class consistency of a checkpoint's samples, judged by an independent classifier.

    python benchmarks/class_consistency.py CKPT DATA_ROOT [n_per_class=40] [epochs=40] \
        [image_size=32] [runs=dpmpp:20,ddim:50,ddpm:100,ddpm:500] [guidance=3.0]

Trains a small CNN (nothing shared with the diffusion model) on the training split of a
folder-layout dataset (`DATA_ROOT/<class>/*.png`, e.g. the demo data in .cache/facediff/demo),
reports its accuracy on the real validation split, then the share of generated samples it
assigns to the class they were asked for, per sampler and step count. The headline is the ratio
of the two. A rough check, not a metric for papers (evaluate.py is the place for those).
"""

from __future__ import annotations

import sys
import time

import torch
from torch import Tensor, nn

from facediff.data import FaceDataModule
from facediff.inference.generator import Generator


def train_classifier(dm: FaceDataModule, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    clf = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, dm.num_classes),
    )  # fmt: skip
    opt = torch.optim.Adam(clf.parameters(), 1e-3)
    for _ in range(epochs):
        for x, y in dm.train_dataloader():
            loss = nn.functional.cross_entropy(clf(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


@torch.no_grad()
def accuracy(clf: nn.Module, x: Tensor, y: Tensor) -> float:
    return (clf(x).argmax(1) == y).float().mean().item()


def main(argv: list[str]) -> None:
    ckpt, root, *rest = argv
    args = dict(a.split("=", 1) for a in rest)
    n, epochs = int(args.get("n_per_class", 40)), int(args.get("epochs", 40))
    size, guidance = int(args.get("image_size", 32)), float(args.get("guidance", 3.0))
    runs = [r.split(":") for r in args.get("runs", "dpmpp:20,ddim:50,ddpm:100,ddpm:500").split(",")]
    gen = Generator.from_checkpoint(ckpt, device="cpu")
    dm = FaceDataModule(root=root, layout="folder", classes=gen.class_names, image_size=size,
                        batch_size=64, num_workers=0, augment={"hflip": 0.5},
                        cache_dir=".cache/facediff")  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    clf = train_classifier(dm, epochs)
    xs, ys = zip(*dm.val_dataloader(), strict=True)
    real = accuracy(clf, torch.cat(xs), torch.cat(ys))
    print(f"classifier accuracy on the real val split: {real:.3f}")
    for sampler, steps in runs:
        start = time.perf_counter()
        images, labels = gen.sample(n_per_class=n, sampler=sampler, steps=int(steps),
                                    guidance=guidance, seed=0, batch_size=3 * n)  # fmt: skip
        if images.shape[-1] != size:
            images = nn.functional.interpolate(images, size=size, mode="bilinear")
        y = torch.tensor([gen.class_id(label) for label in labels])
        acc = accuracy(clf, images * 2 - 1, y)
        print(f"{sampler} {steps} steps, guidance {guidance}: class consistency {acc:.3f} "
              f"(ratio to real {acc / real:.3f}; {time.perf_counter() - start:.0f} s "
              f"for {len(y)} images)")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
