"""``compress.export.verify``: a packed file against its checkpoint, tensor by tensor.

The oracle of each case is the change made here to a checkpoint the file was packed
from: exactly the changed tensor, and nothing else, must be reported.
"""

import pytest
import torch
from test_pack import checkpoint

from compress import FormatError
from compress.decoder.fast import read_file
from compress.export import pack, verify


@pytest.fixture
def packed(tmp_path):
    ckpt = checkpoint()
    pack(ckpt, tmp_path / "m.psq")
    return tmp_path / "m.psq", ckpt


def changed(ckpt, **tensors):
    """A copy of ``ckpt`` whose state dict has ``tensors`` replaced (None: removed)."""
    sd = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    for name, t in tensors.items():
        name = name.replace("__", ".")
        if t is None:
            del sd[name]
        else:
            sd[name] = t
    return {**ckpt, "state_dict": sd}


def test_the_checkpoint_it_was_packed_from_matches(packed, tmp_path):
    path, ckpt = packed
    assert verify(path, ckpt) == []
    torch.save(ckpt, tmp_path / "m.ckpt")
    assert verify(str(path), tmp_path / "m.ckpt") == []  # paths, as the command gives them
    assert verify(read_file(path), ckpt) == []  # a file already read


def test_one_changed_quantized_weight_is_named(packed):
    path, ckpt = packed
    w = ckpt["state_dict"]["model.2.weight"]  # (4, 5), snapped to its 4-bit grid
    scale = ckpt["callbacks"]["QuantizationRegularizer{'bits': 4}"]["scales"]["model.2.weight"]  # (4,)
    i, j = 1, int(w[1].abs().argmin())  # a small level: two steps up stays within the grid
    two_steps, within_half_a_step = w.clone(), w.clone()
    two_steps[i, j] += 2 * scale[i]
    within_half_a_step[i, j] += 0.4 * scale[i]
    assert [(m.name, m.kind) for m in verify(path, changed(ckpt, model__2__weight=two_steps))] == [
        ("model.2.weight", "values")]
    # The file holds the weights as quantized: one that rounds to the same level matches.
    assert verify(path, changed(ckpt, model__2__weight=within_half_a_step)) == []


def test_one_changed_passthrough_tensor_is_named(packed):
    path, ckpt = packed
    bias = ckpt["state_dict"]["model.0.bias"].clone()
    bias[3] = torch.nextafter(bias[3], torch.tensor(1.0))  # one ulp: bit for bit means it
    bad = verify(path, changed(ckpt, model__0__bias=bias))
    assert [(m.name, m.kind) for m in bad] == [("model.0.bias", "values")]
    assert bad[0].decoded == bad[0].expected == (torch.float32, (6,))  # same dtype and shape, other values


def test_missing_tensors_are_named_on_each_side(packed):
    path, ckpt = packed
    bad = verify(path, changed(ckpt, model__1__running_mean=None, extra=torch.zeros(2)))
    assert [(m.name, m.kind) for m in bad] == [("extra", "missing_from_file"),
                                               ("model.1.running_mean", "missing_from_checkpoint")]
    assert [str(m) for m in bad] == ["extra: in CKPT, missing from FILE", "model.1.running_mean: in FILE, missing from CKPT"]


def test_a_different_shape_is_named_with_both_shapes(packed):
    path, ckpt = packed
    bad = verify(path, changed(ckpt, model__1__bias=torch.zeros(7)))
    assert [(m.name, m.kind, m.decoded.shape, m.expected.shape) for m in bad] == [("model.1.bias", "values", (6,), (7,))]
    assert str(bad[0]) == "model.1.bias: decoded values differ (dtype torch.float32/torch.float32, shape (6,)/(7,))"
    w = ckpt["state_dict"]["model.2.weight"]  # quantized: its (4,) scales do not fit the new shape
    bad = verify(path, changed(ckpt, model__2__weight=w.reshape(5, 4)))
    assert [(m.name, m.kind, m.decoded.shape, m.expected.shape) for m in bad] == [
        ("model.2.weight", "values", (4, 5), (5, 4))]


def test_quantized_in_one_and_not_the_other(packed):
    path, ckpt = packed
    plain = dict(ckpt["state_dict"])  # a state dict without settings: bits for every rank >= 2 tensor...
    plain["model.2.weight"] = plain["model.2.weight"].flatten()  # ...which this no longer is
    bad = {m.name: m.kind for m in verify(path, plain, bits=4)}
    assert bad["model.2.weight"] == "quantized_in_one"


def test_bad_input_is_named(packed, tmp_path):
    path, ckpt = packed
    with pytest.raises(ValueError, match="granularity must be 'channel' or 'tensor', got 'row'"):
        verify(path, ckpt, granularity="row")
    with pytest.raises(ValueError, match="bits, scales and targets come from it"):
        verify(path, ckpt, bits=4)
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "missing.psq", ckpt)
    (tmp_path / "bad.psq").write_bytes(path.read_bytes()[:-3])
    with pytest.raises(FormatError, match="file_len"):
        verify(tmp_path / "bad.psq", ckpt)
