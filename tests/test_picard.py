"""Picard sampling: exact at convergence, warm starts, windows, and SDO's graph."""
import pytest
import torch

from sdo_adv.picard import PicardSampler
from tiny import pixel_generator

T = 6


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return pixel_generator(steps=T, guidance_scale=2.0, dtype=torch.float64)


def sequential(gen, x, cond, start):
    with torch.no_grad():
        return gen.sample(x, cond=cond, estimator="skip", start=start, return_latent=True)


@pytest.mark.parametrize("start", [0, 2])
@pytest.mark.parametrize("max_batch", [None, 4])
def test_n_sweeps_equal_sequential_sampling(gen, start, max_batch):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([1, 3]))
    picard = PicardSampler(gen, sweeps=T - start, max_batch=max_batch)
    images, traj = picard.sample(x, cond=cond, start=start, estimator="skip")
    ref_images, ref_out = sequential(gen, x, cond, start)
    assert traj.sweeps == T - start
    assert torch.allclose(traj.states[-1], ref_out, rtol=0, atol=1e-12)
    assert torch.allclose(images, ref_images, rtol=0, atol=1e-12)


def test_fewer_sweeps_are_approximate_and_tolerance_stops_early(gen):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([0, 2]))
    _, ref = sequential(gen, x, cond, 0)
    _, one = PicardSampler(gen, sweeps=1).sample(x, cond=cond, estimator="skip")
    assert not torch.allclose(one.states[-1], ref, atol=1e-6)
    _, tolerant = PicardSampler(gen, sweeps=T, tol=1e9).sample(x, cond=cond, estimator="skip")
    assert tolerant.sweeps == 1


def test_warm_start_from_nearby_latent_beats_cold_start(gen):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([0, 2]))
    picard = PicardSampler(gen, sweeps=1)
    exact = PicardSampler(gen, sweeps=T).sample(x, cond=cond, estimator="skip")[1]
    moved = x + 0.01 * torch.randn_like(x)
    _, ref = sequential(gen, moved, cond, 0)
    _, warm = picard.sample(moved, cond=cond, estimator="skip", trajectory=exact)
    _, cold = picard.sample(moved, cond=cond, estimator="skip")
    warm_err = (warm.states[-1] - ref).norm() / ref.norm()
    cold_err = (cold.states[-1] - ref).norm() / ref.norm()
    assert warm_err < 0.1 * cold_err


@pytest.mark.parametrize("estimator", ["sdo", "full", "truncated:2"])
def test_gradients_at_convergence_equal_sequential(gen, estimator):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([1, 2]))
    w = torch.randn(2, 1, 8, 8, dtype=torch.float64)

    def grad(fn):
        z = x.clone().requires_grad_(True)
        (fn(z) * w).sum().backward()
        return z.grad

    picard = PicardSampler(gen, sweeps=T)
    g_picard = grad(lambda z: picard.sample(z, cond=cond, estimator=estimator)[0])
    g_seq = grad(lambda z: gen.sample(z, cond=cond, estimator=estimator))
    assert torch.allclose(g_picard, g_seq, rtol=1e-9, atol=1e-12)


def test_sdo_graph_holds_one_call_and_sweeps_batch_over_time(gen):
    calls = []
    hook = gen.unet.register_forward_hook(lambda m, i, o: calls.append((i[0].shape[0], o.sample.requires_grad)))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    PicardSampler(gen, sweeps=2).sample(x, cond=gen.condition(torch.tensor([0, 1])), estimator="sdo")
    hook.remove()
    # a sweep over all T steps (x2 for guidance), one over the T - 1 not yet exact, then the
    # one retained call
    assert calls == [(2 * 2 * T, False), (2 * 2 * (T - 1), False), (2 * 2, True)]


def test_needs_ddim():
    with pytest.raises(ValueError, match="ddim"):
        PicardSampler(pixel_generator(steps=3, sampler="dpm++"))
