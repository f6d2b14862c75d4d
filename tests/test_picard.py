"""Picard sampling: exact at convergence, warm starts, windows, and SDO's graph."""
import pytest
import torch

from sdo_adv.picard import PicardSampler, Trajectory
from sdo_adv import DiffusionGenerator
from tiny import ddpm_scheduler, pixel_generator, tiny_unet

T = 6


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return pixel_generator(steps=T, guidance_scale=2.0, dtype=torch.float64)


def sequential(gen, x, cond, start):
    with torch.no_grad():
        return gen.sample(x, cond=cond, estimator="skip", start=start, return_latent=True)


@pytest.mark.parametrize("hold", ["output", "clean"])
@pytest.mark.parametrize("start", [0, 2])
@pytest.mark.parametrize("max_batch", [None, 4])
def test_n_sweeps_from_a_cold_start_equal_sequential_sampling(gen, start, max_batch, hold):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([1, 3]))
    picard = PicardSampler(gen, sweeps=T - start, max_batch=max_batch, hold=hold)
    cold = Trajectory.constant(x, T - start, start)
    images, traj = picard.sample(x, cond=cond, start=start, estimator="skip", trajectory=cold)
    ref_images, ref_out = sequential(gen, x, cond, start)
    assert traj.sweeps == T - start
    assert torch.equal(traj.states[-1], ref_out)
    assert torch.equal(images, ref_images)


def test_without_a_trajectory_the_exact_one_is_computed(gen):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([1, 2]))
    images, traj = PicardSampler(gen, sweeps=1).sample(x, cond=cond, start=1, estimator="sdo")
    ref_images, ref_out = sequential(gen, x, cond, 1)
    assert torch.allclose(traj.states[-1], ref_out, rtol=0, atol=1e-12)
    assert torch.allclose(images, ref_images, rtol=0, atol=1e-12)


@pytest.mark.parametrize("hold", ["output", "clean"])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_exact_for_every_prediction_type(prediction_type, hold):
    torch.manual_seed(1)
    other = DiffusionGenerator.from_diffusers(unet=tiny_unet(), scheduler=ddpm_scheduler(prediction_type=prediction_type),
                                     num_inference_steps=4, guidance_scale=1.5).to(torch.float64)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = other.condition(torch.tensor([0, 1]))
    _, traj = PicardSampler(other, sweeps=4, hold=hold).sample(x, cond=cond, estimator="skip",
                                                    trajectory=Trajectory.constant(x, 4, 0))
    _, ref = sequential(other, x, cond, 0)
    assert torch.equal(traj.states[-1], ref)


def test_fewer_sweeps_are_approximate_and_tolerance_stops_early(gen):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([0, 2]))
    cold = Trajectory.constant(x, T, 0)
    _, ref = sequential(gen, x, cond, 0)
    _, one = PicardSampler(gen, sweeps=1).sample(x, cond=cond, estimator="skip", trajectory=cold)
    assert one.sweeps == 1
    assert not torch.allclose(one.states[-1], ref, atol=1e-6)
    _, tolerant = PicardSampler(gen, sweeps=T, tol=1e9).sample(x, cond=cond, estimator="skip", trajectory=cold)
    assert tolerant.sweeps == 1


def test_warm_start_from_nearby_latent_beats_cold_start(gen):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([0, 2]))
    picard = PicardSampler(gen, sweeps=1)
    exact = picard.init_trajectory(x, 0, cond)
    moved = x + 0.01 * torch.randn_like(x)
    _, ref = sequential(gen, moved, cond, 0)
    _, warm = picard.sample(moved, cond=cond, estimator="skip", trajectory=exact)
    _, cold = picard.sample(moved, cond=cond, estimator="skip", trajectory=Trajectory.constant(moved, T, 0))
    warm_err = (warm.states[-1] - ref).norm() / ref.norm()
    cold_err = (cold.states[-1] - ref).norm() / ref.norm()
    assert warm_err < 0.1 * cold_err


def test_warm_started_sweeps_approach_the_exact_trajectory_on_the_embedded_model():
    """Holding the clean-image prediction fixed, each sweep brings the final state closer to
    the exact one, and one sweep is no worse than keeping the old trajectory (holding the
    noise prediction fixed fails both on this model)."""
    from sdo_adv import load_generator
    from sdo_adv.data import load_digits

    digits = load_generator("sdo-adv:digits")
    images, labels = load_digits(4)
    cond = digits.condition(labels)
    inverted = digits.invert(images, 0.5, cond=cond)
    picard = PicardSampler(digits, hold="clean")
    old = picard.init_trajectory(inverted.latent, inverted.start, cond)
    moved = inverted.latent + 0.1 * torch.randn(inverted.latent.shape, generator=torch.Generator().manual_seed(0))
    ref = picard.init_trajectory(moved, inverted.start, cond).states[-1]

    def error(states):
        return ((states[-1] - ref).norm() / ref.norm()).item()

    errors = [error(PicardSampler(digits, sweeps=k, hold="clean").refine(moved, old, cond).states) for k in (1, 2, 4, 8)]
    assert errors[0] <= 1.01 * error(old.states)
    assert all(b <= a * 1.001 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.2 * errors[0]


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
    cond = gen.condition(torch.tensor([0, 1]))
    PicardSampler(gen, sweeps=2).sample(x, cond=cond, estimator="sdo", trajectory=Trajectory.constant(x, T, 0))
    # a sweep over all T steps (x2 for guidance), one over the T - 1 not yet exact, then the
    # one retained call
    assert calls == [(2 * 2 * T, False), (2 * 2 * (T - 1), False), (2 * 2, True)]
    calls.clear()
    PicardSampler(gen, sweeps=2).sample(x, cond=cond, estimator="sdo")
    hook.remove()
    # no trajectory: the exact one, one step per call, then the retained call
    assert calls == [(2 * 2, False)] * T + [(2 * 2, True)]


def test_needs_ddim_and_a_known_hold(gen):
    with pytest.raises(ValueError, match="ddim"):
        PicardSampler(pixel_generator(steps=3, solver="dpm++"))
    with pytest.raises(ValueError, match="unknown hold"):
        PicardSampler(gen, hold="noise")


def test_tolerance_does_not_cut_the_exact_initial_trajectory(gen):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    cond = gen.condition(torch.tensor([1, 2]))
    traj = PicardSampler(gen, sweeps=1, tol=1e9).init_trajectory(x, 0, cond)
    assert torch.equal(traj.states[-1], sequential(gen, x, cond, 0)[1])
