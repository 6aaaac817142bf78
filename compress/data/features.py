"""Log-mel features and SpecAugment.

``LogMel`` turns 16 kHz audio into ``log(mel power + 1e-6)`` frames (80 mels, 25 ms
windows every 10 ms by default), optionally normalized per utterance: each mel bin gets
zero mean and unit variance over time, which removes the loudness and channel differences
between voices that a small model would otherwise have to learn.

``SpecAugment`` (Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method for
Automatic Speech Recognition") zeroes random bands of mel bins and runs of frames.

Example:
    >>> import torch
    >>> feats = LogMel()(torch.randn(16000))  # one second
    >>> tuple(feats.shape)
    (101, 80)
"""

from __future__ import annotations

import torch
from torch import nn

from compress.checks import check_int, check_number, fail


class LogMel(nn.Module):
    """Log-mel spectrogram, (N,) audio -> (T, n_mels) frames.

    Args:
        sample_rate: audio rate in Hz.
        n_mels: mel bins (80 is the usual ASR choice).
        win_ms: window length; 25 ms covers 2-3 pitch periods of a low voice.
        hop_ms: frame step; 10 ms, i.e. 100 frames per second.
        normalize: per-utterance mean/variance normalization of each mel bin.

    Example:
        >>> LogMel(n_mels=40)(torch.zeros(1600)).shape[-1]
        40
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, win_ms: float = 25.0,
                 hop_ms: float = 10.0, normalize: bool = True):
        super().__init__()
        import torchaudio

        check_int("n_mels", n_mels, min=1)
        check_number("hop_ms", hop_ms, low=0.0, low_open=True)
        if hop_ms > win_ms:
            fail("hop_ms", f"<= win_ms ({win_ms})", hop_ms)
        win = int(round(sample_rate * win_ms / 1000))
        self.n_mels = n_mels
        self.normalize = normalize
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=win, win_length=win,
            hop_length=int(round(sample_rate * hop_ms / 1000)), n_mels=n_mels,
        )

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 1:
            raise ValueError(f"audio must be a 1-D (N,) tensor, got shape {tuple(audio.shape)}")
        x = torch.log(self.mel(audio.float()) + 1e-6).T  # (T, F)
        if self.normalize:
            x = (x - x.mean(0, keepdim=True)) / (x.std(0, keepdim=True) + 1e-5)
        return x.contiguous()


class SpecAugment(nn.Module):
    """Zero random frequency bands and time runs of a padded batch (training only).

    Args:
        freq_masks: bands per utterance.
        freq_width: maximum band width in mel bins.
        time_masks: runs per utterance.
        time_width: maximum run length as a fraction of the utterance (short commands
            lose whole words to a fixed frame count).

    Masks are drawn from ``generator`` so a seeded loader reproduces them.

    Example:
        >>> x = torch.ones(2, 50, 80)
        >>> y = SpecAugment()(x, torch.tensor([50, 30]), torch.Generator().manual_seed(0))
        >>> bool((y == 0).any())
        True
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2,
                 time_width: float = 0.05):
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    @torch.no_grad()
    def forward(self, feats: torch.Tensor, lengths: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        B, T, F = feats.shape  # (B, T, F)
        out = feats.clone()

        def randint(hi: int) -> int:
            return int(torch.randint(0, max(hi, 1), (1,), generator=generator))

        for b in range(B):
            n = int(lengths[b])
            for _ in range(self.freq_masks):
                w = randint(self.freq_width + 1)
                f0 = randint(F - w + 1)
                out[b, :n, f0:f0 + w] = 0.0
            for _ in range(self.time_masks):
                w = randint(int(self.time_width * n) + 1)
                t0 = randint(n - w + 1)
                out[b, t0:t0 + w, :] = 0.0
        return out
