"""The CLIP text encoder from a local folder: a tiny CLIP and its BPE tokenizer written by the
test (no download), frozen weights, the empty caption as CLIP's "", clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.data.sources.captioned_canvases import CAPTION_VOCABULARY
from models.backbone import DiscreteDiT, ModelConfig
from models.text import PAD, TextConfig, caption_tokenizer

LEFT = "a 3 to the left of a 7"
SWAPPED = "a 7 to the left of a 3"


def write_tiny_clip(folder: Path) -> Path:
    """A CLIP text model of tiny sizes and a BPE tokenizer over the caption words, written here."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges = []
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for word in CAPTION_VOCABULARY:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>"
    )
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_clip_text_encoder_from_a_local_folder(tmp_path: Path) -> None:
    path = write_tiny_clip(tmp_path / "clip")
    text = TextConfig(encoder="clip", path=str(path), max_length=12)
    ids = caption_tokenizer(text)([LEFT, SWAPPED, ""])  # (3, 12)
    assert (ids[2] == PAD).all() and (ids[0, :2] > 0).all() and (ids[0] == PAD).any()
    config = ModelConfig(vocab_size=5, grid=(4, 4), text=text, width=32, heads=2, depth=1)
    net = DiscreteDiT(config)
    assert not any(p.requires_grad for p in net.text.clip.parameters())  # frozen
    assert all(p.requires_grad for p in net.text.project_tokens.parameters())  # trained
    tokens, pooled = net.text(ids)
    assert tokens.shape == (3, 12, 32) and pooled.shape == (3, 32)
    assert (pooled[0] - pooled[1]).abs().max() > 1e-4
    # The null (all-PAD) caption is CLIP's encoding of "".
    clip_ids, mask = caption_tokenizer(text).clip_ids([""])
    expected = net.text.project_pooled(net.text.clip(input_ids=clip_ids, attention_mask=mask).pooler_output)
    torch.testing.assert_close(pooled[2:], expected)
    net.train()
    assert not net.text.clip.training
    with torch.device("meta"):  # plans count parameters without loading weights
        counted = sum(p.numel() for p in DiscreteDiT(config).parameters())
    assert counted == sum(p.numel() for p in net.parameters())
    c, prefix = net._condition(ids[:2], 2, torch.device("cpu"))  # what adaLN and the prefix get
    assert (c[0] - c[1]).abs().max() > 1e-4 and prefix.shape == (2, 12, 32)


def test_clip_missing_or_invalid_folder_fails_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"model.text.path: '{missing}'"):
        caption_tokenizer(TextConfig(encoder="clip", path=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    config = ModelConfig(vocab_size=5, grid=(4, 4), text=TextConfig(encoder="clip", path=str(empty)))
    with pytest.raises(ValueError, match=f"model.text.path: '{empty}' holds no loadable"):
        DiscreteDiT(config)
    with pytest.raises(ValueError, match="model.text.path"):
        TextConfig(encoder="clip")
    too_long = TextConfig(encoder="clip", path=str(write_tiny_clip(tmp_path / "clip")), max_length=17)
    with pytest.raises(ValueError, match="model.text.max_length: 17 exceeds the CLIP model's 16"):
        DiscreteDiT(ModelConfig(vocab_size=5, grid=(4, 4), text=too_long))


@pytest.mark.parametrize(
    ("removed", "what"),
    [((), None), (("config.json",), "config"), (("model.safetensors",), "weights"),
     (("tokenizer.json", "vocab.json"), "tokenizer")],
)  # fmt: skip
def test_a_clip_folder_without_its_files_is_refused_at_validation(tmp_path: Path, removed, what) -> None:
    """An empty or half-copied folder used to pass validation and fail when training loaded it."""
    from harness.config.trial import ConfigError, build_trial

    path = write_tiny_clip(tmp_path / "clip")
    for name in removed:
        (path / name).unlink()
    trial = {
        "data": {"name": "captioned-canvases", "options": {"num_train": 40}},
        "model": {"text": {"encoder": "clip", "path": str(path)}},
        "eval": {"metrics": ["fid"]},
    }
    if what is None:
        assert build_trial(trial).model.text["path"] == str(path)
    else:
        with pytest.raises(ConfigError, match=f"model.text.path: .* has no {what} file"):
            build_trial(trial)
