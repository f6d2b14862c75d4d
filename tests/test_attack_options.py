"""SDOAttack's options, each checked by an effect an ignored option would not have: loss and
kappa, latent bound, Picard tol and hold, prompts, half-precision generators, DPM-Solver++,
the gradient= alias, the callback, repr and estimator checks at construction."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdo_adv import load_classifier
from sdo_adv.attacks import SDOAttack
from sdo_adv.estimators import parse_estimator
from tiny import (TinyClassifier, cw_margin, latent_text_generator, pixel_generator,
                  recorded_network_calls, tiny_sdo_attack, tiny_models, batch, unfooled_batch, NoSampling)

models = pytest.fixture(name="models")(tiny_models)


# ---- loss and kappa -------------------------------------------------------------------------
@pytest.mark.parametrize("loss,kappa", [("ce", 0.0), ("cw", 0.0), ("cw", 0.05)])
def test_reported_objective_is_the_chosen_loss_plus_fidelity(models, loss, kappa):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    steps = []
    # a constant fidelity weight (no halflife): the objective is loss + 7.0 * mse at every iteration
    tiny_sdo_attack(model, gen, steps=3, lr=0.1, loss=loss, kappa=kappa, fidelity=7.0, fidelity_halflife=None,
                early_stop=False, callback=steps.append)(images, labels)
    for s in steps[:-1]:
        with torch.no_grad():
            logits = model(s.images)
        y = labels[s.active]
        term = -F.cross_entropy(logits, y, reduction="none") if loss == "ce" else cw_margin(logits, y).clamp(min=-kappa)
        mse = (s.images - images[s.active]).flatten(1).pow(2).mean(1)
        assert torch.allclose(s.loss, term + 7.0 * mse, atol=1e-5)
    if kappa:  # the clamp binds on some sample (else this case would test nothing more)
        assert any(bool((cw_margin(model(s.images), labels[s.active]) < -kappa).any()) for s in steps[:-1])


def test_fidelity_halves_over_its_halflife(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    steps = []
    SDOAttack(model, gen, steps=4, lr=0.1, fidelity=8.0, fidelity_norm="l2", fidelity_halflife=2, early_stop=False,
              callback=steps.append)(images, labels)
    for s in steps[:-1]:
        with torch.no_grad():
            margin = cw_margin(model(s.images), labels[s.active]).clamp(min=0.0)
        mse = (s.images - images[s.active]).flatten(1).pow(2).mean(1)
        assert torch.allclose(s.loss, margin + 8.0 * 0.5 ** (s.iteration / 2) * mse, atol=1e-5)
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="fidelity_halflife"):
            SDOAttack(model, gen, fidelity_halflife=bad)


def test_l1_fidelity_is_the_mean_absolute_pixel_error(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    steps = []
    SDOAttack(model, gen, steps=3, lr=0.1, fidelity=8.0, fidelity_halflife=None, fidelity_norm="l1", early_stop=False,
              callback=steps.append)(images, labels)
    checked = [s for s in steps if s.loss is not None]  # the last iteration of a pass takes no step
    assert len(checked) >= 3
    for s in checked:
        with torch.no_grad():
            margin = cw_margin(model(s.images), labels[s.active]).clamp(min=0.0)
        error = (s.images - images[s.active]).flatten(1).abs().mean(1)
        assert torch.allclose(s.loss, margin + 8.0 * error, atol=1e-5)
    with pytest.raises(ValueError, match="fidelity_norm 'l3'"):
        SDOAttack(model, gen, fidelity_norm="l3")


def test_ce_loss_attack_flips_predictions(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    atk = SDOAttack(model, gen, steps=10, lr=0.3, loss="ce", fidelity=0.0)
    atk(images, labels)
    r = atk.last_result
    assert r.history[0] < 0.5 and r.success.float().mean() > r.history[0] + 0.25


def test_kappa_keeps_pushing_the_margin_without_early_stop(models):
    """After a success the cw loss is flat at kappa = 0, while kappa > 0 keeps lowering the
    margin down to -kappa."""
    model, gen = models
    images, labels = unfooled_batch(model, 8)

    def last_margins(kappa):
        steps = []
        SDOAttack(model, gen, steps=8, lr=0.2, kappa=kappa, fidelity=0.0, early_stop=False,
                  callback=steps.append)(images, labels)
        with torch.no_grad():
            return cw_margin(model(steps[-1].images), labels)

    flat, pushed = last_margins(0.0), last_margins(0.5)
    assert pushed.mean() < flat.mean() - 0.05


@pytest.mark.parametrize("early_stop", [True, False])
def test_kappa_margin_holds_for_the_returned_images(models, early_stop):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    kappa = 0.2
    atk = SDOAttack(model, gen, steps=8, lr=0.2, kappa=kappa, fidelity=0.0, early_stop=early_stop)
    adv = atk(images, labels)
    ok = atk.last_result.success
    assert ok.sum() >= 4
    with torch.no_grad():
        assert (cw_margin(model(adv[ok]), labels[ok]) <= -kappa + 1e-4).all()


# ---- latent bound ---------------------------------------------------------------------------
def test_latent_bound_limits_the_latent_and_the_conditioning(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    inverted = gen.invert(images, 0.5, cond=gen.condition(labels)).latent
    table = gen.unet.class_embedding.weight.detach()

    def change(bound):
        with recorded_network_calls(gen) as calls:
            atk = tiny_sdo_attack(model, gen, steps=4, lr=0.3, latent_bound=bound, optimize="both", early_stop=False)
            atk(images, labels)
        # early_stop=False: every call after the inversion's holds the whole batch in order
        cond = max((c["embeds"] - table[labels]).abs().max().item() for c in calls)
        return (atk.last_result.latent - inverted).abs().max().item(), cond

    bound = 0.05
    free_latent, free_cond = change(None)
    assert free_latent > 2 * bound and free_cond > 2 * bound  # so the bound below has work to do
    latent, cond = change(bound)
    assert bound - 1e-6 <= latent <= bound + 1e-6
    assert bound - 1e-6 <= cond <= bound + 1e-6


# ---- Picard: tol and hold -------------------------------------------------------------------
def test_picard_tol_stops_the_sweeps(models):
    model, _ = models
    gen = pixel_generator(steps=8)  # 4 sampled steps from depth 0.5
    images, labels = unfooled_batch(model, 4)

    def calls(tol):
        steps = []
        tiny_sdo_attack(model, gen, steps=2, lr=0.1, sampler="picard", sweeps=3, tol=tol,
                    callback=steps.append)(images, labels)
        return [s.network_calls for s in steps]

    # each sweep is one batched call, then SDO's retained call
    assert calls(None) == [3 + 1] * 3
    assert calls(1e9) == [1 + 1] * 3


def test_picard_hold_reaches_the_sampler(models):
    model, _ = models
    gen = pixel_generator(steps=8)
    images, labels = unfooled_batch(model, 4)

    def second_iteration(hold):
        steps = []
        SDOAttack(model, gen, steps=2, lr=0.05, sampler="picard", sweeps=1, hold=hold, early_stop=False,
                  callback=steps.append)(images, labels)
        return steps[1].images

    # one sweep from the first iteration's trajectory: the two holds rebuild different states
    # (except for samples whose success was checked by an exact pass)
    assert (second_iteration("output") - second_iteration("clean")).abs().amax() > 1e-3
    with pytest.raises(ValueError, match="unknown hold"):
        SDOAttack(model, gen, sampler="picard", hold="noise")


# ---- prompts --------------------------------------------------------------------------------
@pytest.fixture()
def text_setup(tmp_path):
    torch.manual_seed(0)
    gen = latent_text_generator(tmp_path)
    model = load_classifier(TinyClassifier(channels=3, size=16), input_size=(3, 16, 16))
    images, labels = batch(2, channels=3, size=16)
    return gen, model, images, labels


def conditioning_used(gen, model, images, labels, prompts):
    with recorded_network_calls(gen) as calls:
        SDOAttack(model, gen, steps=1, prompts=prompts, early_stop=False)(images, labels)
    return [c["embeds"] for c in calls]


@pytest.mark.parametrize("form", ["list", "callable"])
def test_prompts_condition_the_generator(text_setup, form):
    gen, model, images, labels = text_setup
    given = ["a red boat", "a small cat"]
    seen = []

    def prompts(y):
        seen.append(y.clone())
        return given

    used = conditioning_used(gen, model, images, labels, given if form == "list" else prompts)
    if form == "callable":
        assert len(seen) == 1 and torch.equal(seen[0], labels)
    expected = gen.condition(prompts=given).embeds
    default = gen.condition(labels).embeds  # from class_names
    assert not torch.allclose(expected, default)
    assert used and all(torch.equal(e, expected) for e in used)


@pytest.mark.parametrize("form", ["list", "callable"])
def test_wrong_number_of_prompts_fails_before_sampling(text_setup, form):
    gen, model, images, labels = text_setup
    NoSampling(gen)
    prompts = ["a boat"] if form == "list" else (lambda y: ["a boat"] * (len(y) + 1))
    with pytest.raises(ValueError, match=r"got \d prompts for 2 images"):
        SDOAttack(model, gen, steps=1, prompts=prompts)(images, labels)


# ---- precision and solvers ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float64])
def test_half_precision_generator(models, dtype, input_dtype):
    model, _ = models  # a float32 classifier: the attack runs it in float32 for a half generator
    gen = pixel_generator(steps=4, dtype=dtype)
    images, _ = batch(4)
    with torch.no_grad():
        labels = model(images).argmax(1)
    images = images.to(input_dtype)
    atk = SDOAttack(model, gen, steps=3, lr=0.2, depth=0.5)
    adv = atk(images, labels)
    r = atk.last_result
    assert adv.dtype == input_dtype and torch.isfinite(adv).all() and 0 <= adv.min() and adv.max() <= 1
    inverted = gen.invert(images.float(), 0.5, cond=gen.condition(labels)).latent
    moved = (r.latent.float() - inverted.float()).flatten(1).abs().amax(1) > 0
    assert moved.any() and torch.equal(moved, r.iterations != 0)  # the latent got finite gradients
    assert all(f is None for f in r.failure)
    with torch.no_grad():
        exact = gen.sample(r.latent.float(), cond=gen.condition(labels), estimator="skip", start=r.start)
    assert torch.allclose(adv.float(), exact, atol=1e-2)


def test_dpm_solver_attack(models):
    model, _ = models
    gen = pixel_generator(steps=4, solver="dpm++")
    images, labels = unfooled_batch(model, 8)
    steps = []
    atk = SDOAttack(model, gen, steps=10, depth=0.3, lr=0.3, fidelity=0.0, callback=steps.append)
    adv = atk(images, labels)
    r = atk.last_result
    assert r.history[0] < 0.5 and r.success.float().mean() > r.history[0] + 0.25
    assert steps[0].network_calls == gen.num_inference_steps - r.start
    with torch.no_grad():  # the returned images are DPM-Solver++ samples of the returned latents
        exact = gen.sample(r.latent, cond=gen.condition(labels), estimator="skip", start=r.start)
    assert torch.allclose(adv, exact, atol=1e-5)
    with torch.no_grad():  # and not DDIM samples
        ddim = pixel_generator(steps=4, solver="ddim")
        ddim.load_state_dict(gen.state_dict())
        other = ddim.sample(r.latent, cond=ddim.condition(labels), estimator="skip", start=r.start)
    assert not torch.allclose(adv, other, atol=1e-3)


# ---- construction: gradient= alias, repr, estimator index -----------------------------------
def test_gradient_alias_equals_estimator(models):
    model, gen = models
    images, labels = unfooled_batch(model, 4)
    old = SDOAttack(model, gen, steps=2, lr=0.3, gradient="full")
    new = SDOAttack(model, gen, steps=2, lr=0.3, estimator="full")
    assert old.estimator == new.estimator == "full"
    assert torch.equal(old(images, labels), new(images, labels))
    assert torch.equal(old.last_result.latent, new.last_result.latent)
    assert SDOAttack(model, gen, estimator="sdo:last", gradient="sdo:last").estimator == "sdo:last"
    with pytest.raises(ValueError, match="disagree"):
        SDOAttack(model, gen, estimator="skip", gradient="full")


def test_repr_is_one_line(models):
    model, gen = models
    text = repr(SDOAttack(model, gen, steps=3, estimator="sdo:last", sampler="picard"))
    assert "\n" not in text and text.startswith("SDOAttack(") and text.endswith(")")
    assert "estimator=sdo:last" in text and "steps=3" in text and "sampler=picard" in text


@pytest.mark.parametrize("estimator,depth,ok", [("sdo:1", 0.5, True), ("sdo:-2", 0.5, True), ("sdo:2", 0.5, False),
                                                ("sdo:-3", 0.5, False), ("sdo:3", 1.0, True), ("sdo:4", 1.0, False),
                                                ("sdo:3", 2, False)])
def test_sdo_index_is_checked_against_the_sampled_steps_at_construction(models, estimator, depth, ok):
    model, gen = models  # 4 steps: depth 0.5 samples 2 of them, 1.0 all 4, index 2 the last 2
    NoSampling(gen)
    if ok:
        SDOAttack(model, gen, estimator=estimator, depth=depth)
    else:
        with pytest.raises(ValueError, match="outside"):
            SDOAttack(model, gen, estimator=estimator, depth=depth)


@pytest.mark.parametrize("estimator,depth,optimize,expected", [
    ("auto", (0.5, 1.0), "latent", ["skip", "sdo:first"]),
    ("auto", 0.5, "latent", ["sdo:first"]),
    ("auto", (0.5, 1.0), "both", ["sdo:first", "sdo:first"]),
    ("auto", (0.25, 0.5, 1.0), "latent", ["skip", "sdo:first", "sdo:first"]),
    ("skip,full", (0.25, 0.5, 1.0), "latent", ["skip", "full", "full"]),
    (["full", "sdo:last"], (0.5, 1.0), "latent", ["full", "sdo:last"]),
    ("sdo:last", (0.5, 1.0), "latent", ["sdo:last", "sdo:last"])])
def test_each_depth_runs_its_estimator(models, monkeypatch, estimator, depth, optimize, expected):
    """The estimators the sampler is given while gradients are on, depth by depth (a spy on the
    generator's ``sample``; a margin no image reaches, so that every one goes on to the deepest)."""
    model, gen = models
    images, labels = unfooled_batch(model, 2)
    used, sample = {}, gen.sample

    def spy(latent, **kw):
        if torch.is_grad_enabled():
            used.setdefault(kw["start"], set()).add(parse_estimator(kw["estimator"]).name)
        return sample(latent, **kw)

    monkeypatch.setattr(gen, "sample", spy)
    attack = SDOAttack(model, gen, steps=2, kappa=1e9, depth=depth, estimator=estimator, optimize=optimize)
    assert [e.name for e in attack.estimators] == expected
    attack(images, labels)
    assert [used[start] for start in sorted(used, reverse=True)] == [{name} for name in expected]


def test_merged_depths_keep_the_first_ones_rate_and_estimator(models):
    """Depths that start at the same step are one; rates and estimators follow the depths as given."""
    model, gen = models  # 4 steps: depths 0.25 and 0.3 both sample 1 of them
    attack = SDOAttack(model, gen, depth=(0.25, 0.3, 1.0), lr=(0.1, 0.2, 0.3), estimator="skip,sdo:last,full")
    assert attack.depths == (0.25, 1.0) and attack.lrs == (0.1, 0.3)
    assert [e.name for e in attack.estimators] == ["skip", "full"]
    assert [e.name for e in SDOAttack(model, gen, depth=(0.25, 0.3)).estimators] == ["sdo:first"]  # auto, one depth
    attack.estimator = "sdo:last"  # setting the attribute re-plans
    assert [e.name for e in attack.estimators] == ["sdo:last", "sdo:last"] and attack.estimator == "sdo:last"


@pytest.mark.parametrize("estimator,match", [("auto,sdo", "one per depth"), ("sdo,bptt", "unknown gradient estimator"),
                                             ([], "one per depth"), ("skip", "no gradient")])
def test_bad_estimator_lists_are_refused(models, estimator, match):
    model, gen = models
    with pytest.raises(ValueError, match=match):
        SDOAttack(model, gen, estimator=estimator, optimize="cond" if estimator == "skip" else "latent")


# ---- callback -------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_callback_reports_every_iteration_and_the_network_work(guidance):
    torch.manual_seed(0)
    model = load_classifier(TinyClassifier(), input_size=(1, 8, 8))
    gen = pixel_generator(steps=6, guidance_scale=guidance)
    images, labels = unfooled_batch(model, 6)
    steps = []
    atk = tiny_sdo_attack(model, gen, steps=4, lr=0.3, fidelity=0.0, callback=steps.append)
    atk(images, labels)
    r = atk.last_result
    all_done = [k for k, h in enumerate(r.history) if h == 1.0]
    expected = all_done[0] + 1 if all_done and all_done[0] < atk.steps else atk.steps + 1
    assert 1 <= len(steps) == expected <= atk.steps + 1
    assert [s.iteration for s in steps] == list(range(len(steps)))
    per_image = 2 if guidance != 1.0 else 1
    for s in steps:
        assert s.network_calls == gen.num_inference_steps - r.start == 3
        assert s.network_images == s.network_calls * per_image * len(s.active)
        assert s.images.shape == (len(s.active), 1, 8, 8)
        assert (s.loss is None) == (s.iteration == atk.steps)
        assert s.loss is None or s.loss.shape == (len(s.active),)
    assert torch.equal(steps[-1].success, r.success)
    assert [s.seconds for s in steps] == sorted(s.seconds for s in steps)


def test_callback_stops_when_every_sample_succeeded(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    calls = []
    atk = SDOAttack(model, gen, steps=5, lr=0.3, fidelity=0.0, callback=calls.append)
    atk(images, labels)
    done_at = next(k for k, s in enumerate(calls) if s.success.all())
    assert done_at < 5 and len(calls) == done_at + 1


# ---- per-sample adaptive depth --------------------------------------------------------------
def test_adaptive_depth_retries_only_the_failures_deeper(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    shallow = tiny_sdo_attack(model, gen, steps=3, depth=0.25, lr=0.05, estimator="sdo")
    adv_shallow = shallow(images, labels)
    steps = []
    adaptive = tiny_sdo_attack(model, gen, steps=3, depth=(0.25, 1.0), lr=0.05, callback=steps.append, estimator="sdo")
    adv = adaptive(images, labels)
    first, r = shallow.last_result.success, adaptive.last_result
    assert 0 < first.sum() < 8 and r.success.sum() > first.sum()  # the second depth found more
    assert torch.equal(adv[first], adv_shallow[first]) and (r.start[first] == gen.start_index(0.25)).all()
    second = r.success & ~first
    assert (r.start[second] == 0).all() and (r.iterations[second] >= 4).all()
    assert {int(i) for s in steps[4:] for i in s.active} <= set((~first).nonzero().squeeze(1).tolist())
    assert [s.network_calls for s in steps] == [1] * 4 + [gen.num_inference_steps] * (len(steps) - 4)
    cond = gen.condition(labels)
    for i in r.success.nonzero().squeeze(1).tolist():  # the recorded latent and start give the image back
        again = gen.sample(r.latent[i:i + 1], cond=cond.select(torch.tensor([i])), estimator="skip",
                           start=int(r.start[i]))
        assert torch.allclose(gen.from_generator(again, 1, (8, 8)), adv[i:i + 1], atol=1e-5)


def test_each_depth_has_its_own_learning_rate(models):
    model, gen = models
    images, labels = unfooled_batch(model, 8)
    per_depth = tiny_sdo_attack(model, gen, steps=3, depth=(0.25, 1.0), lr=(0.05, 0.3), estimator="sdo")
    adv = per_depth(images, labels)
    first = tiny_sdo_attack(model, gen, steps=3, depth=0.25, lr=0.05, estimator="sdo")
    adv_first = first(images, labels)
    fooled = first.last_result.success
    assert 0 < fooled.sum() < 8 and torch.equal(adv[fooled], adv_first[fooled])
    rest = (~fooled).nonzero().squeeze(1)  # the second pass restarts them from their images at depth 1.0, rate 0.3
    deep = tiny_sdo_attack(model, gen, steps=3, depth=1.0, lr=0.3)
    adv_deep = deep(images[rest], labels[rest])
    assert torch.allclose(adv[rest], adv_deep, atol=1e-5)
    assert torch.equal(per_depth.last_result.success[rest], deep.last_result.success)
    slow = tiny_sdo_attack(model, gen, steps=3, depth=1.0, lr=0.01)(images[rest], labels[rest])
    assert not torch.allclose(adv_deep, slow, atol=1e-3)  # the rate matters at this depth


@pytest.mark.parametrize("lr,depth,rates", [(0.1, (0.25, 1.0), (0.1, 0.1)), ((0.01,), (0.25, 1.0), (0.01, 0.01)),
                                             ((0.01, 0.02, 0.03), (0.25, 1.0), (0.01, 0.02)),
                                             ((0.01, 0.02), 0.5, (0.01,)), ((0.01, 0.02), (0.25, 0.5, 1.0), (0.01, 0.02, 0.02))])
def test_learning_rates_are_taken_per_depth_in_turn(models, lr, depth, rates):
    model, gen = models
    assert SDOAttack(model, gen, depth=depth, lr=lr).lrs == rates


@pytest.mark.parametrize("lr", [(), (0.05, 0.0), (0.05, float("inf")), -0.1, (0.05, float("nan")), True, "0.05",
                                (0.05, None), np.array([0.05, -1.0])])
def test_learning_rates_must_be_positive_numbers(models, lr):
    model, gen = models
    with pytest.raises(ValueError, match="lr must be a number > 0 or a sequence of them"):
        SDOAttack(model, gen, depth=(0.25, 1.0), lr=lr)


@pytest.mark.parametrize("lr,stored", [(np.float32(0.25), 0.25), ([0.05], 0.05), (np.array([0.01, 0.02]), (0.01, 0.02)),
                                       (torch.tensor([0.5, 0.25]), (0.5, 0.25))])
def test_learning_rates_are_stored_as_floats(models, lr, stored):
    model, gen = models
    attack = SDOAttack(model, gen, depth=(0.25, 1.0), lr=lr)
    assert attack.lr == stored and all(type(r) is float for r in attack.lrs)
    assert f"lr={stored}" in repr(attack)


@pytest.mark.parametrize("setting,value,message", [
    ("latent_bound", 0.0, "latent_bound must be a finite number > 0 or None"), ("latent_bound", -0.5, "latent_bound"),
    ("latent_bound", float("nan"), "latent_bound"), ("kappa", -50.0, "kappa must be a finite number >= 0"),
    ("kappa", float("nan"), "kappa"), ("fidelity", -1.0, "fidelity must be a finite number >= 0"),
    ("fidelity", float("nan"), "fidelity"), ("fidelity_halflife", float("inf"), "fidelity_halflife"),
    ("guard_weight", -1.0, "guard_weight"), ("guard_kappa", float("nan"), "guard_kappa must be a finite number, got nan"),
    ("tol", -1.0, "tol must be a finite number > 0 or None"), ("steps", 2.7, "steps must be an integer >= 1"),
    ("steps", True, "steps"), ("sweeps", 0, "sweeps"), ("early_stop", "no", "early_stop must be True or False"),
    ("hold", "bogus", "unknown hold"), ("kappa", "1", "kappa")])
def test_settings_out_of_range_are_refused_naming_them(models, setting, value, message):
    model, gen = models
    with pytest.raises(ValueError, match=message):
        SDOAttack(model, gen, **{setting: value})


def test_numpy_settings_are_accepted(models):
    model, gen = models
    attack = SDOAttack(model, gen, steps=np.int64(3), kappa=np.float32(0.5), latent_bound=np.float64(0.2))
    assert (attack.steps, attack.kappa, attack.latent_bound) == (3, 0.5, pytest.approx(0.2))


@pytest.mark.parametrize("depth", [(0.5, 0.25), (0.5, 0.5), (), (1, 2)])
def test_depths_must_increase(models, depth):
    model, gen = models
    with pytest.raises(ValueError, match="increasing depths"):
        SDOAttack(model, gen, depth=depth)


def test_depths_on_the_same_step_are_one(models):
    model, gen = models  # 4 sampling steps: 0.3 and 0.35 both start one step from the end
    attack = SDOAttack(model, gen, depth=(0.3, 0.35, 1.0), lr=(0.01, 0.02, 0.03))
    assert attack.depths == (0.3, 1.0) and attack.lrs == (0.01, 0.03)
