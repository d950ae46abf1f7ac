"""Reference "samplers" that need data, not a network: floors and ceilings for a benchmark.

- ``class_marginals``: every position drawn independently from its per-class token
  distribution on the training split (the trivial baseline: no token dependencies).
- ``heldout_tokens``: held-out images' own tokens (decoded: the tokenizer's reconstructions,
  the best a token model can reach), each image used once before any is repeated; a class
  with no held-out image (captioned canvases: 199 of 200 scenes are held out) takes its
  training images instead.
Both give class-balanced sets like ``harness.generation.sampling.generate``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.data.types import TokenDataset
from harness.generation.sampling import Generated, balanced_labels
from models.registry import Registry

BASELINES: Registry = Registry("baseline sampler")


@BASELINES.register("class_marginals")
def class_marginals(
    train: TokenDataset, heldout: TokenDataset, num_samples: int, seed: int, allowed: Tensor | None = None
) -> Generated:
    """x^i ~ p(x^i | class) independently per position i, from training counts (add-one smoothed
    over ``allowed`` (L, V), the codes each position may take: a joint dataset's position only its
    own modality's; None: every code)."""
    g = torch.Generator().manual_seed(seed)
    labels = balanced_labels(num_samples, train.num_classes)
    classes = labels if labels is not None else torch.zeros(num_samples, dtype=torch.long)
    train_classes = train.labels if labels is not None else torch.zeros(len(train), dtype=torch.long)
    V, L = train.vocab_size, train.seq_len
    prior = torch.ones(L, V) if allowed is None else allowed[:, :V].float()  # (L, V)
    counts = prior.repeat(max(1, train.num_classes), 1, 1)  # (C, L, V)
    index = train_classes[:, None].expand(-1, L) * L * V + torch.arange(L) * V + train.tokens  # (N, L)
    counts.view(-1).index_add_(0, index.flatten(), torch.ones(index.numel()))
    probs = counts[classes]  # (S, L, V)
    tokens = torch.multinomial(probs.view(-1, V), 1, generator=g).view(num_samples, L)
    return Generated(tokens, labels, nfe=0, nfe_unbatched=0, seconds=0.0)


@BASELINES.register("heldout_tokens")
def heldout_tokens(
    train: TokenDataset, heldout: TokenDataset, num_samples: int, seed: int, allowed: Tensor | None = None
) -> Generated:
    """A seeded, class-balanced draw of held-out images' tokens: each class's images in a random
    order, repeated in new random orders only when the class needs more samples than it has."""
    g = torch.Generator().manual_seed(seed)
    labels = balanced_labels(num_samples, heldout.num_classes)
    classes = labels if labels is not None else torch.zeros(num_samples, dtype=torch.long)
    pools = heldout.labels if labels is not None else torch.zeros(len(heldout), dtype=torch.long)
    tokens = heldout.tokens
    idx = torch.empty(num_samples, dtype=torch.long)
    for c in classes.unique().tolist():
        pool = (pools == c).nonzero().flatten()
        if len(pool) == 0:  # no held-out image of class c: its training images, appended
            extra = train.tokens[train.labels == c]
            if len(extra) == 0:
                raise ValueError(f"heldout_tokens: class {c} has no image in the held-out or training split")
            pool = torch.arange(len(tokens), len(tokens) + len(extra))
            tokens = torch.cat([tokens, extra])
        rows = (classes == c).nonzero().flatten()
        repeats = -(-len(rows) // len(pool))  # ceil
        order = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(repeats)])
        idx[rows] = order[: len(rows)]
    return Generated(tokens[idx], labels, nfe=0, nfe_unbatched=0, seconds=0.0)
