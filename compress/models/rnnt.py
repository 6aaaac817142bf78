"""``RNNT``: LSTM encoder, LSTM prediction network, additive joiner, RNN-T loss.

The transducer (Graves 2012, "Sequence Transduction with Recurrent Neural Networks")
scores every (frame t, emitted-prefix u) pair: ``joint(enc[t], pred[u])`` gives a
distribution over the vocabulary, blank meaning "advance to the next frame". The loss is
``torchaudio.functional.rnnt_loss``; decoding is greedy (at each frame emit the arg-max
symbol until blank, at most ``max_symbols`` per frame), in ``greedy_search``, which the
ONNX parity check runs over the exported graphs too. The blank id 0 also serves as the
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

from functools import partial

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from compress.checks import check_int
from compress.data.text import BLANK, VOCAB_SIZE, decode
from compress.models.base import ConvSubsampling, SpeechModel, check_common


class RNNT(SpeechModel):
    """Conv subsampling + LSTM encoder, LSTM predictor, joiner, RNN-T loss.

    Args:
        vocab_size: output symbols including the blank.
        n_mels: input feature size.
        subsample: time subsampling of the front end (1, 2, 4 or 8).
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
        check_int("max_symbols", max_symbols, min=1)
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
        enc, lengths = self(features, feature_lengths)  # (B, T', H), (B,)
        # The state nn.LSTM starts from when given none, made explicit: the steps take flat tensors.
        zeros = self.embed.weight.new_zeros(self.predictor.num_layers, enc.shape[0], self.predictor.hidden_size)
        hyps = greedy_search(enc, lengths, partial(predict_step, self), partial(joint_step, self), (zeros, zeros),
                             self.hparams.max_symbols)
        return [" ".join(decode(h).split()) for h in hyps]


# --- greedy decoding, shared with the ONNX export ------------------------------------------
#
# The search loop cannot be traced: how many symbols a frame emits depends on an arg-max.
# So an exported transducer is three graphs (encoder, one prediction step, the joiner on one
# (frame, prefix) pair) and this same loop runs over them, with onnxruntime behind the two
# step functions (compress.export.onnx.parity). The steps take and return flat tensors
# because graph inputs and outputs are tensors, not an optional (h, c) tuple.


def predict_step(model, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One prediction-network step of any model with ``predict(tokens, (h, c))``; exported as a graph.

    Shapes: token (B, 1), h and c (L, B, P) -> pred (B, 1, P), h, c.
    """
    pred, (h, c) = model.predict(token, (h, c))
    return pred, h, c


def joint_step(model, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The joiner on one (frame, prefix) pair per row, of any model with ``joint``; exported as a graph.

    Shapes: enc (B, H), pred (B, P) -> logits (B, V).
    """
    return model.joint(enc[:, None], pred[:, None])[:, 0, 0]


def greedy_search(enc: torch.Tensor, lengths: torch.Tensor, step, join, state, max_symbols: int,
                  blank: int = BLANK) -> list[list[int]]:
    """Greedy transducer decoding: at each frame emit the arg-max symbol until blank.

    Args:
        enc: encoder output (B, T, H); frames at or past ``lengths`` (B,) are ignored.
        step: ``step(token (B, 1), h, c) -> (pred (B, 1, P), h, c)``, e.g. ``predict_step``.
        join: ``join(enc (B, H), pred (B, P)) -> logits (B, V)``, e.g. ``joint_step``.
        state: the prediction network's initial ``(h, c)``, each (L, B, P).
        max_symbols: most symbols emitted per frame (guards against loops).
        blank: the blank id, also the start-of-sequence input.

    Returns:
        The symbol ids of each utterance.
    """
    B, T = enc.shape[:2]
    hyps: list[list[int]] = [[] for _ in range(B)]
    pred, h, c = step(torch.full((B, 1), blank, dtype=torch.long, device=enc.device), *state)  # (B, 1, P)
    for t in range(T):
        active = lengths > t  # (B,)
        for _ in range(max_symbols):
            k = join(enc[:, t], pred[:, 0]).argmax(-1)  # (B,)
            emit = active & (k != blank)
            if not bool(emit.any()):
                break
            new_pred, new_h, new_c = step(k.unsqueeze(1), h, c)
            # Only rows that emitted advance their prediction network.
            pred = torch.where(emit[:, None, None], new_pred, pred)  # (B, 1, P)
            h, c = (torch.where(emit[None, :, None], n, o) for n, o in ((new_h, h), (new_c, c)))  # (L, B, P)
            for b in emit.nonzero().flatten().tolist():
                hyps[b].append(int(k[b]))
            active = emit
    return hyps
