"""``ConformerCTC``: strided-conv front end, ``torchaudio.models.Conformer``, linear CTC head.

Conformer (Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for Speech
Recognition") blocks are feed-forward / self-attention / depthwise-conv / feed-forward;
their matrices are nn.Linear, nn.MultiheadAttention and nn.Conv1d, which the compression
callbacks target.

Example:
    >>> import torch
    >>> m = ConformerCTC(d_model=32, num_heads=2, ffn_dim=64, num_layers=1, conv_channels=32)
    >>> log_probs, n = m(torch.randn(2, 100, 80), torch.tensor([100, 80]))
    >>> tuple(log_probs.shape), n.tolist()
    ((2, 25, 29), [25, 20])
"""

from __future__ import annotations

import torch
from torch import nn

from compress.checks import fail
from compress.data.text import VOCAB_SIZE
from compress.models.base import ConvSubsampling, CTCMixin, SpeechModel, check_common


class ConformerCTC(CTCMixin, SpeechModel):
    """Conv subsampling + Conformer encoder + CTC.

    Args:
        vocab_size: output symbols including the blank.
        n_mels: input feature size.
        subsample: time subsampling of the front end (1, 2, 4 or 8).
        conv_channels: front-end width.
        d_model: Conformer width (must be divisible by ``num_heads``).
        num_heads: attention heads.
        ffn_dim: feed-forward width (4x ``d_model`` is the paper's choice).
        num_layers: Conformer blocks.
        kernel_size: depthwise convolution kernel (odd); 15 frames = 0.6 s at 25 Hz.
        dropout: inside the blocks.
        lr, weight_decay, schedule, warmup_pct: see ``SpeechModel.configure_optimizers``.
    """

    def __init__(self, vocab_size: int = VOCAB_SIZE, n_mels: int = 80, subsample: int = 4,
                 conv_channels: int = 144, d_model: int = 144, num_heads: int = 4,
                 ffn_dim: int = 576, num_layers: int = 4, kernel_size: int = 15,
                 dropout: float = 0.1, lr: float = 2e-3, weight_decay: float = 1e-2,
                 schedule: str = "onecycle", warmup_pct: float = 0.15):
        super().__init__()
        check_common(vocab_size, lr, weight_decay, schedule, warmup_pct)
        if d_model % num_heads:
            fail("d_model", f"a multiple of num_heads ({num_heads})", d_model)
        if kernel_size % 2 == 0:
            fail("kernel_size", "an odd integer", kernel_size)
        self.save_hyperparameters()
        import torchaudio

        self.frontend = ConvSubsampling(n_mels, conv_channels, subsample)
        self.proj = nn.Linear(conv_channels, d_model)
        self.encoder = torchaudio.models.Conformer(
            input_dim=d_model, num_heads=num_heads, ffn_dim=ffn_dim, num_layers=num_layers,
            depthwise_conv_kernel_size=kernel_size, dropout=dropout)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor):
        x, lengths = self.frontend(features, feature_lengths)  # (B, T', C)
        x = self.proj(x[:, : lengths.max()])  # Conformer's mask spans max(lengths) frames
        x, lengths = self.encoder(x, lengths)  # (B, T', D)
        return self.head(x).log_softmax(-1), lengths  # (B, T', V)
