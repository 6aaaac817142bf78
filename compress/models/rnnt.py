"""``RNNT``: LSTM encoder, LSTM prediction network, additive joiner, RNN-T loss.

The transducer (Graves 2012, "Sequence Transduction with Recurrent Neural Networks")
scores every (frame t, emitted-prefix u) pair: ``joint(enc[t], pred[u])`` gives a
distribution over the vocabulary, blank meaning "advance to the next frame". The loss is
``torchaudio.functional.rnnt_loss``; decoding is greedy (at each frame emit the arg-max
symbol until blank, at most ``max_symbols`` per frame). The blank id 0 also serves as the
prediction network's start-of-sequence input.

Example:
    >>> import torch
    >>> m = RNNT(encoder_hidden=32, encoder_layers=1, pred_hidden=16, joint_dim=16, conv_channels=32)
    >>> enc, n = m(torch.randn(2, 100, 80), torch.tensor([100, 80]))
    >>> tuple(enc.shape), n.tolist()
    ((2, 25, 32), [25, 20])
    >>> len(m.transcribe(torch.randn(2, 100, 80), torch.tensor([100, 80])))
    2
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from compress.data.text import BLANK, VOCAB_SIZE, decode
from compress.models.base import ConvSubsampling, SpeechModel, check_common


class RNNT(SpeechModel):
    """Conv subsampling + LSTM encoder, LSTM predictor, joiner, RNN-T loss.

    Args:
        vocab_size: output symbols including the blank.
        n_mels: input feature size.
        subsample: time subsampling of the front end (1, 2 or 4).
        conv_channels: front-end width.
        encoder_hidden: encoder LSTM units (one direction: streamable, as on a device).
        encoder_layers: encoder LSTM layers.
        embed_dim: prediction-network symbol embedding size.
        pred_hidden: prediction-network LSTM units.
        joint_dim: joiner width.
        dropout: between encoder layers.
        max_symbols: most symbols greedy decoding emits per frame (guards against loops).
        lr, weight_decay, schedule, warmup_pct: see ``SpeechModel.configure_optimizers``.
    """

    def __init__(self, vocab_size: int = VOCAB_SIZE, n_mels: int = 80, subsample: int = 4,
                 conv_channels: int = 256, encoder_hidden: int = 320, encoder_layers: int = 3,
                 embed_dim: int = 64, pred_hidden: int = 256, joint_dim: int = 256,
                 dropout: float = 0.1, max_symbols: int = 5, lr: float = 2e-3,
                 weight_decay: float = 1e-2, schedule: str = "onecycle", warmup_pct: float = 0.15):
        super().__init__()
        check_common(vocab_size, lr, weight_decay, schedule, warmup_pct)
        if not isinstance(max_symbols, int) or max_symbols < 1:
            raise ValueError(f"max_symbols: expected an int >= 1, got {max_symbols!r}")
        self.save_hyperparameters()
        self.frontend = ConvSubsampling(n_mels, conv_channels, subsample)
        self.encoder = nn.LSTM(conv_channels, encoder_hidden, encoder_layers, batch_first=True,
                               dropout=dropout if encoder_layers > 1 else 0.0)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.predictor = nn.LSTM(embed_dim, pred_hidden, 1, batch_first=True)
        self.enc_proj = nn.Linear(encoder_hidden, joint_dim)
        self.pred_proj = nn.Linear(pred_hidden, joint_dim)
        self.out = nn.Linear(joint_dim, vocab_size)

    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor):
        """Encoder output ``(enc (B, T', H), out_lengths (B,))``."""
        x, lengths = self.frontend(features, feature_lengths)  # (B, T', C)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T', H)
        return out, lengths

    def predict(self, tokens: torch.Tensor, state=None):
        """Prediction network: (B, U) token ids -> (B, U, P) and the LSTM state."""
        return self.predictor(self.embed(tokens), state)

    def joint(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Logits for every pair: enc (B, T, H), pred (B, U, P) -> (B, T, U, V)."""
        return self.out(torch.tanh(self.enc_proj(enc).unsqueeze(2) + self.pred_proj(pred).unsqueeze(1)))

    def compute_loss(self, batch: dict) -> torch.Tensor:
        import torchaudio.functional as AF

        enc, lengths = self(batch["features"], batch["feature_lengths"])
        targets = batch["targets"]  # (B, U)
        start = torch.full((targets.shape[0], 1), BLANK, dtype=torch.long, device=targets.device)
        pred, _ = self.predict(torch.cat([start, targets], dim=1))  # (B, U + 1, P)
        logits = self.joint(enc, pred)  # (B, T', U + 1, V)
        return AF.rnnt_loss(logits.float(), targets.int(), lengths.int(),
                            batch["target_lengths"].int(), blank=BLANK, reduction="mean")

    @torch.no_grad()
    def transcribe(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> list[str]:
        enc, lengths = self(features, feature_lengths)
        B, T, _ = enc.shape
        hyps: list[list[int]] = [[] for _ in range(B)]
        tok = torch.full((B, 1), BLANK, dtype=torch.long, device=enc.device)
        pred, state = self.predict(tok)  # (B, 1, P)
        for t in range(T):
            active = lengths > t  # (B,)
            for _ in range(self.hparams.max_symbols):
                k = self.joint(enc[:, t:t + 1], pred)[:, 0, 0].argmax(-1)  # (B,)
                emit = active & (k != BLANK)
                if not bool(emit.any()):
                    break
                new_pred, new_state = self.predict(k.unsqueeze(1), state)
                # Only rows that emitted advance their prediction network.
                pred = torch.where(emit[:, None, None], new_pred, pred)
                state = tuple(torch.where(emit[None, :, None], n, o) for n, o in zip(new_state, state))
                for b in emit.nonzero().flatten().tolist():
                    hyps[b].append(int(k[b]))
                active = emit
        return [" ".join(decode(h).split()) for h in hyps]
