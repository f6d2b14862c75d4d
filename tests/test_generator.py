"""DiffusionGenerator: schedule indexing, inversion algebra, conditioning."""
import pytest
import torch

from tiny import pixel_generator


def test_start_index():
    gen = pixel_generator(steps=10)
    assert gen.start_index(1.0) == 0 and gen.start_index(0.5) == 5 and gen.start_index(0.01) == 9
    assert gen.start_index(3) == 3
    for bad in (0.0, 1.5, -1, 10):
        with pytest.raises(ValueError):
            gen.start_index(bad)
    with pytest.raises(TypeError):
        gen.start_index("half")


@pytest.mark.parametrize("depth", [1.0, 0.5, 2])
def test_inversion_is_exact_when_the_output_does_not_depend_on_the_sample(depth, monkeypatch):
    """DDIM inversion approximates output(x_i, t_i) by output(x_{i+1}, t_i); with an output that
    depends on t only, the approximation is exact and sampling must return the input."""
    gen = pixel_generator(steps=6, dtype=torch.float64)
    monkeypatch.setattr(gen, "denoise", lambda x, t, cond: torch.full_like(x, 0.3) * torch.cos(t / 500.0))
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 0.8 + 0.1
    inv = gen.invert(images, depth)
    assert inv.start == gen.start_index(depth)
    assert torch.allclose(inv.reconstruction, images, rtol=0, atol=1e-6)
    assert inv.error.max() < 1e-14  # the scheduler rounds its coefficients to float32
    assert not torch.allclose(inv.latent, gen.encode(images))


def test_inversion_of_latent_input_and_reconstruction_consistency():
    gen = pixel_generator(steps=4)
    cond = gen.condition(torch.tensor([1, 2]))
    x = torch.rand(2, 1, 8, 8)
    inv = gen.invert(gen.encode(x), 0.5, cond=cond, is_latent=True)
    again = gen.sample(inv.latent, cond=cond, start=inv.start, estimator="skip")
    assert torch.allclose(again, inv.reconstruction, atol=1e-6)
    assert torch.allclose(inv.error, (again - x).flatten(1).pow(2).mean(1), atol=1e-6)


def test_guidance_uses_the_null_class():
    gen = pixel_generator(steps=3, guidance_scale=3.0)
    cond = gen.condition(torch.tensor([0]))
    assert torch.equal(cond.null[0], gen.unet.class_embedding.weight[gen.null_class])
    x, t = torch.randn(1, 1, 8, 8), gen.timesteps()[0]
    out = gen.denoise(x, t, cond)
    plain = pixel_generator(steps=3, guidance_scale=1.0)
    plain.load_state_dict(gen.state_dict())
    c = plain.condition(torch.tensor([0]))
    u = plain.condition(torch.tensor([gen.null_class]))
    expected = plain.denoise(x, t, u) + 3.0 * (plain.denoise(x, t, c) - plain.denoise(x, t, u))
    assert torch.allclose(out, expected, atol=1e-5)


def test_conditioning_errors():
    gen = pixel_generator(steps=2)
    with pytest.raises(ValueError, match="class labels"):
        gen.condition()
    with pytest.raises(ValueError, match="unknown solver"):
        pixel_generator(solver="euler")
