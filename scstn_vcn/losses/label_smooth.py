r"""Label-smoothed cross entropy (Szegedy et al., 2016; the BNNeck baseline's L_id).

For logits z (B, N) and labels y (B,):

    p      = softmax(z)
    q_n    = (1 - eps) [n == y] + eps / N
    L      = (1 / B) \sum_b \sum_n -q_{b,n} log p_{b,n}

eps = 0.1 as in the BNNeck recipe the paper follows.
"""

import torch
from torch import nn


class CrossEntropyLabelSmooth(nn.Module):
    """CrossEntropyLabelSmooth(num_classes, epsilon=0.1)(logits (B, N), labels (B,)) -> scalar."""

    def __init__(self, num_classes, epsilon=0.1):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
        self.num_classes = num_classes
        self.epsilon = float(epsilon)

    def forward(self, logits, labels):
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (B, num_classes={self.num_classes}), got {tuple(logits.shape)}")
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"labels must have shape (B,) = ({logits.shape[0]},), got {tuple(labels.shape)}")
        # A label out of range would make gather fail with a bare index error (a device assert on CUDA);
        # the value check is skipped while torch.compile traces, where it would break the graph.
        if (
            not torch.compiler.is_compiling()
            and labels.numel()
            and (labels.min() < 0 or labels.max() >= self.num_classes)
        ):
            raise ValueError(
                f"labels must be in [0, {self.num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        # float16/bfloat16 logits are upcast for the log-softmax; float32 and float64 keep their precision
        compute = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        log_p = torch.log_softmax(compute, dim=1)
        # -sum_n q_n log p_n = (1 - eps) * (-log p_y) + eps * mean_n(-log p_n)
        nll = -log_p.gather(1, labels.view(-1, 1)).squeeze(1)
        uniform = -log_p.mean(dim=1)
        return ((1.0 - self.epsilon) * nll + self.epsilon * uniform).mean()
