"""Schedule math, the training objective and the samplers against closed forms."""

import itertools

import pytest
import torch
from torch import nn

from facediff.diffusion.objective import (
    Objective,
    build_diffusion,
    drop_labels,
    loss_weight,
    q_sample,
    split_prediction,
    v_target,
)
from facediff.diffusion.sampling import (
    ddim_step,
    ddpm_step,
    deterministic_start_problem,
    dpmpp_2m_step,
    guided_output,
    sample,
    spaced_timesteps,
)
from facediff.diffusion.schedule import NoiseSchedule, make_betas
from facediff.diffusion.settings import SamplingSettings


def settings(sampler: str, steps: int, guidance: float = 1.0, eta: float = 0.0) -> SamplingSettings:
    return SamplingSettings(
        sampler, steps, guidance, eta=eta, seed=0, spacing="trailing", precision="fp32"
    )


def test_linear_schedule_matches_the_original_and_keeps_signal_at_T():
    s = NoiseSchedule(500, schedule="linear")
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    # The original's defect: 8% of the image survives at the last step.
    assert s.terminal_signal() == pytest.approx(0.0797, abs=2e-3)


def test_cosine_default_ends_in_pure_noise():
    s = NoiseSchedule(500, schedule="cosine")
    assert s.terminal_signal() < 1e-3
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1])  # strictly decreasing
    assert s.alpha_bar[0] > 0.999


def test_zero_terminal_snr_rescale():
    betas = make_betas("linear", 500)
    rescaled = make_betas("linear", 500, zero_terminal_snr=True)
    ab, ab_r = torch.cumprod(1 - betas, 0), torch.cumprod(1 - rescaled, 0)
    assert ab_r[-1] == 0
    assert ab_r[0] == pytest.approx(ab[0].item())  # the first step is unchanged
    assert torch.all(rescaled <= 1) and torch.all(rescaled >= 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "quadratic"}, "Unknown diffusion.schedule"),
        ({"prediction": "x0"}, "Unknown diffusion.prediction"),
        ({"zero_terminal_snr": True}, "needs diffusion.prediction=v"),
        ({"num_steps": 1}, "num_steps must be >= 2"),
        ({"schedule": "linear", "beta_start": 0.1, "beta_end": 0.01}, "beta_start < beta_end"),
        ({"min_snr_gamma": -1.0}, "min_snr_gamma"),
    ],
)
def test_bad_schedule_configs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_diffusion(kwargs)


def test_q_sample_marginal_variance():
    ab = torch.tensor(0.3).reshape(1, 1, 1, 1)
    x_t = q_sample(torch.zeros(1, 3, 64, 64), torch.randn(1, 3, 64, 64), ab)
    assert x_t.var().item() == pytest.approx(0.7, rel=0.05)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_split_prediction_inverts_the_targets(prediction):
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    ab = torch.tensor([0.9, 0.5, 0.1, 0.01]).reshape(4, 1, 1, 1)
    x_t = q_sample(x0, eps, ab)
    out = eps if prediction == "eps" else v_target(x0, eps, ab)
    x0_hat, eps_hat = split_prediction(out, x_t, ab, prediction)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)


def test_min_snr_weights():
    ab = torch.tensor([0.5, 0.99]).reshape(2, 1, 1, 1)  # SNR 1 and 99
    assert loss_weight(ab, "eps", None).flatten().tolist() == [1.0, 1.0]
    w_eps = loss_weight(ab, "eps", 5.0).flatten()
    torch.testing.assert_close(w_eps, torch.tensor([1.0, 5.0 / 99.0]))
    w_v = loss_weight(ab, "v", 5.0).flatten()
    torch.testing.assert_close(w_v, torch.tensor([0.5, 5.0 / 100.0]))


def test_labels_are_dropped_per_sample_not_per_batch():
    gen = torch.Generator().manual_seed(0)
    y = torch.zeros(100, 10, dtype=torch.long)  # 100 batches of 10
    dropped = torch.stack([drop_labels(b, 0.1, null_id=3, generator=gen) for b in y]) == 3
    assert dropped.float().mean().item() == pytest.approx(0.1, abs=0.03)
    per_batch = dropped.sum(1)
    assert ((per_batch > 0) & (per_batch < 10)).any()  # partial batches: per-sample dropout
    assert torch.equal(drop_labels(y[0], 0.0, null_id=3), y[0])


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_spaced_timesteps(spacing):
    assert spaced_timesteps(500, 500, spacing) == list(range(499, -1, -1))
    assert spaced_timesteps(500, 1, spacing) == [499]
    ts = spaced_timesteps(500, 20, spacing)
    assert ts[0] == 499 and len(ts) == 20 and all(a > b for a, b in itertools.pairwise(ts))
    assert ts[-1] == (24 if spacing == "trailing" else 0)  # where the last step denoises from
    for bad in (0, 501):
        with pytest.raises(ValueError, match=r"steps must be in 1\.\.500"):
            spaced_timesteps(500, bad, spacing)
    with pytest.raises(ValueError, match="spacing"):
        spaced_timesteps(500, 20, "leading")


def test_ddpm_step_is_ho_et_al_eq11_on_consecutive_steps():
    s = NoiseSchedule(100, schedule="linear")
    t = 40
    ab_t, ab_s, beta, alpha = s.alpha_bar[t], s.alpha_bar[t - 1], s.betas[t], s.alphas[t]
    x_t, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    x0, _ = split_prediction(eps, x_t, ab_t, "eps")
    ours = ddpm_step(x_t, x0, ab_t, ab_s, torch.zeros_like(x_t))
    ho = (x_t - beta / (1 - ab_t).sqrt() * eps) / alpha.sqrt()
    torch.testing.assert_close(ours, ho, atol=1e-4, rtol=1e-4)
    # Variance: beta_tilde = (1 - ab_{t-1}) / (1 - ab_t) * beta_t; DDIM with eta = 1 matches it.
    noise = torch.ones_like(x_t)
    var = (ddpm_step(x_t, x0, ab_t, ab_s, noise) - ours).pow(2).mean()
    torch.testing.assert_close(var, (1 - ab_s) / (1 - ab_t) * beta, atol=1e-6, rtol=1e-4)
    ddim_mean = ddim_step(x0, eps, ab_t, ab_s, torch.zeros_like(x_t), eta=1.0)
    torch.testing.assert_close(ddim_mean, ours, atol=1e-4, rtol=1e-4)


class OracleNet(nn.Module):
    """Predicts exactly the output that denoises towards a known image `target` of class 1."""

    def __init__(self, schedule: NoiseSchedule, objective: Objective, target: torch.Tensor):
        super().__init__()
        self.schedule, self.objective, self.target = schedule, objective, target
        self.num_classes, self.calls = 2, []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        ab = self.schedule.alpha_bar[t].reshape(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * self.target) / (1 - ab).sqrt()
        if self.objective.prediction == "eps":
            return eps
        return v_target(self.target, eps, ab)


@pytest.mark.parametrize(
    "sampler, eta",
    [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpmpp", 0.0), ("dpmpp", 1.0), ("dpmpp", 0.5)],
)
@pytest.mark.parametrize(
    "diffusion",
    [{"schedule": "cosine"}, {"schedule": "linear", "prediction": "v", "zero_terminal_snr": True}],
)
def test_samplers_reach_the_oracle_image(sampler, eta, diffusion):
    s, objective = build_diffusion({"num_steps": 50, **diffusion})
    target = torch.rand(1, 3, 4, 4) * 1.6 - 0.8
    net = OracleNet(s, objective, target)
    out = sample(
        net,
        s,
        objective,
        torch.ones(3, dtype=torch.long),
        torch.randn(3, 3, 4, 4),
        settings(sampler, 10, eta=eta),
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out, target.expand(3, -1, -1, -1), atol=1e-3, rtol=1e-3)


def test_sampling_is_deterministic_for_a_seed():
    s = NoiseSchedule(50)
    net = OracleNet(s, Objective(), torch.zeros(1, 3, 4, 4))
    net.forward = lambda x, t, y: torch.sin(x)  # any smooth non-oracle map
    runs = [
        sample(
            net,
            s,
            Objective(),
            torch.zeros(2, dtype=torch.long),
            torch.ones(2, 3, 4, 4),
            settings("ddpm", 5),
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1])


class LinearNet(nn.Module):
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 1)
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        e = y @ self.emb.weight[: y.shape[1]] if y.is_floating_point() else self.emb(y)
        return x * 2 + e.reshape(-1, 1, 1, 1)


def test_guidance_batches_cond_and_uncond_and_equals_two_passes():
    net = LinearNet()
    x, t, y = torch.randn(4, 3, 2, 2), torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, 1])
    guided = guided_output(net, x, t, y, guidance=3.0, null_id=3)
    assert net.calls == [8]  # one forward pass of 2B
    cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))
    net.calls.clear()
    torch.testing.assert_close(guided_output(net, x, t, y, 1.0, null_id=3), cond)
    assert net.calls == [4]  # no unconditional pass at guidance 1


def test_guidance_with_class_weights_uses_the_null_row():
    net = LinearNet()
    x, t = torch.randn(2, 3, 2, 2), torch.zeros(2, dtype=torch.long)
    w = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    guided = guided_output(net, x, t, w, guidance=2.0, null_id=3)
    uncond = net(x, t, torch.full((2,), 3))
    cond = net(x, t, w)
    torch.testing.assert_close(guided, uncond + 2.0 * (cond - uncond))


def test_dpmpp_first_step_is_ddim_and_second_step_is_the_2m_formula():
    s = NoiseSchedule(100)
    x_t, x0, x0_prev = torch.randn(3, 2, 3, 4, 4).unbind(0)
    ab_t, ab_s = s.alpha_bar[60], s.alpha_bar[40]
    eps = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
    first, h = dpmpp_2m_step(x_t, x0, ab_t, ab_s, None, float("inf"))
    torch.testing.assert_close(first, ddim_step(x0, eps, ab_t, ab_s, torch.zeros_like(x0), 0.0))
    lam = lambda ab: 0.5 * torch.log(ab / (1 - ab))  # noqa: E731 - lambda = log(alpha / sigma)
    assert h == pytest.approx(float(lam(ab_s) - lam(ab_t)), rel=1e-5)
    h_prev = 0.7 * h
    second, _ = dpmpp_2m_step(x_t, x0, ab_t, ab_s, x0_prev, h_prev)
    r = h_prev / h
    D = (1 + 1 / (2 * r)) * x0 - x0_prev / (2 * r)
    expected = ((1 - ab_s) / (1 - ab_t)).sqrt() * x_t - ab_s.sqrt() * (
        torch.exp(torch.tensor(-h)) - 1
    ) * D
    torch.testing.assert_close(second, expected, atol=1e-5, rtol=1e-4)


def test_dpmpp_sde_first_step_is_ddpm_and_second_step_is_the_2m_sde_formula():
    s = NoiseSchedule(100)
    x_t, x0, x0_prev, z = torch.randn(4, 2, 3, 4, 4).unbind(0)
    ab_t, ab_s = s.alpha_bar[60], s.alpha_bar[40]
    first, _ = dpmpp_2m_step(x_t, x0, ab_t, ab_s, None, float("inf"), z, eta=1.0)
    torch.testing.assert_close(first, ddpm_step(x_t, x0, ab_t, ab_s, z), atol=1e-5, rtol=1e-4)
    # From pure noise (alpha_bar_T = 0) the SDE step is x0_hat's posterior sample, still finite.
    start, h = dpmpp_2m_step(x_t, x0, torch.tensor(0.0), ab_s, None, float("inf"), z, eta=1.0)
    assert h == float("inf") and torch.isfinite(start).all()
    torch.testing.assert_close(start, ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * z)
    # Second order at eta = 1: the 2M combination D in k-diffusion's dpmpp_2m_sde update.
    h_prev = 0.4
    second, h = dpmpp_2m_step(x_t, x0, ab_t, ab_s, x0_prev, h_prev, z, eta=1.0)
    r, e = h_prev / h, torch.exp(torch.tensor(-h))
    D = (1 + 1 / (2 * r)) * x0 - x0_prev / (2 * r)
    sig_t, sig_s = (1 - ab_t).sqrt(), (1 - ab_s).sqrt()
    noise = sig_s * (1 - e**2).sqrt() * z
    expected = sig_s / sig_t * e * x_t + ab_s.sqrt() * (1 - e**2) * D + noise
    torch.testing.assert_close(second, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="noise"):
        dpmpp_2m_step(x_t, x0, ab_t, ab_s, None, float("inf"), None, eta=1.0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_per_sample_generators_make_samples_independent_of_batching(sampler):
    s = NoiseSchedule(50)
    net = LinearNet()

    def run(indices):
        gens = [torch.Generator().manual_seed(100 + i) for i in indices]
        x_T = torch.stack([torch.randn(3, 4, 4, generator=g) for g in gens])
        y = torch.tensor([i % 3 for i in indices])
        return sample(net, s, Objective(), y, x_T, settings(sampler, 8, 2.0, 1.0), generator=gens)

    whole = run(range(6))
    parts = torch.cat([run(range(0, 2)), run(range(2, 5)), run(range(5, 6))])
    torch.testing.assert_close(whole, parts)


@pytest.mark.parametrize(
    "diffusion, sampler, eta, refused",
    [
        ({"prediction": "eps"}, "dpmpp", 0.0, True),
        ({"prediction": "eps"}, "ddim", 0.0, True),
        ({"prediction": "eps"}, "ddim", 1.0, False),
        ({"prediction": "eps"}, "dpmpp", 1.0, False),
        ({"prediction": "eps"}, "ddpm", 0.0, False),
        ({"prediction": "v"}, "dpmpp", 0.0, False),
        ({"prediction": "v"}, "ddim", 0.0, False),
        ({"schedule": "linear", "prediction": "eps"}, "dpmpp", 0.0, False),  # SNR 6e-3 at T-1
    ],
)
def test_deterministic_samplers_refuse_an_eps_model_at_zero_snr(diffusion, sampler, eta, refused):
    s, objective = build_diffusion({"num_steps": 500, **diffusion})
    problem = deterministic_start_problem(
        objective.prediction, sampler, eta, float(s.alpha_bar[-1])
    )
    assert (problem is not None) == refused
    if refused:
        assert "eta=1.0" in problem and "diffusion.prediction=v" in problem


def test_check_fits_refuses_before_sampling_what_cannot_work():
    from facediff.diffusion.sampling import check_fits
    from facediff.diffusion.settings import SamplingSettings

    s, eps_model = build_diffusion({"num_steps": 50, "prediction": "eps"})
    with pytest.raises(ValueError, match=r"diffusion\.prediction=v"):
        check_fits(SamplingSettings("dpmpp", 10, 2.0, 0.0, 0, "trailing", "fp32"), s, eps_model)
    with pytest.raises(ValueError, match="steps"):
        check_fits(SamplingSettings("ddpm", 51, 2.0, 0.0, 0, "trailing", "fp32"), s, eps_model)
    check_fits(SamplingSettings("ddpm", 50, 2.0, 0.0, 0, "trailing", "fp32"), s, eps_model)
    _, v_model = build_diffusion({"num_steps": 50, "prediction": "v"})
    check_fits(SamplingSettings("dpmpp", 10, 2.0, 0.0, 0, "trailing", "fp32"), s, v_model)
