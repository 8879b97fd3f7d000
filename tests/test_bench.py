"""The benchmark's functions on tiny settings: right keys, sane values, and fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench


def test_bench_tiny_run_writes_complete_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = bench.main(
        [
            "--models", "unet_tiny", "--precisions", "fp32,bf16",
            "--variants", "channels_last,grad_ckpt", "--variant-models", "unet_tiny",
            "--size", "16", "--batch", "2", "--reps", "2", "--warmup", "0",
            "--peak-n", "256", "--mem-model", "unet_tiny", "--mem-batch", "8", "--mem-inprocess",
            "--data-per-class", "4", "--data-workers", "0",
            "--sample-models", "unet_tiny", "--sample-batch", "1", "--sample-steps", "1",
            "--threads", "1", "--json", str(out),
        ]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved.keys() >= {"machine", "args", "peak", "train", "memory", "data", "sample"}
    assert saved["machine"]["cpu"]["model"]
    assert set(saved["peak"]) == {"fp32", "bf16"} and saved["peak"]["fp32"]["gflops"] > 0

    keys = {"unet_tiny/fp32", "unet_tiny/bf16", "unet_tiny/fp32/cl", "unet_tiny/fp32/ckpt"}
    assert keys <= set(saved["train"])
    for key, r in saved["train"].items():
        assert "error" not in r, (key, r)
        assert r["img_per_s"]["n"] == 2 and 0 < r["img_per_s"]["min"] <= r["img_per_s"]["max"]
        assert r["params"] == saved["train"]["unet_tiny/fp32"]["params"] > 1e6
        assert 0.1 < r["gflop_per_img"] < 10  # unet_tiny at 16x16: ~0.4 GFLOP forward+backward
        assert 0 < r["ema_share"]["median"] < 1 and 0 < r["peak_share"] < 1

    mem = saved["memory"]  # in-process here (quick); the CLI's default child is in BENCHMARKS.md
    assert (
        mem["plain"]["peak_mib"] >= 0 and mem["grad_ckpt"]["peak_mib"] >= 0
    )  # heap reuse: may be 0
    assert mem["reduction"] is None or mem["reduction"] < 1

    data = saved["data"]["cases"]
    assert set(data) == {"workers=0/cache", "workers=0/decode"}
    assert all(r["img_per_s"]["median"] > 0 and r["images_per_epoch"] > 0 for r in data.values())

    assert set(saved["sample"]) == {
        f"unet_tiny/{p}/{s}" for p in ("fp32", "bf16") for s in ("ddpm", "ddim", "dpmpp")
    }
    usual = {"ddpm": 100, "ddim": 50, "dpmpp": 25}
    for r in saved["sample"].values():
        assert r["usual_steps"] == usual[r["sampler"]] and r["extrapolated"]
        assert r["img_per_s"]["median"] > 0
    assert result["train"].keys() == saved["train"].keys()


def test_attention_levels_times_every_layout(capsys):
    from benchmarks import attention_levels

    results = attention_levels.main(
        ["--batch", "2", "--reps", "1", "--warmup", "0", "--channels-last"]
    )
    assert set(results) == set(attention_levels.LAYOUTS)
    assert all(r["median"] > 0 for r in results.values())
    printed = capsys.readouterr().out
    assert "steps/s" in printed and "channels_last" in printed


def test_attention_levels_times_a_model_config_at_given_layouts(capsys):
    from benchmarks import attention_levels

    results = attention_levels.main(
        ["--network", "unet_attn", "--base-channels", "16", "--size", "16", "--batch", "2",
         "--precision", "bf16", "--layout", "8", "4", "--layout", "--reps", "1", "--warmup", "0"]
    )  # fmt: skip
    assert set(results) == {"attention at 8, 4", "no attention"}
    printed = capsys.readouterr().out
    assert "widths [16, 32, 48, 64]" in printed and "bf16" in printed


def test_recipe_networks_are_built_as_their_experiments_set_them():
    from benchmarks.models import build_model, facediff_model_config, model_size, num_parameters

    cfg = facediff_model_config("utkface_cpu")  # conf/experiment/utkface_cpu.yaml's network
    assert cfg["base_channels"] == 32 and cfg["attn_resolutions"] == [8]
    assert model_size("utkface_cpu", 64) == 32
    assert 2.0e6 < num_parameters(build_model("utkface_cpu", 32)) < 3.0e6  # the 2.4M recipe UNet


def test_peer_is_laid_out_like_the_config_it_is_matched_to():
    pytest.importorskip("diffusers")  # the optional `bench` extra
    import torch

    from benchmarks.models import DiffusersUNet

    cfg = dict(base_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8],
               groups=8, dropout=0.0)  # fmt: skip
    peer = DiffusersUNet(16, 3, cfg)  # levels at 16, 8 and 4 px: attention at the middle one
    assert [type(b).__name__ for b in peer.net.down_blocks] == [
        "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]  # fmt: skip
    assert [type(b).__name__ for b in peer.net.up_blocks] == [
        "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]  # fmt: skip
    assert peer.net.mid_block.attentions[0] is None  # 4 px has none, as in facediff's UNet
    out = peer(torch.randn(2, 3, 16, 16), torch.tensor([3, 7]), torch.tensor([0, 3]))
    assert out.shape == (2, 3, 16, 16)


def test_copy_test_benchmark_catches_exact_and_mirrored_copies(tmp_path: Path, capsys):
    import torch
    from PIL import Image

    from benchmarks import copy_test

    gen = torch.Generator().manual_seed(0)
    for i in range(12):  # asymmetric random images, so a mirror image is not the image
        pixels = (torch.rand(16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / f"{i:02d}.png")
    results = copy_test.main([str(tmp_path), "--size", "16", "--n-train", "9", "--n-queries", "3"])
    assert results["exact copy"]["caught"] == 1.0 and results["mirrored copy"]["caught"] == 1.0
    assert results["real face, not in training"]["caught"] == 0.0
    assert "median ratio" in capsys.readouterr().out


def test_profile_step_splits_a_step_into_kinds(tmp_path: Path, capsys):
    from benchmarks import profile_step

    assert profile_step.kind_of("sm90_xmma_fprop_implicit_gemm_bf16") == "conv+matmul"
    assert profile_step.kind_of("pytorch_flash::flash_fwd_kernel") == "attention"
    assert profile_step.kind_of("multi_tensor_apply_kernel<Adam>") == "optimiser+EMA"
    assert profile_step.kind_of("aten::native_group_norm_backward") == "normalisation"
    assert profile_step.kind_of("ComputeFusedParamsCUDAKernel<float>") == "normalisation"
    assert profile_step.kind_of("direct_copy_kernel_cuda") == "copy/cast"
    assert profile_step.kind_of("vectorized_elementwise_kernel<silu>") == "elementwise+other"

    out = tmp_path / "profile.json"
    r = profile_step.main(
        ["--model", "unet_tiny", "--size", "16", "--batch", "2", "--precision", "fp32",
         "--steps", "1", "--device", "cpu", "--json", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text())["case"] == "unet_tiny/fp32"
    assert r["busy_ms"] > 0 and 0 < r["busy_share"] <= 2  # CPU: two timed loops, noisy
    assert r["kinds_ms"]["conv+matmul"] > 0
    assert r["fwd_bwd_ops"] > 100 and len(r["top_ops"]) == 8  # the 8 most frequent operators
    assert sum(r["top_ops"].values()) <= r["fwd_bwd_ops"]
    assert abs(sum(r["kinds_ms"].values()) - r["busy_ms"]) < 1e-6
    assert "Where a step's time goes" in capsys.readouterr().out


def test_gpu_session_plans_steps_from_the_bench_and_slims_a_checkpoint(
    tmp_path: Path, tiny_checkpoint: Path
):
    import torch

    from benchmarks.gpu_session import FALLBACK_STEPS_PER_S, planned_steps, slim_checkpoint
    from facediff.inference.generator import Generator

    row = {"model": "unet_attn", "precision": "bf16", "img_per_s": {"median": 640.0}}
    fp32 = {"model": "unet_attn", "precision": "fp32", "img_per_s": {"median": 6400.0}}
    bench = {"train": {"unet_attn/bf16": row, "unet_attn/fp32": fp32}}
    assert planned_steps(bench, "unet_attn", seconds=250, batch=64) == 1000  # 10 steps/s x 100 s
    assert planned_steps({}, "unet_attn", seconds=250, batch=64) == int(100 * FALLBACK_STEPS_PER_S)
    assert planned_steps(bench, "unet_attn", seconds=30, batch=64) == 100  # the lower bound

    slim = tmp_path / "slim.ckpt"
    slim_checkpoint(tiny_checkpoint, slim)
    saved = torch.load(slim, weights_only=True)
    assert "optimizer_states" not in saved and saved["current_model_state"] == {}
    assert all(
        v.dtype == torch.float16 for v in saved["state_dict"].values() if v.is_floating_point()
    )
    full, small = Generator.from_checkpoint(tiny_checkpoint), Generator.from_checkpoint(slim)
    for a, b in zip(full.net.state_dict().values(), small.net.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)  # fp16 rounding only


def test_case_keys_and_instruction_set_limits_are_named(monkeypatch):
    import torch

    from benchmarks.bench_train import TrainCase
    from benchmarks.common import ISA_LIMIT_VARS, describe, device_info

    case = TrainCase("unet_attn", "bf16", compile_graphs=True)
    assert case.key == "unet_attn/bf16/compile+graphs"
    for var in ISA_LIMIT_VARS:
        monkeypatch.delenv(var, raising=False)
    assert "limited by" not in describe(device_info(torch.device("cpu")))
    # an emulated older CPU (BENCHMARKS.md, run 16) must not read as the full one
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = device_info(torch.device("cpu"))
    assert info["cpu"]["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert "limited by ONEDNN_MAX_CPU_ISA=AVX2" in describe(info)


def test_micro_before_case_uses_torch_kernels_and_restores_them() -> None:
    import pytest
    import torch.nn.functional as F
    from torch import nn

    import facediff.models.layers as layers
    from benchmarks.micro import torch_kernels_step
    from facediff.models.group_norm import GroupNorm

    seen = []

    def step() -> None:
        seen.append((layers.attention, GroupNorm.forward))
        raise RuntimeError("step failed")

    fast = (layers.attention, GroupNorm.forward)
    with pytest.raises(RuntimeError, match="step failed"):
        torch_kernels_step(step)()
    assert seen == [(F.scaled_dot_product_attention, nn.GroupNorm.forward)]
    assert (layers.attention, GroupNorm.forward) == fast


def test_micro_dropout_before_case_uses_nn_dropout_and_restores_it() -> None:
    import pytest
    from torch import nn

    import facediff.models.layers as layers
    from benchmarks.micro import torch_dropout_step

    seen = []

    def step() -> None:
        seen.append(layers.Dropout.forward)
        raise RuntimeError("step failed")

    fast = layers.Dropout.forward
    with pytest.raises(RuntimeError, match="step failed"):
        torch_dropout_step(step)()
    assert seen == [nn.Dropout.forward]
    assert layers.Dropout.forward is fast


def test_micro_groupnorm_before_case_uses_the_fp32_path_and_restores_it() -> None:
    import pytest

    from benchmarks.micro import fp32_group_norm_forward, fp32_norm_step
    from facediff.models.group_norm import GroupNorm

    seen = []

    def step() -> None:
        seen.append(GroupNorm.forward)
        raise RuntimeError("step failed")

    fast = GroupNorm.forward
    with pytest.raises(RuntimeError, match="step failed"):
        fp32_norm_step(step)()
    assert seen == [fp32_group_norm_forward]
    assert GroupNorm.forward is fast


def test_micro_sampling_cases_lay_out_the_input_as_named_and_restore_the_rule(monkeypatch) -> None:
    import torch

    import facediff.diffusion.sampling as sampling
    from benchmarks.micro import sampling_case

    layouts = []
    real_sample = sampling.sample

    def spy(net, *args, **kwargs):
        layouts.append(sampling.network_layout(net, "bf16", torch.device("cpu")))
        return real_sample(net, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample", spy)
    rule = sampling.network_layout
    for channels_last in (False, True):
        sampling_case("unet_tiny", 16, 2, channels_last)()
    assert layouts == [torch.contiguous_format, torch.channels_last]
    assert sampling.network_layout is rule


def test_paired_ratios_pair_each_round() -> None:
    """Round by round (the same round of both cases), not sorted lists or medians."""
    import statistics

    from benchmarks.bench import paired_ratios, ratios

    def case(seconds: list[float]) -> dict[str, object]:
        rates = [16 / s for s in seconds]
        stat = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
        return {"step_seconds": seconds, "img_per_s": stat}

    train = {
        "unet_attn/bf16": case([1.0, 2.0, 1.0, 1.0]),
        "diffusers_unet2d/bf16": case([1.5, 2.0, 1.2, 3.0]),
    }
    paired = paired_ratios(train, ["bf16"])["unet_attn/diffusers_unet2d bf16"]
    assert (paired["median"], paired["min"], paired["max"]) == pytest.approx((1.35, 1.0, 3.0))
    overall = ratios(train, ["bf16"])["unet_attn/diffusers_unet2d bf16"]
    assert overall == pytest.approx(16 / (16 / 1.5 + 8) * 2)  # median over median: 1.71


def test_ratios_take_each_networks_faster_layout() -> None:
    from benchmarks.bench import ratios

    def case(rate: float) -> dict[str, object]:
        return {"step_seconds": [16 / rate], "img_per_s": {"median": rate}}

    train = {
        "unet_attn/bf16": case(10.0),
        "unet_attn/bf16/cl": case(12.0),  # faster: taken
        "diffusers_unet2d/bf16": case(8.0),
        "diffusers_unet2d/bf16/cl": case(6.0),  # slower: the contiguous case is taken
        "original/bf16": {"error": "failed"},  # no rate: no ratio
    }
    assert ratios(train, ["bf16"]) == {"unet_attn/cl/diffusers_unet2d bf16": pytest.approx(1.5)}
