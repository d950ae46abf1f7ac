"""Captions as the condition: caption ids -> (token features (B, S, D), pooled (B, D)).

Caption ids (B, S) are long, 0 is padding, so the empty caption (all 0) is the null condition
of classifier-free guidance for every encoder: ``torch.full_like(y, PAD)`` builds it, as
``torch.full_like(y, null_class)`` builds a class model's (``ModelConfig.null_class`` is PAD).

- ``learned``: a word-level tokenizer over the caption vocabulary (ids 2.. for the words,
  1 unknown) and a small transformer trained with the model: word embedding + learned
  positions -> ``depth`` pre-norm layers -> LayerNorm; pooled = the mean over the S positions.
  Pads are not masked out (the empty caption must still have features: a learned null).
- ``clip``: a pretrained CLIP text model and its BPE tokenizer loaded from a local folder
  (transformers, ``local_files_only``), frozen; our ids are CLIP's ids + 1 on attended
  positions (0 stays padding) and the all-pad caption is CLIP's encoding of "". Token
  features = last hidden states, pooled = CLIP's pooled (EOS) output, each through a trained
  linear map to the model width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.registry import check_keys

TEXT_ENCODERS = ("learned", "clip")
PAD, UNKNOWN = 0, 1  # caption ids; words of a learned vocabulary start at 2


@dataclass(frozen=True)
class TextConfig:
    """The text encoder of a model (``ModelConfig.text``); checkpoints carry it.

    encoder: "learned" or "clip". max_length: S, caption ids per caption (words for learned;
    CLIP tokens with BOS and EOS). vocabulary: the learned encoder's words (filled from the
    captioned dataset). depth / heads: the learned encoder's layers. path: the local folder
    of the CLIP text model and tokenizer. prefix: the caption's token features enter the
    sequence as an in-context prefix (False: the pooled features in adaLN only).
    """

    encoder: str = "learned"
    max_length: int = 12
    vocabulary: tuple[str, ...] = ()
    depth: int = 2
    heads: int = 4
    path: str | None = None
    prefix: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        if self.encoder not in TEXT_ENCODERS:
            raise ValueError(f"model.text.encoder: unknown {self.encoder!r}; expected one of {TEXT_ENCODERS}")
        if self.max_length < 1 or self.depth < 1 or self.heads < 1:
            raise ValueError(
                f"model.text: max_length, depth and heads must be >= 1, got "
                f"{self.max_length}, {self.depth}, {self.heads}"
            )
        if self.encoder == "clip" and not self.path:
            raise ValueError("model.text.path: a clip encoder needs the local folder of a CLIP text model")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vocabulary"] = list(self.vocabulary)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TextConfig:
        check_keys("model.text", d, cls)
        return cls(**d)


class WordTokenizer:
    """captions -> (B, S) ids: word w -> 2 + its index in the vocabulary, unknown -> 1, pad -> 0."""

    def __init__(self, vocabulary: Sequence[str], max_length: int) -> None:
        if not vocabulary:
            raise ValueError(
                "model.text.vocabulary is empty: a learned text encoder needs the caption vocabulary "
                "(filled in from a captioned dataset)"
            )
        self.ids = {word: 2 + i for i, word in enumerate(vocabulary)}
        self.max_length = max_length

    def __call__(self, captions: Sequence[str]) -> Tensor:
        out = torch.full((len(captions), self.max_length), PAD, dtype=torch.long)  # (B, S)
        for row, text in enumerate(captions):
            words = text.split()
            if len(words) > self.max_length:
                raise ValueError(
                    f"caption {text!r} has {len(words)} words; model.text.max_length is {self.max_length}"
                )
            out[row, : len(words)] = torch.tensor([self.ids.get(w, UNKNOWN) for w in words], dtype=torch.long)
        return out


class ClipCaptionTokenizer:
    """captions -> (B, S) ids: CLIP's BPE ids + 1 where attended, 0 elsewhere; "" -> all 0."""

    def __init__(self, path: str, max_length: int) -> None:
        from transformers import CLIPTokenizer

        self.tokenizer = _load(CLIPTokenizer, path)
        self.max_length = max_length

    def clip_ids(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """CLIP's own (input_ids, attention_mask), each (B, S)."""
        enc = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def __call__(self, captions: Sequence[str]) -> Tensor:
        ids, attended = self.clip_ids(captions)
        empty = torch.tensor([not text.strip() for text in captions])  # (B,)
        return torch.where(empty[:, None], PAD, (ids + 1) * attended)  # (B, S)


def caption_tokenizer(config: TextConfig) -> WordTokenizer | ClipCaptionTokenizer:
    """The tokenizer that turns captions into the ids the model's encoder reads."""
    if config.encoder == "clip":
        return ClipCaptionTokenizer(config.path, config.max_length)
    return WordTokenizer(config.vocabulary, config.max_length)


def _check_length(ids: Tensor, config: TextConfig) -> None:
    if ids.dim() != 2 or ids.shape[1] != config.max_length:
        raise ValueError(
            f"caption ids have shape {tuple(ids.shape)}; expected (B, {config.max_length}) "
            f"(model.text.max_length)"
        )


class LearnedTextEncoder(nn.Module):
    """ids (B, S) -> (LayerNorm(h) (B, S, D), mean_s LayerNorm(h) (B, D)), h a small transformer's output."""

    def __init__(self, config: TextConfig, width: int) -> None:
        super().__init__()
        if width % config.heads:
            raise ValueError(f"model.text.heads: {config.heads} does not divide the model width {width}")
        WordTokenizer(config.vocabulary, config.max_length)  # an empty vocabulary fails here
        self.config = config
        self.embed = nn.Embedding(2 + len(config.vocabulary), width)
        # Positions on the scale of the N(0, 1) word embeddings: at the usual 0.02 the words drown
        # them and the encoder is a bag of words ("a 3 left of a 7" read as "a 7 left of a 3").
        self.positions = nn.Parameter(torch.randn(config.max_length, width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, config.heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        _check_length(ids, self.config)
        h = self.embed(ids) + self.positions[None]  # (B, S, D)
        for layer in self.layers:
            h = layer(h)
        tokens = self.norm(h)  # (B, S, D)
        return tokens, tokens.mean(dim=1)


class ClipTextEncoder(nn.Module):
    """A frozen local CLIP text model; trained linear maps of its token and pooled features to D."""

    def __init__(self, config: TextConfig, width: int) -> None:
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        self.config = config
        if torch.empty(0).device.type == "meta":  # counting parameters (plans): the architecture only
            clip = CLIPTextModel(_load(CLIPTextConfig, config.path))
        else:
            clip = _load(CLIPTextModel, config.path)
        self.clip = clip.requires_grad_(False).eval()
        if config.max_length > clip.config.max_position_embeddings:
            raise ValueError(
                f"model.text.max_length: {config.max_length} exceeds the CLIP model's "
                f"{clip.config.max_position_embeddings} positions"
            )
        tokenizer = ClipCaptionTokenizer(config.path, config.max_length)
        empty_ids, empty_mask = tokenizer.clip_ids([""])  # (1, S) each
        self.register_buffer("empty_ids", (empty_ids + 1) * empty_mask, persistent=False)
        self.pad_id = int(tokenizer.tokenizer.pad_token_id)
        hidden = self.clip.config.hidden_size
        self.project_tokens = nn.Linear(hidden, width)
        self.project_pooled = nn.Linear(hidden, width)

    def train(self, mode: bool = True) -> ClipTextEncoder:
        super().train(mode)
        self.clip.eval()  # frozen: never in training mode
        return self

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        _check_length(ids, self.config)
        empty = (ids == PAD).all(dim=1, keepdim=True)  # (B, 1)
        ids = torch.where(empty, self.empty_ids, ids)  # the null caption is CLIP's ""
        attended = ids != PAD  # (B, S)
        clip_ids = torch.where(attended, ids - 1, self.pad_id)  # (B, S)
        with torch.no_grad():
            out = self.clip(input_ids=clip_ids, attention_mask=attended.long())
        tokens = out.last_hidden_state.float()  # (B, S, hidden)
        return self.project_tokens(tokens), self.project_pooled(out.pooler_output.float())


CLIP_FILES = {
    "config": ("config.json",),
    "weights": ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),
    "tokenizer": ("tokenizer.json", "vocab.json"),
}


def clip_folder_problem(path: str) -> str | None:
    """What a local CLIP text model folder lacks (its config, weights, tokenizer), or None; read
    from the file names alone, so that a study is refused before it trains, not when it loads."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"model.text.path: {str(path)!r} is not a folder (a local CLIP text model)"
    for what, names in CLIP_FILES.items():
        if not any((folder / name).is_file() for name in names):
            return f"model.text.path: {str(folder)!r} has no {what} file; expected one of {list(names)}"
    return None


def _load(cls: type, path: str):
    """``cls.from_pretrained(path)`` from local files only; errors name the path."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model.text.path: {str(folder)!r} is not a folder; expected a local CLIP text model "
            "(config.json and weights) with its tokenizer (vocab.json, merges.txt)"
        )
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"model.text.path: {str(folder)!r} holds no loadable {cls.__name__}: {err}") from err


def build_text_encoder(config: TextConfig, width: int) -> LearnedTextEncoder | ClipTextEncoder:
    if config.encoder == "clip":
        return ClipTextEncoder(config, width)
    return LearnedTextEncoder(config, width)


__all__ = [
    "PAD",
    "TEXT_ENCODERS",
    "ClipCaptionTokenizer",
    "ClipTextEncoder",
    "LearnedTextEncoder",
    "TextConfig",
    "WordTokenizer",
    "build_text_encoder",
    "caption_tokenizer",
]
