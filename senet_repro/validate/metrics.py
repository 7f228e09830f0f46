"""Top-k counting with Caffe's Accuracy-layer rule, kept on the device until the end.

A prediction is top-k correct when fewer than k classes score *strictly* higher than
the true class (Caffe's `AccuracyLayer`). Unlike `torch.topk` this does not depend on
how ties are broken, so every backend and device counts the same. A row with a
non-finite score, and an unreadable image, count as wrong.
"""

from __future__ import annotations

import torch

KS = (1, 5)


def correct_at_k(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = KS) -> torch.Tensor:
    """Bool (N, len(ks)): whether each image is correct within each k."""
    scores = logits.float()
    true_score = scores.gather(1, labels.view(-1, 1))
    higher = (scores > true_score).sum(dim=1)
    finite = torch.isfinite(scores).all(dim=1)
    return torch.stack([(higher < k) & finite for k in ks], dim=1)


class TopKCounter:
    """Running counts [images, top-1 correct, top-5 correct] as one int64 tensor on `device`."""

    def __init__(self, device: torch.device) -> None:
        self.counts = torch.zeros(1 + len(KS), dtype=torch.int64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, readable: torch.Tensor) -> None:
        """Add a batch; `readable` (bool, N) marks images that were decoded."""
        correct = correct_at_k(logits, labels) & readable.view(-1, 1)
        self.counts[0] += labels.numel()
        self.counts[1:] += correct.sum(dim=0)
