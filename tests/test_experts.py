"""The external expert (memstream/experts): the tiny offline open_clip model, batched preprocessing,
block scores by hand, and failing fast when real weights cannot be had."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch

import memstream.experts as experts
from memstream.errors import ConfigError, InputError, ModelLoadError
from memstream.experts import EXPERTS, Expert, block_scores, build_tiny_model, load_expert
from memstream.experts.preprocess import ImagePreprocess
from memstream.experts.tiny import TINY_EMBED_DIM


@pytest.fixture(scope="module")
def tiny() -> Expert:
    return load_expert("tiny")


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _smooth_frame(h: int = 120, w: int = 160) -> np.ndarray:
    """[1, h, w, 3] smooth colour gradients: resampling differences stay at rounding level."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = [128 + 100 * np.sin(xx / 17), 128 + 100 * np.cos(yy / 23), 128 + 60 * np.sin((xx + yy) / 31)]
    return np.stack(rgb, -1).astype(np.uint8)[None]


def test_tiny_expert_shapes_norms_and_determinism(tiny):
    assert (tiny.name, tiny.dim, tiny.device) == ("tiny", TINY_EMBED_DIM, torch.device("cpu"))
    for frames in (_frames(3, 48, 64), _frames(2, 100, 50, seed=1)):
        emb = tiny.embed_images(frames)
        assert emb.shape == (len(frames), TINY_EMBED_DIM) and emb.dtype == torch.float32
        assert emb.device.type == "cpu"
        assert torch.allclose(emb.norm(dim=1), torch.ones(len(frames)), atol=1e-5)
    rng_before = torch.random.get_rng_state()
    again = load_expert("tiny")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # building does not disturb the caller's RNG
    frames = _frames(4, 40, 40, seed=2)
    assert torch.equal(again.embed_images(frames), tiny.embed_images(frames))
    assert torch.equal(again.embed_text("a red car"), tiny.embed_text("a red car"))
    assert tiny.embed_images(frames[:0]).shape == (0, TINY_EMBED_DIM)


def test_batching_equals_one_frame_at_a_time(tiny):
    frames = _frames(6, 72, 96, seed=3)
    whole = tiny.embed_images(frames)
    single = torch.cat([tiny.embed_images(frames[i:i + 1]) for i in range(len(frames))])
    chunked = Expert("tiny", tiny.model, tiny.tokenizer, tiny.dim, tiny.device, batch_size=4).embed_images(frames)
    assert torch.allclose(whole, single, atol=1e-5) and torch.allclose(whole, chunked, atol=1e-5)
    text = tiny.embed_text("what is on the table?")
    blocks = tiny.block_scores(text, whole.view(3, 2, -1))
    assert blocks.shape == (3,)
    assert torch.allclose(blocks, tiny.block_scores(text, single.view(3, 2, -1)), atol=1e-5)


def test_block_scores_by_hand(tiny):
    e = torch.eye(4)
    text = 3 * e[0]  # not unit norm on purpose: scores are cosines
    frames = torch.stack([
        torch.stack([e[1], e[2]]),  # block 0: orthogonal to the text -> 0
        torch.stack([torch.tensor([2.0, 2.0, 0.0, 0.0]), -e[0]]),  # block 1: (cos 45deg + (-1)) / 2
        torch.stack([e[0], torch.tensor([1.0, 0.0, 1.0, 0.0])]),  # block 2: (1 + cos 45deg) / 2
    ])  # [N=3, F=2, D=4]
    expected = torch.tensor([0.0, (1 / math.sqrt(2) - 1) / 2, (1 + 1 / math.sqrt(2)) / 2])
    scores = block_scores(text, frames)
    assert scores.dtype == torch.float32 and torch.allclose(scores, expected, atol=1e-6)
    assert int(scores.argmax()) == 2
    assert torch.equal(tiny.block_scores(text, frames), scores)
    # the same on unit vectors, as mean of dot products
    unit = torch.nn.functional.normalize(frames, dim=-1)
    assert torch.allclose(scores, (unit @ e[0]).mean(dim=1), atol=1e-6)
    with pytest.raises(ValueError):
        block_scores(text, frames[0])  # [F, D] is not [N, F, D]
    with pytest.raises(ValueError):
        block_scores(torch.ones(3), frames)  # D mismatch


def test_embed_text(tiny):
    a, b = tiny.embed_text("a dog runs on the beach"), tiny.embed_text("a plate of pasta")
    for emb in (a, b, tiny.embed_text(""), tiny.embed_text("   "), tiny.embed_text("word " * 200)):
        assert emb.shape == (TINY_EMBED_DIM,) and emb.dtype == torch.float32
        assert abs(float(emb.norm()) - 1.0) < 1e-5
    assert not torch.allclose(a, b, atol=1e-3)
    with pytest.raises(InputError):
        tiny.embed_text(None)


def test_bad_frames_raise_input_error(tiny):
    for bad in (_frames(2, 8, 8).astype(np.float32), _frames(2, 8, 8)[..., :2], _frames(1, 8, 8)[0], [[1, 2]]):
        with pytest.raises(InputError):
            tiny.embed_images(bad)


def test_low_precision_model_still_returns_float32_cpu():
    fp32 = Expert("tiny", build_tiny_model(), experts.tiny_tokenizer(), TINY_EMBED_DIM, torch.device("cpu"))
    bf16 = Expert("tiny", build_tiny_model().to(torch.bfloat16), fp32.tokenizer, TINY_EMBED_DIM, torch.device("cpu"))
    assert bf16.dtype == torch.bfloat16
    frames = _frames(3, 40, 56, seed=4)
    low, ref = bf16.embed_images(frames), fp32.embed_images(frames)
    assert low.dtype == torch.float32 and low.device.type == "cpu"
    assert torch.allclose(low.norm(dim=1), torch.ones(3), atol=1e-5)
    assert float((low * ref).sum(dim=1).min()) > 0.95  # same direction up to bf16 rounding
    assert bf16.embed_text("hello").dtype == torch.float32


@pytest.mark.parametrize("cfg", [
    dict(size=32, interpolation="bicubic", resize_mode="shortest"),  # the tiny model's (and ViT-B-32's) recipe
    dict(size=48, interpolation="bilinear", resize_mode="squash"),  # PE-Core's recipe
    dict(size=(40, 24), interpolation="bicubic", resize_mode="longest"),
    dict(size=(24, 40), interpolation="bicubic", resize_mode="shortest"),  # non-square: keep ratio, then crop
])
def test_preprocess_matches_open_clip_pil_transform(cfg):
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    cfg = dict(cfg, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # compare raw pixels in [0, 1]
    frame = _smooth_frame()
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)(Image.fromarray(frame[0]))
    ours = ImagePreprocess.from_cfg(cfg)(torch.from_numpy(frame))[0]
    assert ours.shape == reference.shape
    assert float((ours - reference).abs().max()) <= 1.01 / 255  # at most one grey level apart


def test_load_expert_none_and_unknown():
    assert load_expert(None) is None
    assert load_expert("none") is None
    with pytest.raises(ConfigError) as info:
        load_expert("dinov2")
    message = str(info.value)
    assert all(name in message for name in ("clip-b32", "pe-core-b16", "tiny", "none")) and "\n" not in message


@pytest.mark.parametrize("name", ["clip-b32", "pe-core-b16"])
def test_real_expert_offline_and_uncached_fails_fast(name, monkeypatch, tmp_path):
    import open_clip

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    hub_checks, connects, downloads = [], [], []
    monkeypatch.setattr("memstream.loading.hub_reachable", lambda: hub_checks.append(1) or False)

    def refuse(sock, address, *args):  # any connection attempt is counted and refused
        connects.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(open_clip, "create_model", lambda *args, **kwargs: downloads.append(args))
    with pytest.raises(ModelLoadError) as info:
        load_expert(name, "cpu", cache_dir=str(tmp_path / "hf" / "hub"))
    # fails fast: one hub check decides, and no connection or download is attempted after it
    assert len(hub_checks) == 1 and connects == [] and downloads == []
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and message.endswith(".")
    assert name in message and "'tiny'" in message


def test_cached_checkpoint_is_found_without_the_hub(tmp_path):
    from open_clip.pretrained import get_pretrained_cfg

    tag = get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    assert experts._cached_checkpoint(tag, str(tmp_path)) is None
    # the Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>}
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    weights = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    weights.write_bytes(b"")
    assert experts._cached_checkpoint(tag, str(tmp_path)) == str(weights)


def test_registry_names_exist_in_open_clip():
    import open_clip

    pretrained = set(open_clip.list_pretrained())
    real = [spec for spec in EXPERTS.values() if spec.pretrained is not None]
    assert {spec.name for spec in real} == {"clip-b32", "pe-core-b16"}
    for spec in real:
        assert (spec.model, spec.pretrained) in pretrained
        assert open_clip.get_model_config(spec.model)["embed_dim"] > 0
