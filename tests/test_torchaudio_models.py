"""Both callbacks on torchaudio's speech models: a short fit on random data, then every
targeted tensor is at the exact sparsity and on the grid."""

import pytest
import pytorch_lightning as pl
import torch
import torchaudio.models as tam
from torch import nn

from compress import GradualSparsifier, QuantizationRegularizer, find_targets
from compress.quant import grid


class BiLSTMProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(16, 24, num_layers=2, bidirectional=True, proj_size=8, batch_first=True)
        self.out = nn.Linear(16, 5)

    def forward(self, x):  # (B, T, F)
        return self.out(self.lstm(x)[0])  # (B, T, 5)


def emformer_rnnt():
    return tam.emformer_rnnt_model(
        input_dim=8, encoding_dim=16, num_symbols=10, segment_length=4, right_context_length=2,
        time_reduction_input_dim=8, time_reduction_stride=2, transformer_num_heads=2, transformer_ffn_dim=16,
        transformer_num_layers=2, transformer_dropout=0.0, transformer_activation="relu",
        transformer_left_context_length=4, transformer_max_memory_size=0,
        transformer_weight_init_scale_strategy="depthwise", transformer_tanh_on_mem=True, symbol_embedding_dim=8,
        num_lstm_layers=1, lstm_layer_norm=True, lstm_layer_norm_epsilon=1e-5, lstm_dropout=0.0,
    )


def batches(kind, n=3):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        if kind == "conformer":
            out.append((torch.randn(2, 10, 16, generator=g), torch.tensor([10, 7])))
        elif kind == "rnnt":
            out.append((torch.randn(2, 20, 8, generator=g), torch.tensor([20, 16]),
                        torch.randint(0, 10, (2, 3), generator=g), torch.tensor([3, 2])))
        elif kind == "deepspeech":
            out.append((torch.randn(2, 1, 10, 16, generator=g),))
        elif kind == "wav2letter":
            out.append((torch.randn(2, 16, 80, generator=g),))
        else:
            out.append((torch.randn(2, 10, 16, generator=g),))
    return out


class Wrap(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, i):
        out = self.model(*batch)
        out = out[0] if isinstance(out, tuple) else out
        return out.float().pow(2).mean()  # any differentiable loss: only the mechanics are tested

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


MODELS = {
    "conformer": (lambda: tam.Conformer(input_dim=16, num_heads=2, ffn_dim=32, num_layers=2, depthwise_conv_kernel_size=3), 4),
    "rnnt": (emformer_rnnt, 4),
    "deepspeech": (lambda: tam.DeepSpeech(n_feature=16, n_hidden=32, n_class=5), 4),
    "bilstm_proj": (BiLSTMProj, 3),
    # 23 M weights at fixed width: 8 bits keeps Δ at max clipping (no MSE search) for speed
    "wav2letter": (lambda: tam.Wav2Letter(num_classes=5, input_type="mfcc", num_features=16), 8),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_fit_reaches_exact_sparsity_and_grid(kind):
    pl.seed_everything(0)
    build, bits = MODELS[kind]
    module = Wrap(build())
    expected_targets = {f"model.{t.name}" for t in find_targets(module.model)}
    sp = GradualSparsifier(final_sparsity=0.5)
    qr = QuantizationRegularizer(bits=bits, weight=0.1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, callbacks=[sp, qr], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2 if kind == "wav2letter" else 1.0,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches(kind), batch_size=None))
    params = dict(module.named_parameters())
    assert set(sp.masks) == set(qr.scales) == expected_targets
    if kind == "bilstm_proj":
        assert "model.lstm.weight_hr_l1_reverse" in expected_targets
    for n in expected_targets:
        w, m = params[n].detach(), sp.masks[n]
        assert int((~m).sum()) == int(0.5 * w.numel() + 0.5), n  # exact count
        assert (w[~m] == 0).all(), n
        assert torch.equal(grid.snap(w, qr.scales[n], bits), w), n  # on the grid
