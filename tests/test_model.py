"""worker.model, worker.resnet and worker.checkpoint: shapes for every configuration of both architectures, DCGAN
init, safe checkpoint loading."""

from __future__ import annotations

import collections
import io
import itertools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from shared.specs import TrainSpec
from shared.storage import FileStorage
from worker import checkpoint
from worker.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KIND, CheckpointError
from worker.gan_step import mode_seeking_penalty, step_functions, train_step
from worker.model import DCGANDiscriminator, DCGANGenerator, GANConfig, LatentProjection
from worker.networks import build_discriminator, build_generator
from worker.train import new_state

BATCH = 3


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    # These networks are tiny: with several intra-op threads on a busy machine every op waits ~25 ms for
    # the thread pool (measured: 0.8 s vs 0.004 s per forward+backward), so run them on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONFIGS = [
    GANConfig(
        image_size=size,
        channels=channels,
        nz=16,
        width=8,
        num_classes=classes,
        embed_dim=6,
        conditioning=conditioning,
        spectral_norm=spectral_norm,
    )
    for size, channels, classes, conditioning, spectral_norm in itertools.product(
        (28, 32, 64), (1, 3), (0, 10), ("concat", "projection"), (False, True)
    )
] + [
    # the resnet pair always has a spectral-norm projection D, as the training job records it (worker.train.gan_config)
    GANConfig(image_size=size, channels=channels, nz=16, width=8, num_classes=classes, conditioning="projection",
              spectral_norm=True, arch="resnet")
    for size, channels, classes in itertools.product((28, 32, 64), (1, 3), (0, 10))
]


def config_id(config: GANConfig) -> str:
    return (
        f"{config.arch}-{config.image_size}px-c{config.channels}-k{config.num_classes}-{config.conditioning}"
        f"{'-sn' if config.spectral_norm else ''}"
    )


def labels_for(config: GANConfig) -> torch.Tensor | None:
    return torch.arange(BATCH) % config.num_classes if config.conditional else None


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_shapes_and_ranges(config: GANConfig) -> None:
    torch.manual_seed(0)
    generator, discriminator = build_generator(config), build_discriminator(config)
    labels = labels_for(config)
    z = torch.randn(BATCH, config.nz)
    for mode in ("train", "eval"):
        generator.train(mode == "train")
        discriminator.train(mode == "train")
        images = generator(z, labels)
        assert images.shape == (BATCH, config.channels, config.image_size, config.image_size)
        assert images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1
        assert torch.isfinite(images).all()
        logits = discriminator(images, labels)
        assert logits.shape == (BATCH,)
        assert torch.isfinite(logits).all()
    # gradients flow back to the generator through the discriminator
    generator.train()
    discriminator.train()
    discriminator(generator(z, labels), labels).mean().backward()
    assert all(p.grad is not None for p in generator.parameters())


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.conditional and (c.arch == "resnet" or not c.spectral_norm)],
                         ids=config_id)
def test_conditional_networks_need_labels(config: GANConfig) -> None:
    generator, discriminator = build_generator(config), build_discriminator(config)
    with pytest.raises(ValueError, match="needs labels"):
        generator(torch.randn(BATCH, config.nz))
    images = torch.zeros(BATCH, config.channels, config.image_size, config.image_size)
    with pytest.raises(ValueError, match="needs labels"):
        discriminator(images)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_labels_change_the_conditional_output(arch: str) -> None:
    config = GANConfig(image_size=32, channels=3, nz=16, width=8, num_classes=10, arch=arch)
    generator = build_generator(config).eval()
    for module in generator.modules():
        if isinstance(module, nn.Embedding):  # resnet's class-conditional BatchNorm starts as the identity for all
            nn.init.normal_(module.weight)
    z = torch.randn(1, config.nz).expand(2, -1)
    images = generator(z, torch.tensor([0, 1]))
    assert not torch.equal(images[0], images[1])


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_unconditional_networks_ignore_labels(arch: str) -> None:
    config = GANConfig(image_size=28, channels=1, nz=16, width=8, arch=arch)
    generator = build_generator(config).eval()
    z = torch.randn(2, config.nz)
    assert torch.equal(generator(z), generator(z, torch.tensor([0, 1])))
    assert not any(isinstance(module, nn.Embedding) for module in generator.modules())


@pytest.mark.parametrize(("size", "base", "ups"), [(28, 7, 2), (32, 4, 3), (64, 4, 4)])
def test_config_geometry(size: int, base: int, ups: int) -> None:
    config = GANConfig(image_size=size)
    assert (config.base_size, config.upsamplings) == (base, ups)
    assert not config.conditional and GANConfig(num_classes=2).conditional


@pytest.mark.parametrize("changes", [{"image_size": 48}, {"image_size": 16}, {"conditioning": "x"}])
def test_config_refuses_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GANConfig(**changes)


def _conv_weights(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The trainable conv weights (for spectral-normed layers: the parametrization's original tensor)."""
    found = []
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d, LatentProjection)):
            parametrizations: Any = getattr(sub, "parametrizations", None)
            weight = parametrizations.weight.original if parametrizations is not None else sub.weight
            found.append((name, weight.detach()))
    return found


@pytest.mark.parametrize("size", [28, 32, 64])
def test_dcgan_init_statistics(size: int) -> None:
    torch.manual_seed(1)
    config = GANConfig(image_size=size, channels=3, width=32, num_classes=10)
    for network in (DCGANGenerator(config), DCGANDiscriminator(config)):
        weights = _conv_weights(network)
        assert weights
        everything = torch.cat([w.flatten() for _, w in weights])
        assert abs(everything.std().item() - 0.02) < 0.001
        assert abs(everything.mean().item()) < 0.001
        for name, weight in weights:
            if weight.numel() >= 5000:
                assert abs(weight.std().item() - 0.02) < 0.002, name
        for name, sub in network.named_modules():
            if isinstance(sub, nn.BatchNorm2d):
                assert abs(sub.weight.mean().item() - 1.0) < 0.01, name
                assert sub.weight.std().item() < 0.04, name
                assert torch.equal(sub.bias.detach(), torch.zeros_like(sub.bias)), name


def test_dcgan_init_statistics_with_spectral_norm() -> None:
    torch.manual_seed(1)
    discriminator = DCGANDiscriminator(GANConfig(image_size=32, channels=3, width=32, spectral_norm=True))
    for name, weight in _conv_weights(discriminator):
        assert abs(weight.std().item() - 0.02) < 0.003, name


def test_spectral_norm_bounds_the_discriminator_layers() -> None:
    torch.manual_seed(2)
    discriminator = DCGANDiscriminator(
        GANConfig(image_size=32, channels=3, width=16, num_classes=10, conditioning="projection", spectral_norm=True)
    )
    assert not any(isinstance(sub, nn.BatchNorm2d) for sub in discriminator.modules())
    for sub in discriminator.modules():
        if isinstance(sub, (nn.Conv2d, nn.Embedding)):
            sigma = torch.linalg.matrix_norm(sub.weight.detach().flatten(1), ord=2).item()
            assert sigma == pytest.approx(1.0, abs=0.05)


def test_spectral_norm_bounds_every_resnet_discriminator_layer() -> None:
    torch.manual_seed(2)
    discriminator = build_discriminator(GANConfig(image_size=32, channels=3, width=8, num_classes=10,
                                                  conditioning="projection", spectral_norm=True, arch="resnet"))
    layers = [sub for sub in discriminator.modules() if isinstance(sub, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(layers) == 3 * 4 + 2  # three convolutions in each of 4 blocks, the head and the projection
    for sub in layers:
        sigma = torch.linalg.matrix_norm(sub.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_a_checkpoint_from_before_architectures_rebuilds_its_dcgan() -> None:
    config = GANConfig(image_size=28, channels=1, nz=16, width=8, num_classes=10)
    state = make_state(config)
    del state["config"]["arch"]  # what checkpoints held before --arch
    rebuilt = checkpoint.generator_from_state(checkpoint.from_bytes(checkpoint.to_bytes(state), "memory"))
    assert isinstance(rebuilt, DCGANGenerator)


def test_mode_seeking_penalises_generators_that_ignore_their_noise() -> None:
    noise_a, noise_b = torch.randn(4, 16), torch.randn(4, 16)
    image = torch.rand(4, 1, 28, 28)
    collapsed = mode_seeking_penalty(image, image.clone(), noise_a, noise_b)
    nearly = mode_seeking_penalty(image, image + 0.01, noise_a, noise_b)
    diverse = mode_seeking_penalty(image, torch.rand(4, 1, 28, 28), noise_a, noise_b)
    assert collapsed > nearly > diverse > 0


def test_mode_seeking_steps_pair_fakes_of_one_class_and_train_both_networks() -> None:
    spec = TrainSpec(job_id="t-abc", dataset="fake", nz=16, width=8, mode_seeking=1.0, precision="fp32")
    config = GANConfig(image_size=28, channels=1, nz=16, width=8, num_classes=10)
    cpu = torch.device("cpu")
    state = new_state(spec, config, cpu)
    before = {name: p.detach().clone() for name, p in state.generator.named_parameters()}
    seen: list[torch.Tensor] = []
    state.generator.register_forward_hook(lambda module, inputs, output: seen.append(inputs[1]))
    labels = torch.arange(8)
    train_step(state, step_functions(spec, spec.recipe(1000, 10, 15), state, cpu), torch.rand(8, 1, 28, 28) * 2 - 1, labels,
               torch.zeros(4))
    assert torch.equal(seen[0][:4], seen[0][4:]) and torch.equal(seen[0][:4], labels[:4])
    assert all(not torch.equal(before[name], p) for name, p in state.generator.named_parameters())


# ---- checkpoints ----


class Payload:
    """An arbitrary object: pickled by torch.save, so it must be refused by the weights-only loader."""

    executed: list[str] = []

    def __init__(self, value: int = 1):
        self.value = value

    def __setstate__(self, state: dict[str, Any]) -> None:
        Payload.executed.append("setstate")
        self.__dict__.update(state)


class SneakyDict(collections.OrderedDict):
    """An OrderedDict subclass: looks like a state dict, is not a plain type."""


def _mark_executed(note: str) -> str:
    Payload.executed.append(note)
    return note


class Reducer:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_mark_executed, ("reduce",))


def make_state(config: GANConfig, ema: float = 0.0) -> dict[str, Any]:
    """A checkpoint exactly as the trainer writes it (``TrainState.to_checkpoint``), after one real training step."""
    spec = TrainSpec(job_id="t-abc", dataset="fake", nz=config.nz, width=config.width, ema=ema, arch=config.arch,
                     conditioning=config.conditioning, spectral_norm=config.spectral_norm, precision="fp32")
    cpu = torch.device("cpu")
    state = new_state(spec, config, cpu)
    real = torch.rand(BATCH, config.channels, config.image_size, config.image_size) * 2 - 1
    train_step(state, step_functions(spec, spec.recipe(1000, 10, 15), state, cpu), real, labels_for(config), torch.zeros(4))
    state.step = 1
    return state.to_checkpoint(spec, ["a", "b"])


def test_the_trainers_checkpoint_holds_everything_a_resume_needs() -> None:
    config = GANConfig(image_size=28, channels=1, nz=16, width=8, num_classes=10)
    saved = checkpoint.from_bytes(checkpoint.to_bytes(make_state(config, ema=0.9)), "memory")
    assert set(saved) == {
        "format", "kind", "config", "spec", "class_names", "step", "generator", "generator_ema", "discriminator",
        "opt_g", "opt_d", "rng", "history", "warnings", "curve", "best_checkpoint",  # the validation curve so far
        "threads",  # torch's: a resumption runs with the count the job ran with
    }
    assert saved["threads"] == torch.get_num_threads()
    assert set(saved["rng"]) == {"noise"} and saved["spec"]["job_id"] == "t-abc"
    spec = TrainSpec.from_dict(saved["spec"])
    resumed = new_state(spec, GANConfig(**saved["config"]), torch.device("cpu"))
    resumed.load_checkpoint(saved)
    assert resumed.step == 1 and resumed.generator_ema is not None
    assert torch.equal(resumed.noise_rng.get_state(), saved["rng"]["noise"])
    for name, tensor in resumed.discriminator.state_dict().items():
        assert torch.equal(tensor, saved["discriminator"][name]), name
    assert resumed.opt_g.state_dict()["state"][0]["exp_avg"].abs().sum() > 0  # Adam's moments came back, not zeros


@pytest.mark.parametrize(
    "config",
    [
        GANConfig(image_size=28, channels=1, nz=16, width=8, num_classes=10),
        GANConfig(
            image_size=32, channels=3, nz=16, width=8, num_classes=10, conditioning="projection", spectral_norm=True
        ),
        GANConfig(image_size=64, channels=3, nz=16, width=8),
        GANConfig(image_size=32, channels=3, nz=16, width=8, num_classes=10, conditioning="projection",
                  spectral_norm=True, arch="resnet"),
    ],
    ids=config_id,
)
def test_checkpoint_round_trip(config: GANConfig) -> None:
    state = make_state(config)
    data = checkpoint.to_bytes(state)
    loaded = checkpoint.from_bytes(data, "memory")
    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["kind"] == CHECKPOINT_KIND
    assert loaded["config"] == checkpoint.config_dict(config)
    assert loaded["step"] == 1 and loaded["spec"] == state["spec"] and loaded["class_names"] == ["a", "b"]
    assert torch.equal(loaded["rng"]["noise"], state["rng"]["noise"])
    for network in ("generator", "discriminator"):
        assert loaded[network].keys() == state[network].keys()
        for key, tensor in state[network].items():
            assert torch.equal(loaded[network][key], tensor), key
    assert loaded["opt_g"]["param_groups"] == state["opt_g"]["param_groups"]
    for index, moments in state["opt_d"]["state"].items():
        assert torch.equal(loaded["opt_d"]["state"][index]["exp_avg"], moments["exp_avg"])

    rebuilt = checkpoint.generator_from_state(loaded)
    assert not rebuilt.training
    original = build_generator(config)
    original.load_state_dict(state["generator"])  # no EMA in this spec: the live generator samples
    original.eval()
    z = torch.randn(BATCH, config.nz)
    labels = labels_for(config)
    assert torch.equal(rebuilt(z, labels), original(z, labels))


def test_generator_from_state_prefers_ema_weights() -> None:
    config = GANConfig(image_size=28, channels=1, nz=16, width=8)
    state = make_state(config)
    torch.manual_seed(99)
    ema = DCGANGenerator(config).state_dict()
    state["generator_ema"] = ema
    rebuilt = checkpoint.generator_from_state(checkpoint.from_bytes(checkpoint.to_bytes(state), "memory"))
    for key, tensor in ema.items():
        assert torch.equal(rebuilt.state_dict()[key], tensor)


def test_checkpoint_save_and_load_through_storage(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    assert checkpoint.load(storage, "t-missing") is None
    state = make_state(GANConfig(image_size=28, channels=1, nz=16, width=8))
    assert checkpoint.save(storage, "t-abc", 3, state) == "models/t-abc/checkpoints/a000003-step-0000001.pt"
    checkpoint.save(storage, "t-abc", 2, {**state, "step": 7})  # an older attempt, cut off, writes late
    loaded = checkpoint.load(storage, "t-abc")
    assert loaded is not None and loaded["step"] == 1, "the latest attempt's checkpoint is the one to resume"


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload",
    [Payload(5), SneakyDict(a=torch.zeros(2)), Reducer(), {"nested": [1, {"deep": Payload()}]}],
    ids=["object", "ordereddict-subclass", "reduce", "nested-object"],
)
def test_checkpoint_with_python_objects_is_refused(payload: Any) -> None:
    Payload.executed.clear()
    data = _torch_bytes({"format": CHECKPOINT_FORMAT, "kind": CHECKPOINT_KIND, "generator": payload})
    with pytest.raises(CheckpointError) as info:
        checkpoint.from_bytes(data, "s3://bucket/models/t-abc/checkpoint.pt")
    message = str(info.value)
    assert "s3://bucket/models/t-abc/checkpoint.pt" in message
    assert "refused" in message
    assert "\n" not in message
    assert Payload.executed == []  # nothing in the file ran


def test_sneaky_dict_at_top_level_is_refused() -> None:
    data = _torch_bytes(SneakyDict(format=CHECKPOINT_FORMAT, kind=CHECKPOINT_KIND))
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.from_bytes(data, "file")


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.pkl", b"not a pickle")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage bytes, not a checkpoint", bytes(range(256)) * 8, b"PK\x03\x04truncated", None],
    ids=["empty", "text", "binary", "truncated-zip", "zip-without-torch-layout"],
)
def test_garbage_is_refused(data: bytes | None) -> None:
    with pytest.raises(CheckpointError) as info:
        checkpoint.from_bytes(_zip_bytes() if data is None else data, "the-source")
    assert "the-source" in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_is_refused() -> None:
    data = checkpoint.to_bytes(make_state(GANConfig(image_size=28, channels=1, nz=16, width=8)))
    with pytest.raises(CheckpointError):
        checkpoint.from_bytes(data[: len(data) // 2], "half")


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"format": CHECKPOINT_FORMAT, "kind": "someone-else/gan"}, "not a gan-augment checkpoint"),
        ({"format": CHECKPOINT_FORMAT}, "not a gan-augment checkpoint"),
        ({"generator": {"w": torch.zeros(1)}}, "not a gan-augment checkpoint"),
        (torch.zeros(3), "not a gan-augment checkpoint"),
        ([1, 2, 3], "not a gan-augment checkpoint"),
        ({"format": CHECKPOINT_FORMAT + 1, "kind": CHECKPOINT_KIND}, "format 2, newer than this reader"),
        ({"kind": CHECKPOINT_KIND}, "src has no format; this reader reads formats 1 to 1"),
    ],
)
def test_wrong_kind_or_format_is_refused(obj: Any, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        checkpoint.from_bytes(_torch_bytes(obj), "src")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_latent_projection_is_the_transposed_convolution_it_replaces(layout: torch.memory_format) -> None:
    torch.manual_seed(0)
    projection = LatentProjection(12, 8, 7).to(memory_format=layout)  # type: ignore[call-overload]
    nn.init.normal_(projection.weight)
    convolution = nn.ConvTranspose2d(12, 8, 7, 1, 0, bias=False)
    convolution.load_state_dict(projection.state_dict())  # same parameter name and shape: same checkpoints
    z = torch.randn(BATCH, 12, requires_grad=True)
    ours, theirs = projection(z), convolution(z[:, :, None, None])
    torch.testing.assert_close(ours, theirs)
    upstream = torch.randn_like(theirs)
    ours_grads = torch.autograd.grad(ours, [z, projection.weight], upstream)
    theirs_grads = torch.autograd.grad(theirs, [z, convolution.weight], upstream)
    for mine, reference in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-4)  # sums of ~400 terms, in another order


def test_generator_first_layer_keeps_the_convtranspose_weight_layout() -> None:
    config = GANConfig(image_size=28, channels=1, width=8, num_classes=10, embed_dim=5)
    weight = DCGANGenerator(config).state_dict()["main.0.weight"]
    assert weight.shape == (config.nz + 5, 8 * 2, 7, 7)  # ConvTranspose2d's (in, out, k, k)
