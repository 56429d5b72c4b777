"""StyleGAN2 for SCRPS: network shapes and mechanics on a tiny non-square configuration, the training step, and
checkpoints (atomic writes, bit-exact resume)."""

import json
import math
import os

import matplotlib.image
import numpy as np
import pytest
import torch

from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.networks.stylegan2 import (CONFIGS, PAPER, REDUCED, TINY, Discriminator,
                                                          EqualLinear, Generator, ModulatedConv2d, StyleGAN2Config)
from training import stylegan_fit
from training.slice_set import SliceSet
from training.stylegan_fit import (CHECKPOINT, GANSettings, fit, load_checkpoint, make_trainer, rotate,
                                   save_checkpoint, train_step)

SETTINGS = GANSettings(batch_size=4, r1_every=2, seed=3)


@pytest.fixture(scope="module")
def ellipses() -> SliceSet:
    """24 'brains': ellipses of random size and brightness with a darker core, zero outside, 20 x 16."""
    rng = np.random.default_rng(0)
    y, x = np.meshgrid(np.linspace(-1, 1, 20), np.linspace(-1, 1, 16), indexing="ij")
    slices, masks = [], []
    for _ in range(24):
        a, b = rng.uniform(0.5, 0.9, 2)
        inside = (x / b) ** 2 + (y / a) ** 2 < 1
        core = (x / b) ** 2 + (y / a) ** 2 < 0.2
        slices.append((rng.uniform(0.4, 0.6) * inside - 0.2 * core).astype(np.float16))
        masks.append(inside)
    return SliceSet(np.stack(slices), np.stack(masks), [f"case{i // 4}" for i in range(24)], {"dataset": "toy"})


def state_tensors(trainer) -> dict[str, torch.Tensor]:
    """Every network weight, buffer and optimiser moment of a trainer, by name."""
    out = {}
    for name in ("G", "D", "G_ema"):
        out.update({f"{name}.{k}": v for k, v in getattr(trainer, name).state_dict().items()})
    for name in ("opt_G", "opt_D"):
        for index, state in getattr(trainer, name).state_dict()["state"].items():
            out.update({f"{name}.{index}.{k}": torch.as_tensor(v) for k, v in state.items()})
    return out


def test_configs_give_the_papers_code_count_and_start_size():
    assert (PAPER.size, PAPER.num_ws, PAPER.w_dim, PAPER.start_size) == ((160, 128), 12, 512, (5, 4))
    assert (REDUCED.size, REDUCED.num_ws, REDUCED.start_size) == ((80, 64), 10, (5, 4))
    assert PAPER.channels == (512, 512, 512, 512, 256, 128) and REDUCED.channels == (128, 128, 128, 64, 32)
    for config in CONFIGS.values():
        assert StyleGAN2Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="divisible"):
        StyleGAN2Config(size=(20, 18), levels=3)


def test_shapes_of_mapping_synthesis_and_discriminator():
    torch.manual_seed(0)
    G, D = Generator(TINY), Discriminator(TINY)
    z = torch.randn(4, TINY.z_dim)
    ws = G.mapping(z)
    assert ws.shape == (4, 6, TINY.w_dim)
    assert torch.equal(ws[:, 0], ws[:, 5])  # one w broadcast to every layer
    image = G.synthesis(ws)
    assert image.shape == (4, 1, 20, 16) and torch.isfinite(image).all()
    assert torch.allclose(G(z), image)
    assert D(image).shape == (4,)
    with pytest.raises(ValueError):
        G.synthesis(ws[:, :5])
    with pytest.raises(ValueError):
        D(torch.zeros(4, 1, 16, 20))


def test_truncation_and_mean_w():
    torch.manual_seed(0)
    G = Generator(TINY)
    G.mapping_network.w_avg.normal_()
    z = torch.randn(3, TINY.z_dim)
    assert torch.allclose(G.mapping(z, truncation_psi=0.0), G.mapping_network.w_avg.expand(3, 6, -1))
    half = G.mapping(z, truncation_psi=0.5)
    assert torch.allclose(half, (G.mapping(z) + G.mapping_network.w_avg) / 2, atol=1e-6)
    mean = G.mapping_network(torch.randn(500, TINY.z_dim, generator=torch.Generator().manual_seed(7))).mean(0)
    assert G.mean_w(500, seed=7).shape == (6, TINY.w_dim)
    assert torch.allclose(G.mean_w(500, seed=7), mean.expand(6, -1))
    assert not torch.allclose(G.mean_w(500, seed=8), G.mean_w(500, seed=7))


def test_equalised_learning_rate_and_the_mapping_multiplier():
    torch.manual_seed(0)
    x = torch.randn(256, 128)
    plain, slow = EqualLinear(128, 64), EqualLinear(128, 64, lr_mul=0.01)
    assert 0.9 < plain(x).std().item() < 1.1 and 0.9 < slow(x).std().item() < 1.1  # He-scaled at run time
    with torch.no_grad():
        slow.weight.copy_(plain.weight / 0.01)  # the same effective weights
    assert torch.allclose(plain(x), slow(x), atol=1e-5)
    plain(x).square().sum().backward()
    slow(x).square().sum().backward()
    # the raw gradient is lr_mul times smaller; Adam's step on the raw weight does not depend on the gradient's
    # scale, and the raw weight counts lr_mul times less in the effective one: it learns lr_mul times slower
    assert torch.allclose(slow.weight.grad, 0.01 * plain.weight.grad, rtol=1e-3, atol=1e-7)
    assert all(layer.lr_mul == TINY.mapping_lr for layer in Generator(TINY).mapping_network.layers)


def test_demodulation_gives_unit_variance_whatever_the_style_scale():
    torch.manual_seed(0)
    x = torch.randn(8, 32, 16, 16)
    w = torch.randn(8, 16)
    for scale in (0.1, 10.0):
        demodulated = ModulatedConv2d(32, 32, 16, activation=False)
        plain = ModulatedConv2d(32, 32, 16, demodulate=False, activation=False)
        for layer in (demodulated, plain):
            with torch.no_grad():  # every style = scale
                layer.affine.weight.zero_()
                layer.affine.bias.fill_(scale)
        assert 0.85 < demodulated(x, w).std().item() < 1.15
        # the check can fail: without demodulation the output scales with the style (0.1 -> ~0.1, 10 -> ~10)
        assert abs(math.log10(plain(x, w).std().item()) - math.log10(scale)) < 0.2


def test_each_style_code_drives_its_own_layers_and_changes_the_image():
    """W+ routing: code j is the style of convolution j and of ToRGB l when j = 2 l + 1; editing it leaves every
    earlier layer untouched (what the paper's partial swap from layer L2 relies on) and changes the image."""
    torch.manual_seed(0)
    G = Generator(TINY)
    synthesis = G.synthesis_network
    outputs: dict[str, torch.Tensor] = {}
    layers = {**{f"conv{i}": m for i, m in enumerate(synthesis.convs)},
              **{f"torgb{i}": m for i, m in enumerate(synthesis.torgbs)}}
    for name, layer in layers.items():
        layer.register_forward_hook(lambda module, args, out, name=name: outputs.__setitem__(name, out))
    ws = G.mapping(torch.randn(4, TINY.z_dim))
    with torch.no_grad():
        base_image = G.synthesis(ws)
        base = dict(outputs)
        for j in range(TINY.num_ws):
            edited = ws.clone()
            edited[:, j] = G.mapping(torch.randn(4, TINY.z_dim))[:, 0]
            image = G.synthesis(edited)
            changed = {name for name in layers if not torch.equal(outputs[name], base[name])}
            expected = {f"conv{i}" for i in range(len(synthesis.convs)) if i >= j} | \
                {f"torgb{level}" for level in range(TINY.levels) if 2 * level + 1 >= j}
            assert changed == expected, (j, sorted(changed))
            assert (image - base_image).abs().mean() > 1e-3, f"style code {j} does not change the image"


def test_noise_inputs_exist_and_are_zero_by_default():
    torch.manual_seed(0)
    G = Generator(TINY)
    ws = G.mapping(torch.randn(2, TINY.z_dim))
    sizes = [(5, 4)] + [(5 << level, 4 << level) for level in (1, 1, 2, 2)]
    zeros = [torch.zeros(1, 1, *size) for size in sizes]
    with torch.no_grad():
        for conv in G.synthesis_network.convs:
            conv.noise_strength.fill_(0.5)
    assert torch.equal(G.synthesis(ws), G.synthesis(ws, zeros))  # no noise given = b = 0, whatever the strength
    noisy = G.synthesis(ws, [torch.randn(1, 1, *size) for size in sizes])
    assert not torch.allclose(noisy, G.synthesis(ws))


def test_minibatch_stddev_couples_samples_of_a_group_only():
    torch.manual_seed(0)
    D = Discriminator(TINY)  # group of 2: samples i and i + B/2 are compared
    images = torch.randn(4, 1, 20, 16)
    changed = images.clone()
    changed[2] += 1.0
    before, after = D(images), D(changed)
    assert not torch.isclose(before[0], after[0]) and torch.isclose(before[1], after[1])


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    G, D = Generator(TINY), Discriminator(TINY)
    loss = torch.nn.functional.softplus(-D(G(torch.randn(4, TINY.z_dim)))).mean()
    loss.backward()
    for name, parameter in [*G.named_parameters(), *D.named_parameters()]:
        if name.endswith("noise_strength"):  # noise is zero (the paper's b = 0): no gradient by design
            assert parameter.grad is None
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_rotation_is_rigid_on_non_square_slices():
    height, width = 80, 48
    y, x = np.meshgrid(np.arange(height) - (height - 1) / 2, np.arange(width) - (width - 1) / 2, indexing="ij")
    bar = torch.from_numpy(((np.abs(y) < 25) & (np.abs(x) < 3)).astype(np.float32))[None, None].repeat(6, 1, 1, 1)
    generator = torch.Generator().manual_seed(1)
    expected = (torch.rand(6, generator=generator.clone_state()) * 2 - 1) * 15
    rotated = rotate(bar, bar, generator, 15.0)
    for image, angle in zip(rotated[:, 0].numpy(), expected.tolist()):
        weights = image / image.sum()
        cy, cx = (weights * y).sum(), (weights * x).sum()
        cyy, cxx, cxy = (weights * (y - cy) ** 2).sum(), (weights * (x - cx) ** 2).sum(), \
            (weights * (x - cx) * (y - cy)).sum()
        tilt = math.degrees(0.5 * math.atan2(2 * cxy, cyy - cxx))  # of the bar's long axis from the rows' axis
        assert abs(abs(tilt) - abs(angle)) < 1.5, (tilt, angle)
        assert abs(image.sum() - bar[0, 0].sum().item()) / bar[0, 0].sum().item() < 0.1  # no scaling
    assert rotated.abs().sum() > 0 and torch.equal(rotate(bar, bar * 0, generator, 15.0), bar * 0)


def test_training_steps_are_finite_change_the_networks_and_average_g(ellipses):
    trainer = make_trainer(TINY, SETTINGS)
    slices, masks = stylegan_fit.as_tensors(ellipses, trainer.device)
    start = {k: v.clone() for k, v in state_tensors(trainer).items()}
    history = [train_step(trainer, slices, masks) for _ in range(6)]
    assert trainer.iteration == 6
    assert all(math.isfinite(v) for losses in history for v in losses.values())
    assert "r1" in history[0] and "r1" not in history[1] and history[2]["r1"] > 0  # lazy R1 every 2nd step
    after = state_tensors(trainer)
    for prefix in ("G.", "D.", "G_ema."):
        assert any(not torch.equal(after[k], start[k]) for k in after if k.startswith(prefix)), prefix
    # G_ema lies between its previous value and G: one more EMA update with a known beta
    before_ema = {k: v.clone() for k, v in trainer.G_ema.state_dict().items()}
    stylegan_fit.update_ema(trainer)
    s = trainer.settings
    beta = 0.5 ** (s.batch_size / min(s.batch_size * 10 / 32 * 1000, 7 * s.batch_size * s.ema_rampup))
    weight = "synthesis_network.convs.0.weight"
    expected = trainer.G.state_dict()[weight].lerp(before_ema[weight], beta)
    assert torch.allclose(trainer.G_ema.state_dict()[weight], expected)


def test_resume_from_a_checkpoint_is_bit_identical_to_an_uninterrupted_run(ellipses, tmp_path):
    straight = fit(make_trainer(TINY, SETTINGS), ellipses, tmp_path / "straight", 6, checkpoint_every=3,
                   progress=False)
    fit(make_trainer(TINY, SETTINGS), ellipses, tmp_path / "killed", 3, checkpoint_every=3, progress=False)
    resumed = load_checkpoint(tmp_path / "killed" / CHECKPOINT, settings=SETTINGS)
    assert resumed.iteration == 3
    fit(resumed, ellipses, tmp_path / "killed", 6, checkpoint_every=3, progress=False)
    a, b = state_tensors(straight), state_tensors(resumed)
    assert a.keys() == b.keys() and len(a) > 50
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    assert [h["iteration"] for h in resumed.history] == [3, 6]
    # and the fresh start differs from both (the comparison can fail)
    assert not torch.equal(state_tensors(make_trainer(TINY, SETTINGS))["G.synthesis_network.const"],
                           a["G.synthesis_network.const"])
    grid = matplotlib.image.imread(tmp_path / "killed" / "samples_000006.png")
    assert grid.shape[:2] == (4 * 20, 8 * 16)


def test_command_line_resume_refuses_other_settings_and_writes_run_json(ellipses, tmp_path):
    data = tmp_path / "toy.npz"
    ellipses.save(data)
    common = ["--data", str(data), "--config", "tiny", "--batch-size", "4", "--seed", "1", "--checkpoint-every", "2"]
    assert stylegan_fit.main([*common, "--run-dir", str(tmp_path / "a"), "--iterations", "4"]) == 0
    assert stylegan_fit.main([*common, "--run-dir", str(tmp_path / "b"), "--iterations", "2"]) == 0
    assert stylegan_fit.main([*common, "--run-dir", str(tmp_path / "b"), "--iterations", "4"]) == 1  # no --resume
    assert stylegan_fit.main([*common, "--run-dir", str(tmp_path / "b"), "--iterations", "4", "--resume",
                              "--r1-gamma", "5"]) == 1
    assert stylegan_fit.main([*common, "--run-dir", str(tmp_path / "b"), "--iterations", "4", "--resume"]) == 0
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert all(torch.equal(a["G_ema"][k], b["G_ema"][k]) for k in a["G_ema"])
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert record["method"] == "scrps" and record["iterations"] == 4 and record["seed"] == 1
    assert record["config"] == TINY.to_dict() and "--resume" in record["command"]
    assert set(record["final_losses"]) >= {"loss_G", "loss_D"}
    assert sorted(p.name for p in (tmp_path / "b").glob("samples_*.png")) == ["samples_000002.png",
                                                                             "samples_000004.png"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = make_trainer(TINY, SETTINGS)
    path = tmp_path / CHECKPOINT
    save_checkpoint(trainer, path)
    good = path.read_bytes()
    trainer.iteration = 5

    def failing_save(state, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(stylegan_fit.torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint(trainer, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == [CHECKPOINT]
    assert load_checkpoint(path).iteration == 0
    with pytest.raises(InputError, match="other settings"):
        load_checkpoint(path, settings=GANSettings(batch_size=8))


def test_a_time_limit_stops_the_run_with_a_checkpoint(ellipses, tmp_path):
    trainer = fit(make_trainer(TINY, SETTINGS), ellipses, tmp_path, 1000, checkpoint_every=500, progress=False,
                  max_seconds=0.0)
    assert trainer.iteration == 1 and load_checkpoint(tmp_path / CHECKPOINT).iteration == 1
    assert (tmp_path / "samples_000001.png").exists()
