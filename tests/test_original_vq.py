"""VQ tokenizers from original-format checkpoints (LDM / taming key names) load into diffusers' VQModel.

Small stand-ins of the same block structure (3 levels, 2 ResNet blocks, attention at the lowest
resolution, GroupNorm(4)); the weights are written under original names by the test's own,
enumerated layout (``tests/ldm_reference.py``), and an independent functional forward of the
original network checks that each tensor landed in the right module.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
import yaml
from ldm_reference import ldm_decode, ldm_encode, ldm_names, random_ldm_state
from safetensors.torch import save_file
from sampler_stubs import one_thread  # noqa: F401  (autouse: tiny convolutions, loaded cores)

from harness.data.tokenizers.original_vq import VQ_PRESETS, OriginalVQConfig, ldm_name, read_vq_config
from harness.data.tokenizers.pretrained_vq import PretrainedWeightsError, build_tokenizer, load_original_vq
from harness.errors import UserError

CFG = OriginalVQConfig(n_embed=32, embed_dim=4, z_channels=4, ch=8, ch_mult=(1, 2, 2), num_res_blocks=2,
                       attn_resolutions=(4,), resolution=16, norm_num_groups=4)  # fmt: skip


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_original_checkpoint_computes_what_the_original_network_computes(tmp_path) -> None:
    state, x = random_ldm_state(CFG, seed=0), _images(4, seed=1)
    z_ref, _ = ldm_encode(state, CFG, x * 2 - 1)  # (4, 4, 4, 4)
    codes = z_ref.permute(0, 2, 3, 1).reshape(-1, 4)[
        torch.randperm(64, generator=torch.Generator().manual_seed(2))
    ]
    state["quantize.embedding.weight"] = codes[:32] + 0.01  # codes where the latents are: many are used
    _, tokens_ref = ldm_encode(state, CFG, x * 2 - 1)
    junk = {"loss.discriminator.main.0.weight": torch.zeros(2), "loss.logvar": torch.zeros(())}
    torch.save({"state_dict": {**state, **junk}, "global_step": 7}, tmp_path / "model.ckpt")
    tok = load_original_vq(tmp_path / "model.ckpt", image_size=16, config=CFG.to_dict())
    assert tok.grid == (4, 4) and tok.vocab_size == 32
    with torch.no_grad():
        torch.testing.assert_close(tok.model.encode(x * 2 - 1).latents, z_ref, atol=1e-4, rtol=1e-4)
    tokens = tok.encode(x)
    assert tokens.dtype == torch.long and tokens.shape == (4, 16)
    assert torch.equal(tokens, tokens_ref)
    assert len(torch.unique(tokens)) > 10  # a degenerate code assignment would hide a wrong layer
    images = tok.decode(tokens)
    expected = ((ldm_decode(state, CFG, tokens, grid=4) + 1) / 2).clamp(0, 1)
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    torch.testing.assert_close(images, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_diffusers_weights_under_original_names_load_back_equal(tmp_path, suffix) -> None:
    torch.manual_seed(3)
    model = diffusers.VQModel(**CFG.diffusers_kwargs())
    ours = model.state_dict()
    names = ldm_names(CFG)
    assert {ldm_name(k, len(CFG.ch_mult)) for k in ours} == set(names)  # the loader's map, onto the layout
    original = {o: ours[d].reshape(shape).contiguous() for o, (d, shape) in names.items()}
    path = tmp_path / f"vq{suffix}"
    save_file(original, path) if suffix == ".safetensors" else torch.save(original, path)
    tok = load_original_vq(path, image_size=16, config=CFG.to_dict())
    loaded = tok.model.state_dict()
    assert set(loaded) == set(ours)
    for key, value in ours.items():
        assert torch.equal(loaded[key], value), key
    tokens = tok.encode(_images(3, seed=4))
    assert tokens.shape == (3, 16) and tokens.dtype == torch.long
    images = tok.decode(tokens)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    with torch.no_grad():
        expected = ((model(_images(3, seed=4) * 2 - 1).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=1e-4)


def test_bad_checkpoints_name_the_file_and_the_keys(tmp_path) -> None:
    state = random_ldm_state(CFG, seed=0)
    path = tmp_path / "model.ckpt"
    with pytest.raises(PretrainedWeightsError, match="no such weights file"):
        load_original_vq(path, 16, config=CFG.to_dict())
    torch.save({k: v for k, v in state.items() if k != "decoder.up.1.block.2.conv1.weight"}, path)
    with pytest.raises(
        PretrainedWeightsError, match=r"model.ckpt.*missing.*decoder.up.1.block.2.conv1.weight"
    ):
        load_original_vq(path, 16, config=CFG.to_dict())
    torch.save({**state, "encoder.extra.weight": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsError, match=r"unexpected keys \['encoder.extra.weight'\]"):
        load_original_vq(path, 16, config=CFG.to_dict())
    torch.save({**state, "quantize.embedding.weight": torch.zeros(31, 4)}, path)
    with pytest.raises(
        PretrainedWeightsError, match=r"quantize.embedding.weight \(31, 4\) \(expected \(32, 4\)\)"
    ):
        load_original_vq(path, 16, config=CFG.to_dict())
    torch.save({"state_dict": state, "callback": torch.nn.Identity()}, path)  # a pickled module
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        load_original_vq(path, 16, config=CFG.to_dict())
    with pytest.raises(ValueError, match="exactly one of --tokenizer-preset"):
        load_original_vq(path, 16)
    with pytest.raises(UserError, match="unknown tokenizer preset 'ldm-vq-f4'.*ldm-vq-f8"):
        load_original_vq(path, 16, preset="ldm-vq-f4")


@pytest.mark.parametrize("preset", VQ_PRESETS.names())
def test_presets_build_the_original_layout(preset) -> None:
    cfg = VQ_PRESETS[preset]()
    with torch.device("meta"):  # the real sizes, without allocating them
        model = diffusers.VQModel(**cfg.diffusers_kwargs())
    names = ldm_names(cfg)
    for key, value in model.state_dict().items():
        original = ldm_name(key, len(cfg.ch_mult))
        assert names[original][0] == key and value.numel() == torch.Size(names[original][1]).numel()
    assert len(names) == len(model.state_dict())
    assert sum(cfg.has_attention(i) for i in range(len(cfg.ch_mult))) == 1  # at the lowest resolution only
    assert cfg.has_attention(len(cfg.ch_mult) - 1)


def test_architecture_from_the_original_yaml_or_flat_json(tmp_path) -> None:
    original = {"model": {"target": "ldm.models.autoencoder.VQModel", "params": {
        "embed_dim": 4, "n_embed": 16384, "monitor": "val/rec_loss", "lossconfig": {"target": "x"},
        "ddconfig": {"double_z": False, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                     "ch": 128, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [32],
                     "dropout": 0.0}}}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(original))
    assert read_vq_config(tmp_path / "config.yaml") == VQ_PRESETS["ldm-vq-f8"]()
    (tmp_path / "flat.json").write_text('{"n_embed": 8, "embed_dim": 2, "z_channels": 2, "chmult": [1]}')
    with pytest.raises(ValueError, match=r"flat.json: unknown keys \['chmult'\]"):
        read_vq_config(tmp_path / "flat.json")
    spec = {"kind": "original-vq", "path": "nowhere.ckpt", "image_size": 16, "arch": CFG.to_dict()}
    with pytest.raises(PretrainedWeightsError, match="nowhere.ckpt"):
        build_tokenizer(spec, root=tmp_path)
