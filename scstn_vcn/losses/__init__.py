"""Losses: label-smoothed cross entropy, ranked list loss, and their Eq. 8 combination (ReIDLoss)."""

from scstn_vcn.losses.label_smooth import CrossEntropyLabelSmooth
from scstn_vcn.losses.ranked_list import RankedListLoss
from scstn_vcn.losses.reid_loss import ReIDLoss

__all__ = ["CrossEntropyLabelSmooth", "RankedListLoss", "ReIDLoss"]
