r"""BNNeck: the BN layer between a feature and its ID classifier (Luo et al., "Bag of tricks", 2019).

    f_bn   = BN(f)            (the feature used for retrieval and for the ranked list loss)
    logits = W f_bn           (FC without bias, N_id outputs; for the label-smoothed cross entropy)

The BN's shift is frozen at 0: with the shift learnable, the features would drift away from the
origin, which hurts the cosine/normalised-Euclidean metrics used on f_bn; the classifier has no bias
for the same reason (its decision boundaries then pass through the origin of the normalised space).
"""

from torch import nn


class BNNeck(nn.Module):
    """BatchNorm1d(dim) with a frozen zero bias, followed by Linear(dim, num_classes, bias=False).

    num_classes=None builds the BN only (no classifier): for feature extraction without training.
    forward(f) -> (f_bn, logits or None).
    """

    def __init__(self, dim, num_classes=None):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be a positive feature size, got {dim}")
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = None
        if num_classes is not None:
            if num_classes < 1:
                raise ValueError(f"num_classes must be a positive number of identities, got {num_classes}")
            self.classifier = nn.Linear(dim, num_classes, bias=False)
            # A small init keeps the initial logits near 0 (uniform softmax), the BNNeck convention.
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, f):
        f_bn = self.bn(f)
        logits = self.classifier(f_bn) if self.classifier is not None else None
        return f_bn, logits
