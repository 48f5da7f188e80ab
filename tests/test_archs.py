"""Every registered architecture: shapes on odd sizes, finiteness, gradients, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deblurcli.archs import (
    ArchSpec,
    DiscriminatorSpec,
    count_parameters,
    create,
    create_discriminator,
    default_parameter_count,
    get_discriminator_spec,
    get_spec,
    list_archs,
    list_discriminators,
    loading_config,
    model_config,
    register_discriminator,
    resolve_config,
)
from deblurcli.archs._blocks import pad_to_multiple
from deblurcli.errors import UnknownArchError
from deblurcli.inference.tiling import size_multiple
from deblurcli.training.recipes import recipe_for_arch

SIX = ["skipae", "edgenet", "deblurgan", "resnetencdec", "transformnet", "simplecnn"]


def test_registry_has_exactly_the_six_names():
    assert sorted(list_archs()) == sorted(SIX)


@pytest.mark.parametrize("name", SIX)
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 96)])
def test_forward_backward_any_size(name, shape):
    torch.manual_seed(0)
    model = create(name, **get_spec(name).tiny_config)
    x = torch.rand(*shape, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", SIX)
def test_eval_mode_is_deterministic(name):
    model = create(name, **get_spec(name).tiny_config).eval()
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_simplecnn_default_parameter_count_is_the_seeds():
    assert default_parameter_count("simplecnn") == 1_331_459


def test_simplecnn_logit_residual_starts_at_the_identity():
    x = torch.rand(1, 3, 24, 24) * 0.99 + 0.005
    for logit_residual, expected in ((False, torch.sigmoid(x)), (True, x)):
        model = create("simplecnn", widths=[8] * 6, logit_residual=logit_residual)
        last = model.features[-1]
        nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)  # features(x) == 0
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=0)


def _conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def test_deblurgan_generator_matches_the_nine_block_resnet():
    # Kupyn et al. / pix2pix resnet_9blocks, ngf=64, InstanceNorm without affine, conv biases.
    ngf = 64
    expected = _conv_params(3, ngf, 7)
    expected += _conv_params(ngf, 2 * ngf, 3) + _conv_params(2 * ngf, 4 * ngf, 3)
    expected += 9 * 2 * _conv_params(4 * ngf, 4 * ngf, 3)
    expected += _conv_params(4 * ngf, 2 * ngf, 3) + _conv_params(2 * ngf, ngf, 3)
    expected += _conv_params(ngf, 3, 7)
    assert default_parameter_count("deblurgan") == expected == 11_378_179
    model = create("deblurgan")
    blocks = [m for m in model.modules() if type(m).__name__ == "ResidualBlock"]
    assert len(blocks) == 9
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())


def test_default_configs_follow_the_seeds():
    assert resolve_config("resnetencdec")["encoder"] == "resnet50"
    assert resolve_config("transformnet") == {"base": 32, "n_blocks": 5}
    convs = [m for m in create("simplecnn").modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 128, 64, 3]


def test_skipae_keeps_the_seed_channel_plan():
    model = create("skipae")
    enc = [model.e1, model.e2, model.e3, model.e4, model.bottleneck]
    assert [(m[0].in_channels, m[0].out_channels, m[0].stride[0]) for m in enc] == [
        (3, 64, 1),
        (64, 128, 2),
        (128, 256, 1),
        (256, 512, 2),
        (512, 512, 1),
    ]
    dec = [model.d1, model.d2, model.d3, model.d4, model.d5]
    assert [(m[0].in_channels, m[0].out_channels) for m in dec] == [
        (512, 128),
        (640, 128),
        (384, 64),
        (192, 32),
        (32, 16),
    ]
    assert (model.out.in_channels, model.out.out_channels) == (80, 3)


def test_edgenet_exposes_edges_for_training():
    model = create("edgenet", **get_spec("edgenet").tiny_config)
    rgb, fused, sides = model.forward_with_edges(torch.rand(1, 3, 32, 48))
    assert rgb.shape == (1, 3, 32, 48) and fused.shape == (1, 1, 32, 48)
    assert all(s.shape == fused.shape for s in sides)
    assert model.deblurnet.head[0][1].in_channels == 4  # RGB + edge map


@pytest.mark.parametrize("arch", ["deblurgan", "skipae"])
def test_gan_archs_have_a_discriminator(arch):
    name = recipe_for_arch(arch).adversarial.critic  # the recipe names its registered critic
    critic = create_discriminator(name, **get_discriminator_spec(name).tiny_config)
    score = critic(torch.rand(2, 3, 64, 64))
    assert score.shape[0] == 2 and torch.isfinite(score).all()


def test_deblurgan_critic_is_the_70px_patchgan():
    critic = create_discriminator(recipe_for_arch("deblurgan").adversarial.critic)
    assert critic(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert not any(isinstance(m, nn.Sigmoid) for m in critic.modules())


def test_non_gan_arch_has_no_discriminator():
    assert recipe_for_arch("simplecnn").adversarial is None


def test_discriminators_are_registry_entries_of_their_own():
    assert list_discriminators() == ["patchgan", "dcgan"]
    assert not set(list_discriminators()) & set(list_archs())
    for name in list_discriminators():  # the tiny config is a smaller critic (fast tests)
        tiny = create_discriminator(name, **get_discriminator_spec(name).tiny_config)
        assert count_parameters(tiny) < count_parameters(create_discriminator(name)) / 10
    with pytest.raises(
        UnknownArchError, match="unknown discriminator 'deblurgan'; known: patchgan"
    ):
        create_discriminator("deblurgan")  # an arch's name is not a critic's
    for arch in list_archs():  # archs no longer point into training
        assert not hasattr(get_spec(arch), "recipe")
        assert not hasattr(get_spec(arch), "discriminator")
    with pytest.raises(ValueError, match="registered twice"):
        register_discriminator(DiscriminatorSpec(name="patchgan", title="again"))(nn.Identity)


def test_unknown_names_are_clear_errors():
    with pytest.raises(UnknownArchError, match="unknown architecture 'nope'"):
        create("nope")
    with pytest.raises(UnknownArchError, match="unknown config key"):
        create("simplecnn", depth=3)


def test_resnetencdec_without_cached_imagenet_weights_warns(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level("WARNING"):
        create("resnetencdec", encoder="resnet18", decoder_channels=[8] * 5)
    assert "ImageNet weights for resnet18 are not in the torch cache" in caplog.text


def test_resnetencdec_uses_cached_imagenet_weights(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1])
    model = create("resnetencdec", encoder="resnet18", decoder_channels=[8] * 5)
    torch.testing.assert_close(model.stem[0].weight, reference.conv1.weight)


def test_parameter_count_helper_counts_all():
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_init_only_keys_are_a_spec_fact():
    assert get_spec("resnetencdec").init_only_keys == ("encoder_weights",)
    config = resolve_config("resnetencdec")
    assert model_config("resnetencdec", config) == {
        k: v for k, v in config.items() if k != "encoder_weights"
    }
    assert loading_config("resnetencdec", config) == {**config, "encoder_weights": None}
    assert loading_config("resnetencdec", {})["encoder_weights"] is None
    for name in set(SIX) - {"resnetencdec"}:
        assert get_spec(name).init_only_keys == ()
        config = resolve_config(name)
        assert model_config(name, config) == config == loading_config(name, config)


@pytest.mark.parametrize("name", SIX)
def test_tiny_config_turns_every_init_off(name):
    spec = get_spec(name)
    assert all(spec.tiny_config[k] is None for k in spec.init_only_keys)


def test_spec_refuses_init_only_keys_it_cannot_honour():
    base = {"name": "x", "title": "x", "source": "x", "default_config": {"init": "a", "w": 1}}
    with pytest.raises(ValueError, match="not config keys"):
        ArchSpec(**base, init_only_keys=("nope",))
    with pytest.raises(ValueError, match="tiny_config must set"):
        ArchSpec(**base, tiny_config={"w": 1}, init_only_keys=("init",))
    assert ArchSpec(**base, tiny_config={"init": None}, init_only_keys=("init",))


@pytest.mark.parametrize("name", SIX)
@pytest.mark.parametrize("width", ["default", "tiny"])
def test_instances_pad_to_their_specs_multiple(name, width):
    spec = get_spec(name)
    config = loading_config(name, spec.tiny_config if width == "tiny" else {})
    torch.manual_seed(0)
    model = create(name, **config).eval()
    multiple = spec.multiple_for(model.arch_config)
    assert model.size_multiple == size_multiple(model) == multiple
    if width == "default":
        assert multiple == spec.size_multiple
    with torch.no_grad():
        # A multiple runs unpadded: the network itself keeps the shape.
        x = torch.rand(1, 3, 2 * multiple, 2 * multiple)
        assert model.forward_padded(x).shape == x.shape
        if width == "default":
            return  # slow on a CPU at these widths; the tiny config checks the padding path
        # Anything else is padded to the spec's multiple and cropped back.
        x = torch.rand(1, 3, 2 * multiple + 3, multiple + 5)
        padded, (h, w) = pad_to_multiple(x, multiple)
        assert padded.shape[-2] % multiple == 0 == padded.shape[-1] % multiple
        torch.testing.assert_close(model(x), model.forward_padded(padded)[..., :h, :w])


def test_edgenet_multiple_follows_its_stage_count():
    spec = get_spec("edgenet")
    assert spec.multiple_for(spec.tiny_config) == 4  # two stages: DeblurNet's 4 dominates
    six = {"edge_widths": [4] * 6, "edge_convs": [1] * 6}
    assert spec.multiple_for(six) == 32
    assert create("edgenet", **{**spec.tiny_config, **six}).size_multiple == 32


def test_spec_refuses_a_size_multiple_its_rule_contradicts():
    base = {"name": "x", "title": "x", "source": "x", "default_config": {"n": 3}}
    with pytest.raises(ValueError, match="size_multiple disagrees"):
        ArchSpec(**base, size_multiple=4, multiple_rule=lambda c: 2 ** c["n"])
    assert (
        ArchSpec(**base, size_multiple=8, multiple_rule=lambda c: 2 ** c["n"]).multiple_for(
            {"n": 1}
        )
        == 2
    )
