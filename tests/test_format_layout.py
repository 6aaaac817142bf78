"""The layout is written down once: layout.py's field tables agree with FORMAT.md, with the
C decoder's error offsets and with the bytes; the table record type and the codes."""

import re
import struct
from pathlib import Path

import pytest
import torch

from compress.decoder import reference
from compress.export import pack
from compress.format import layout as L
from compress.format.errors import FormatError

SPEC = Path(L.__file__).with_name("FORMAT.md").read_text()
PSQ_C = (Path(L.__file__).parent.parent / "native" / "psq.c").read_text()
CODE = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}


def spec_fields(section: str) -> list:
    """``(name, offset, struct code)`` of a FORMAT.md section's field list, e.g. "`24 u32 dims[6]`"."""
    text = SPEC.split(f"\n## {section}")[1].split("\n## ")[0]
    out = []
    for off, ctype, name, count in re.findall(r"`(\d+) +(?:(u8|u16|u32|u64) )?(\w+)(?:\[(\d+)\])?`", text):
        code = f"{count}s" if not ctype else (count or "") + CODE[ctype]
        out.append((name, int(off), code))
    return out


def test_struct_formats_are_unchanged():
    assert (L.HEADER.format, L.HEADER.size) == ("<8sHHIIIQIIII", 48)
    assert (L.RECORD.format, L.RECORD.size) == ("<IHBBBBBBIII6IQQQQII", 88)
    assert L.HEADER_CRC_SPAN == 44


@pytest.mark.parametrize("section, fields, offsets", [
    ("Header", L.HEADER_FIELDS, L.HEADER_OFFSETS), ("Tensor record", L.RECORD_FIELDS, L.RECORD_OFFSETS)])
def test_field_tables_match_the_spec(section, fields, offsets):
    assert spec_fields(section) == [(name, offsets[name], code) for name, code in fields]


def test_c_decoder_reports_the_same_offsets():
    """Every ``fail`` of psq.c on a header or record field names that field's offset."""
    checked = 0
    for field, expr in re.findall(r'fail\([^,]+, *PSQ_E_\w+, *"(\w+)", *([^,]+),', PSQ_C):
        expr = expr.strip()
        rec = re.fullmatch(r"(?:at|t(?:->|\.)record_off)(?: \+ (\d+))?", expr)
        if field in L.HEADER_OFFSETS and expr.isdigit():
            assert int(expr) == L.HEADER_OFFSETS[field], (field, expr)
        elif field in L.RECORD_OFFSETS and rec and (rec.group(1) or "record_off" in expr):
            assert int(rec.group(1) or 0) == L.RECORD_OFFSETS[field], (field, expr)
        else:
            continue  # an offset into a data block (data_crc, values, ...), not a field's
        checked += 1
    assert checked >= 24, checked  # the pattern still finds psq.c's checks


def test_record_type():
    r = L.Record(rank=3, kind=L.Kind.QUANT, dtype=L.Dtype.FLOAT16, dims=(2, 3, 4, 0, 0, 0), name="w", offset=200)
    assert (r.shape, r.numel, L.Record(rank=0).numel, L.Record(rank=1).numel) == ((2, 3, 4), 24, 1, 0)
    assert len(r.pack()) == L.RECORD.size
    back = L.Record.unpack_from(b"\0" * 7 + r.pack(), 7, index=5)
    assert back == r._replace(name="", offset=7, index=5)
    assert r["kind"] == r.kind == 1 and r["shape"] == (2, 3, 4) and r[2] == 3  # by name, as the dicts were
    with pytest.raises(KeyError):
        r["pack"]
    assert struct.unpack_from("<B", r.pack(), L.RECORD_OFFSETS["dtype"]) == (2,)


def test_codes():
    assert [int(k) for k in L.Kind] == [0, 1] and [int(e) for e in L.Encoding] == [0, 1, 2, 3]
    assert {int(d): name for d, (name, _, _) in L.DTYPES.items()} == {
        d.value: d.name.lower() for d in L.Dtype}  # the names are torch's
    assert L.KIND_NAMES == {0: "raw", 1: "quant"}
    assert L.ENCODING_NAMES == {0: "dense", 1: "bitmask", 2: "golomb", 3: "block"}
    assert (L.RAW, L.QUANT, L.DENSE, L.GOLOMB, L.BLOCK, L.F32, L.F16) == (0, 1, 0, 2, 3, 1, 2)
    assert (L.FLAG_BLOCK, L.FLAG_SCALES16, L.KNOWN_FLAGS) == (1, 2, 3)
    assert L.SCALE_STORES == {0: 4, L.Dtype.FLOAT16: 2, L.Dtype.BFLOAT16: 2}
    assert all(hasattr(torch, name) for name, _, _ in L.DTYPES.values())


def test_error_offsets_are_the_fields(tmp_path):
    """The reference names each field at its own offset; the numbers are those of FORMAT.md."""
    pack({"w": torch.tensor([[0.0, 0.5], [-1.0, 0.0]])}, tmp_path / "t.psq", bits=4, scales16=False)  # v1.0 fields
    buf = (tmp_path / "t.psq").read_bytes()
    h = reference.read_header(buf)
    at = L.HEADER.size + h["meta_len"]
    r = reference.read_table(buf, h)[0]
    assert (r.offset, r.name, r.index, r.shape) == (at, "w", 0, (2, 2))

    def message(**fields) -> str:
        with pytest.raises(FormatError) as err:
            reference.check_record(r._replace(**fields), r.data_off, len(buf))
        return str(err.value)

    assert message(rank=7).endswith(f"at offset {at + 6}")
    assert message(data_off=0).endswith(f"at offset {at + 56}")
    assert message(dtype=11).startswith("dtype:") and message(dtype=11).endswith(f"at offset {at + 8}")
    assert message(block=4).startswith("block:") and message(block=4).endswith(f"at offset {at + 84}")
    assert message(store=2).startswith("store:") and message(store=2).endswith(f"at offset {at + 9}")  # no flag
    assert message(encoding=3).startswith("encoding:")  # BLOCK without its flag
    assert message(kind=5).endswith(f"at offset {at + 7}")
    assert message(bits=9).endswith(f"at offset {at + 10}")
    assert message(encoding=7).endswith(f"at offset {at + 11}")
    assert message(nnz=99).endswith(f"at offset {at + 48}")
    b = bytearray(buf)
    b[L.HEADER_OFFSETS["flags"]] = 1
    with pytest.raises(FormatError, match="^header_crc: checksum mismatch at offset 44$"):
        reference.read_header(bytes(b))
