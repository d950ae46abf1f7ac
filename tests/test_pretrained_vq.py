"""Pretrained VQ tokenizers in diffusers' format: a small random VQModel of the same architecture,
saved by the test, loads from its folder, round-trips shapes and dtypes, and decodes shard tokens."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch
from sampler_stubs import one_thread  # noqa: F401  (autouse: tiny convolutions, loaded cores)

from harness.data.registry import load_dataset
from harness.data.sources.shards import write_shards
from harness.data.tokenizers.pretrained_vq import PretrainedWeightsError, load_diffusers_vq


@pytest.fixture(scope="module")
def vq_folder(tmp_path_factory):
    """A VQ-f2 with 32 codes (the VQ-f8's layout, smaller), saved with save_pretrained."""
    torch.manual_seed(0)
    model = diffusers.VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=32,
        vq_embed_dim=4,
        norm_num_groups=8,
    )
    folder = tmp_path_factory.mktemp("vq") / "vq"
    model.save_pretrained(folder)
    return folder, model.eval()


def test_round_trip_matches_the_models_own_reconstruction(vq_folder) -> None:
    folder, model = vq_folder
    tok = load_diffusers_vq(folder, image_size=16)
    assert tok.grid == (8, 8) and tok.vocab_size == 32
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    tokens = tok.encode(x)
    assert tokens.shape == (3, 64) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 32
    images = tok.decode(tokens)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    with torch.no_grad():
        expected = ((model(x * 2 - 1).sample + 1) / 2).clamp(0, 1)  # encode, quantise, decode
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tok.encode(images[:0]), torch.zeros(0, 64, dtype=torch.long))


def test_missing_folder_names_what_is_needed(tmp_path) -> None:
    with pytest.raises(PretrainedWeightsError, match="config.json"):
        load_diffusers_vq(tmp_path / "nothing", image_size=256)


def test_shards_decode_through_the_tokenizer_their_manifest_names(vq_folder, tmp_path) -> None:
    folder, _ = vq_folder
    tok = load_diffusers_vq(folder, image_size=16)
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    tokens = tok.encode(x).numpy()
    root = write_shards(
        tmp_path / "shards", {"train": (tokens, np.arange(5) % 2)}, grid=(8, 8), vocab_size=32, num_classes=2
    )
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["tokenizer"] = {"kind": "diffusers-vq", "path": str(folder), "image_size": 16}
    (root / "manifest.json").write_text(json.dumps(manifest))
    data = load_dataset("shards", "train", path=str(root), grid=[8, 8], vocab_size=32, num_classes=2)
    torch.testing.assert_close(data.images(), tok.decode(torch.from_numpy(tokens)))
