"""The three speech models: shapes, lengths, determinism, layer types, learning, Lightning."""

import pytest
import pytorch_lightning as pl
import torch
from error_rates import wer
from torch import nn

from compress.data.datamodule import SpeechDataModule, collate
from compress.data.text import VOCAB_SIZE, encode
from compress.models import CTCLSTM, MODELS, RNNT, ConformerCTC

SMALL = {
    "ctc_lstm": dict(hidden_size=48, num_layers=2, conv_channels=48),
    "rnnt": dict(encoder_hidden=48, encoder_layers=2, conv_channels=48, embed_dim=16, pred_hidden=48, joint_dim=48),
    "conformer_ctc": dict(d_model=48, num_heads=2, ffn_dim=96, num_layers=2, conv_channels=48, kernel_size=7),
}
TARGET_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LSTM, nn.GRU, nn.MultiheadAttention)


def small(name, **kw):
    torch.manual_seed(0)
    return MODELS[name](**{**SMALL[name], **kw})


def test_registry():
    assert MODELS == {"ctc_lstm": CTCLSTM, "rnnt": RNNT, "conformer_ctc": ConformerCTC}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_shapes_and_lengths(name):
    m = small(name).eval()
    x, n = torch.randn(3, 101, 80), torch.tensor([101, 57, 9])
    out, lengths = m(x, n)
    assert lengths.tolist() == [((k - 1) // 2) // 2 + 1 for k in [101, 57, 9]] or \
        lengths.tolist() == [2 * (((k - 1) // 2) // 2 + 1) for k in [101, 57, 9]]  # CTCLSTM emits 2 per frame
    assert out.shape[:2] == (3, int(lengths.max()))
    if name == "rnnt":
        assert out.shape[2] == SMALL["rnnt"]["encoder_hidden"]
    else:
        assert out.shape[2] == VOCAB_SIZE
        assert torch.allclose(out.exp().sum(-1), torch.ones(out.shape[:2]), atol=1e-4)  # log-probs
    hyps = m.transcribe(x, n)
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_deterministic_given_seed(name):
    a, b = small(name), small(name)
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(pa, pb)
    torch.manual_seed(1)
    batch = _random_batch()
    a.train(), b.train()
    torch.manual_seed(2)
    la = a.compute_loss(batch)
    la.backward()
    torch.manual_seed(2)
    lb = b.compute_loss(batch)
    lb.backward()
    assert torch.equal(la, lb)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()) if p.grad is not None)


@pytest.mark.parametrize("name", ["ctc_lstm", "rnnt"])
def test_padding_does_not_change_outputs(name):
    # Packed LSTMs: an utterance decodes the same alone or batched with a longer one.
    m = small(name).eval()
    x = torch.randn(2, 80, 80)
    n = torch.tensor([80, 43])
    batched, lb = m(x, n)
    alone, la = m(x[1:, :43], n[1:])
    assert torch.equal(lb[1:], la)
    assert torch.allclose(batched[1, : int(la[0])], alone[0], atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_big_matrices_use_targeted_layer_types(name):
    m = MODELS[name]()  # default sizes
    owners = {}
    for mod_name, mod in m.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    for fqn, p in m.named_parameters():
        if p.dim() >= 2:
            mod = owners[fqn]  # MultiheadAttention owns in_proj_weight; its out_proj is a Linear
            assert isinstance(mod, TARGET_TYPES + (nn.Embedding,)), f"{fqn} lives in {type(mod).__name__}"
    n_params = sum(p.numel() for p in m.parameters())
    assert 2e5 < n_params < 1e7


def test_argument_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        CTCLSTM(vocab_size=1)
    with pytest.raises(ValueError, match="schedule"):
        CTCLSTM(schedule="linear")
    with pytest.raises(ValueError, match="hidden_size"):
        CTCLSTM(hidden_size=0)
    with pytest.raises(ValueError, match="factor"):
        RNNT(subsample=3)
    with pytest.raises(ValueError, match="d_model"):
        ConformerCTC(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="max_symbols"):
        RNNT(max_symbols=0)


def _random_batch(B=3, T=60):
    texts = ["call mom", "play jazz", "stop"][:B]
    feats = [(torch.randn(T - 7 * i, 80), torch.tensor(encode(t)), t) for i, t in enumerate(texts)]
    return collate(feats)


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    corpus = {"num_train": 4, "num_valid": 4, "num_test_voices": 4, "num_test_sentences": 4}
    dm = SpeechDataModule(corpus=corpus, data_dir=str(root), batch_size=4, spec_augment=False, progress=False)
    dm.setup()
    return dm


def _train(m, batch, steps, lr=5e-3):
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    m.train()
    losses = []
    for _ in range(steps):
        loss = m.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return m.eval(), losses


def test_ctc_lstm_learns_two_utterances(dm):
    # Oracle: the model transcribes its own training utterances nearly exactly.
    from error_rates import cer

    batch = collate([dm.datasets["train"][i] for i in range(2)])
    m, losses = _train(small("ctc_lstm", hidden_size=64, num_layers=1, conv_channels=64, dropout=0.0), batch, 400)
    hyps = m.transcribe(batch["features"], batch["feature_lengths"])
    assert cer(hyps, batch["texts"]) < 0.2, (hyps, batch["texts"], losses[-1])


def _greedy_rnnt_reference(m, feats, n):
    """One utterance at a time, written straight from the transducer definition."""
    from compress.data.text import decode

    enc, lengths = m(feats[None, :n], torch.tensor([n]))
    hyp = []
    pred, state = m.predict(torch.zeros(1, 1, dtype=torch.long))
    for t in range(int(lengths[0])):
        for _ in range(m.hparams.max_symbols):
            k = int(m.joint(enc[:, t:t + 1], pred)[0, 0, 0].argmax())
            if k == 0:
                break
            hyp.append(k)
            pred, state = m.predict(torch.tensor([[k]]), state)
    return " ".join(decode(hyp).split())


def test_rnnt_learns_and_batched_greedy_matches_reference(dm):
    batch = collate([dm.datasets["train"][i] for i in range(3)])
    m, losses = _train(small("rnnt", dropout=0.0), batch, 120)
    assert losses[-1] < 0.25 * losses[0]
    hyps = m.transcribe(batch["features"], batch["feature_lengths"])
    assert any(hyps)  # partially trained: it emits symbols, so the comparison means something
    with torch.no_grad():
        ref = [_greedy_rnnt_reference(m, batch["features"][b], int(batch["feature_lengths"][b]))
               for b in range(3)]
    assert hyps == ref


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_lightning_fit_test_and_checkpoint(dm, tmp_path, name, schedule):
    lrs = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    m = small(name, schedule=schedule, lr=1e-3, warmup_pct=0.3)
    trainer = pl.Trainer(max_epochs=10, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Record()], default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    trainer.fit(m, dm)
    assert {"train/loss", "val/loss", "val/wer"} <= set(trainer.callback_metrics)
    assert max(lrs) == pytest.approx(1e-3, rel=0.05)  # peak = lr, reached after warmup
    assert lrs[0] < 0.5e-3 and lrs[-1] < 0.5e-3  # warm up from below, anneal at the end
    for loader in dm.test_dataloaders().values():
        res = trainer.test(m, dataloaders=loader, verbose=False)[0]
        assert {"test/wer", "test/cer", "test/loss"} <= set(res)
        # Oracle: the logged metrics equal the helpers on the model's own transcripts.
        m.eval()
        hyps, refs = [], []
        for b in loader:
            hyps += m.transcribe(b["features"], b["feature_lengths"])
            refs += b["texts"]
        assert res["test/wer"] == pytest.approx(wer(hyps, refs), abs=1e-6)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    again = MODELS[name].load_from_checkpoint(ckpt).eval()
    assert again.hparams == m.hparams
    x, n = torch.randn(2, 50, 80), torch.tensor([50, 40])
    assert torch.equal(again(x, n)[0], m.eval()(x, n)[0])


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_subsampling_lengths_match_the_convolutions(factor):
    from compress.models.base import ConvSubsampling

    sub = ConvSubsampling(16, 8, factor)
    for n in (1, 7, 8, 9, 33, 100):
        y, lengths = sub(torch.randn(1, n, 16), torch.tensor([n]))
        assert y.shape[1] == int(lengths[0]) == -(-n // factor)
    # Padding does not change an utterance's frames: alone or in a batch, the same output.
    x = torch.randn(2, 40, 16)
    y, lengths = sub(x, torch.tensor([40, 23]))
    alone, _ = sub(x[1:, :23], torch.tensor([23]))
    torch.testing.assert_close(y[1, : int(lengths[1])], alone[0])
