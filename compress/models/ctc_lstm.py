"""``CTCLSTM``: strided-conv front end, (bi)LSTM encoder, linear CTC head.

The quick default model: on 2 CPU cores it trains on the built-in corpus in minutes.
Frames are subsampled 4x (100 Hz -> 25 Hz) before the LSTM, which is where the time goes.
But fast speech has up to ~30 characters per second, more than 25 Hz frames can carry
(CTC needs one frame per character, plus a blank between repeats), so the head emits
``upsample`` CTC frames per LSTM frame: a Linear to ``upsample * vocab_size`` outputs,
reshaped to 50 Hz. The LSTM stays cheap and CTC gets enough slots.

Example:
    >>> import torch
    >>> m = CTCLSTM(hidden_size=32, num_layers=1, conv_channels=32)
    >>> log_probs, n = m(torch.randn(2, 100, 80), torch.tensor([100, 80]))
    >>> tuple(log_probs.shape), n.tolist()
    ((2, 50, 29), [50, 40])
    >>> len(m.transcribe(torch.randn(2, 100, 80), torch.tensor([100, 80])))
    2
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from compress.checks import check_int
from compress.data.text import VOCAB_SIZE
from compress.models.base import ConvSubsampling, CTCMixin, SpeechModel, check_common
from compress.models.lstm import run_lstm


class CTCLSTM(CTCMixin, SpeechModel):
    """Conv subsampling + LSTM + CTC.

    Args:
        vocab_size: output symbols including the blank (the character vocabulary's 29).
        n_mels: input feature size.
        subsample: time subsampling of the front end (1, 2, 4 or 8).
        conv_channels: front-end width.
        hidden_size: LSTM units per direction. 192 x 2 layers (1.8M parameters): the
            default run (6 epochs of 16-utterance batches) trains in about 6 minutes on
            2 CPU cores; a 128-wide model is cheaper per step but learned less in the
            same time (docs/performance.md).
        num_layers: LSTM layers.
        bidirectional: read utterances both ways (commands are short, so latency is small).
        dropout: between LSTM layers and before the head.
        lr: peak learning rate of the one-cycle schedule (high: few epochs, Adam-stable).
        weight_decay: AdamW decay of matrices.
        schedule: ``onecycle``, ``cosine`` or ``constant``.
        warmup_pct: fraction of steps spent warming up (one-cycle: then cosine to ~0).
        upsample: CTC frames emitted per LSTM frame (see the module docstring).
    """

    def __init__(self, vocab_size: int = VOCAB_SIZE, n_mels: int = 80, subsample: int = 4,
                 conv_channels: int = 192, hidden_size: int = 192, num_layers: int = 2,
                 bidirectional: bool = True, dropout: float = 0.1, lr: float = 5e-3,
                 weight_decay: float = 1e-2, schedule: str = "onecycle", warmup_pct: float = 0.1,
                 upsample: int = 2):
        super().__init__()
        check_common(vocab_size, lr, weight_decay, schedule, warmup_pct)
        for name, v in (("n_mels", n_mels), ("conv_channels", conv_channels),
                        ("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("upsample", upsample)):
            check_int(name, v, min=1)
        self.save_hyperparameters()
        self.frontend = ConvSubsampling(n_mels, conv_channels, subsample)
        self.lstm = nn.LSTM(conv_channels, hidden_size, num_layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), vocab_size * upsample)

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor):
        x, lengths = self.frontend(features, feature_lengths)  # (B, T', C)
        if torch.jit.is_tracing():
            # The exporter maps a packed nn.LSTM onto the ONNX LSTM op with sequence lengths.
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T', H*dirs)
        else:
            # The same on every frame within a length, from padded (fused, faster) calls.
            out = run_lstm(self.lstm, x, lengths)  # (B, T', H*dirs)
        B, T, _ = out.shape
        logits = self.head(self.dropout(out)).reshape(B, T * self.hparams.upsample, -1)  # (B, T'*k, V)
        return logits.log_softmax(-1), lengths * self.hparams.upsample
