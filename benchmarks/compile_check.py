"""Does torch.compile give eager's gradients in 16-bit autocast on this device and torch?

    python -m benchmarks.compile_check --device cpu --dtype bf16
    python -m benchmarks.compile_check --device cuda --dtype fp16

The pattern is every `AttentionBlock`'s: GroupNorm, a linear layer on the (B, L, C) tokens, and
the residual. With torch 2.14.1 on a CPU (a Xeon with AMX) inductor's generated code returns NaN
gradients for the input in bf16 and fp16, while eager, `aot_eager` and inductor in fp32 agree:
every compiled training step of a facediff UNet in bf16 is then skipped (BENCHMARKS.md, run 24).
With torch 2.11 on an H100 both dtypes agree. facediff therefore compiles on a CPU in fp32 only
(`facediff.lightning.training.resolve_precision`); rerun this to see whether a newer torch has
fixed it. Prints one line; exits 0 when the gradients agree, 1 when they do not.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def input_grads(device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """d loss / d x of GroupNorm -> linear -> residual, eager and compiled."""
    torch.manual_seed(0)
    x0 = torch.randn(4, 64, 8, 8, device=device).to(dtype)  # (B, C, H, W)
    norm = torch.nn.GroupNorm(8, 64).to(device)
    w = torch.randn(64, 64, device=device) * 0.1

    def block(x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = norm(x).reshape(B, C, H * W).transpose(1, 2)  # (B, L, C)
        return x + F.linear(tokens, w).transpose(1, 2).reshape(B, C, H, W)

    grads = []
    for fn in (block, torch.compile(block)):
        x = x0.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            out = fn(x)
        out.float().pow(2).mean().backward()
        assert x.grad is not None
        grads.append(x.grad.float())
    return grads[0], grads[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = parser.parse_args(argv)
    eager, compiled = input_grads(args.device, DTYPES[args.dtype])
    ok = bool(compiled.isfinite().all()) and torch.allclose(eager, compiled, rtol=0.05, atol=1e-4)
    print(
        f"torch.compile, {args.dtype} autocast on {args.device}, torch {torch.__version__}: "
        f"|grad| eager {eager.norm():.5f}, compiled {compiled.norm():.5f} -> "
        f"{'agree' if ok else 'DIFFER'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
