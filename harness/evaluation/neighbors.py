"""k-nearest-neighbour balls of feature sets, and improved precision / recall from them.

Kynkaanniemi et al. (2019): the radius r_k(x) of a feature x of a set is its distance to its
k-th nearest neighbour in that set (itself excluded), and

    precision = mean_{g in G} [exists r in R: ||g - r|| <= r_k(r)]
    recall    = mean_{r in R} [exists g in G: ||r - g|| <= r_k(g)]

for generated features G and reference features R. The arithmetic is torch-fidelity's
(``metric_prc``: float32 ``torch.cdist`` in blocks of ``BLOCK`` rows, ``kthvalue``, a float32
mean), so the values equal those of ``prc_features_to_metric``, split in two so that the
reference radii are computed once and cached with the reference statistics, and one
reference-generated distance matrix serves both precision and recall.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

BLOCK = 10000  # torch-fidelity's prc_batch_size: the block shape enters the float32 rounding


def knn_radii(features: Tensor, k: int) -> Tensor:
    """r_k (N,) float32: the distance of each feature (N, D) to its k-th nearest neighbour in the set.

    ``kthvalue(k + 1)`` counts the feature's distance to itself as the first neighbour.
    """
    if not 1 <= k < features.shape[0]:
        raise ValueError(f"k-NN radii need 1 <= k < N; got k = {k} for N = {features.shape[0]}")
    from torch_fidelity.metric_prc import calc_cdist_full  # torch-fidelity imports torchvision: seconds

    x = features.float()
    return calc_cdist_full(x, x, BLOCK).kthvalue(k + 1).values  # (N, N) -> (N,)


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float


def precision_recall(
    generated: Tensor, generated_radii: Tensor, reference: Tensor, reference_radii: Tensor
) -> PrecisionRecall:
    """Both from one distance matrix; generated (G, D) with radii (G,), reference (R, D) with radii (R,)."""
    from torch_fidelity.metric_prc import calc_cdist_full

    d_ref_gen = calc_cdist_full(reference.float(), generated.float(), BLOCK)  # (R, G)
    recall = (d_ref_gen <= generated_radii).any(dim=1).float().mean().item()
    precision = (d_ref_gen.T <= reference_radii).any(dim=1).float().mean().item()
    return PrecisionRecall(precision, recall)
