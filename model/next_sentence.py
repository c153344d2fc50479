"""BERT's next-sentence prediction: the first token's final state through a pooler (dense, tanh),
then a 2-way classifier. Label 0: the second segment continues the first; 1: it comes from
another document (data/samples/pairs.py's IS_NEXT, IS_RANDOM: transformers' convention, so BertForPreTraining's
weights and labels carry over)."""
import torch
from torch import nn

from model.config import LMConfig


class NextSentenceHead(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.pooler = nn.Linear(cfg.dim, cfg.dim)
        self.classifier = nn.Linear(cfg.dim, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [B, 2] from hidden states [B, T, dim]."""
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))
