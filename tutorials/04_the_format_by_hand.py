"""Tutorial 04: the packed format, byte by byte, as you would port its decoder to C.

The spec is ``compress/format/FORMAT.md`` (PSQ v1); ``compress/decoder/reference.py`` is
its reference reader, written as one C-like function per step, each docstring giving the
C signature. This tutorial writes a tiny file and walks it the way a firmware engineer
checks a port: the header fields with their offsets (read with the field table below,
transcribed from the spec, and checked against ``reference.read_header``), the
metadata, the tensor table, a hex dump of one data block, and then one tensor decoded
step by step with the reference decoder's functions (CRC, scales, index, bit-packed
levels, dequantization), compared bit for bit with ``compress.load``.

Run it:

    python tutorials/04_the_format_by_hand.py --out /tmp/t04
    python tutorials/04_the_format_by_hand.py --file model.psq --tensor head.weight   # your own file

The walk is quick either way; ``--short`` is accepted, like the other tutorials', and
changes nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import zlib
from pathlib import Path

import torch

# Field tables, transcribed from FORMAT.md: (offset, C type, name). Every integer is
# little-endian; "u8[8]" is the magic's byte array and "u32[6]" the dims.
HEADER_FIELDS = [
    (0, "u8[8]", "magic"), (8, "u16", "major"), (10, "u16", "minor"), (12, "u32", "flags"),
    (16, "u32", "n_tensors"), (20, "u32", "meta_len"), (24, "u64", "file_len"), (32, "u32", "names_len"),
    (36, "u32", "meta_crc"), (40, "u32", "table_crc"), (44, "u32", "header_crc"),
]
RECORD_FIELDS = [
    (0, "u32", "name_off"), (4, "u16", "name_len"), (6, "u8", "rank"), (7, "u8", "kind"), (8, "u8", "dtype"),
    (9, "u8", "store"), (10, "u8", "bits"), (11, "u8", "encoding"), (12, "u32", "scale_count"),
    (16, "u32", "golomb_m"), (20, "u32", "unary_bits"), (24, "u32[6]", "dims"), (48, "u64", "nnz"),
    (56, "u64", "data_off"), (64, "u64", "data_len"), (72, "u64", "index_len"), (80, "u32", "data_crc"),
    (84, "u32", "block"),
]
WIDTH = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="accepted for symmetry with the other tutorials")
    p.add_argument("--out", default=None, help="where the tiny file is written (default: a new temporary directory)")
    p.add_argument("--file", default=None, help="walk this .psq file instead of the tiny one")
    p.add_argument("--tensor", default=None, help="the tensor to decode step by step (default: the first quantized)")
    return p.parse_args(argv)


def hexdump(buf: bytes, start: int, end: int, limit: int = 96) -> None:
    """Print ``buf[start:end]`` (at most ``limit`` bytes) as offset, hex bytes and ASCII."""
    stop = min(end, start + limit)
    for row in range(start - start % 16, stop, 16):
        cells, text = [], []
        for i in range(row, row + 16):
            inside = start <= i < stop
            cells.append(f"{buf[i]:02x}" if inside else "  ")
            text.append((chr(buf[i]) if 32 <= buf[i] < 127 else ".") if inside else " ")
        print(f"  {row:08x}  {' '.join(cells[:8])}  {' '.join(cells[8:])}  |{''.join(text)}|")
    if stop < end:
        print(f"  ... {end - stop} more bytes")


def read_fields(buf: bytes, base: int, fields) -> dict:
    """Read a field table at ``base`` with ``reference.read_uint``, printing each field."""
    from compress.decoder import reference as ref

    out = {}
    for off, ctype, name in fields:
        at = base + off
        if ctype == "u8[8]":
            value, size = bytes(buf[at : at + 8]), 8
        elif ctype == "u32[6]":
            value, size = tuple(ref.read_uint(buf, at + 4 * k, 4, name) for k in range(6)), 24
        else:
            size = WIDTH[ctype]
            value = ref.read_uint(buf, at, size, name)
        raw = buf[at : at + size].hex(" ")
        shown = value if not isinstance(value, int) else f"{value} (0x{value:x})"
        print(f"  {at:>5}  +{off:<3} {ctype:<7} {name:<12} {raw:<24.24}{'...' if size > 8 else '   '} {shown}")
        out[name] = value
    return out


def make_tiny_file(path: Path) -> None:
    """Three tensors that take the three paths of the format: a sparse 4x8 weight, a
    float32 bias (passed through raw) and a very sparse 2x64 weight (Golomb-coded gaps)."""
    from compress.export import pack

    fc = torch.tensor([[0.50, 0.0, 0.0, -0.30, 0.0, 0.15, 0.0, 0.0],
                       [0.0, 0.0, 0.75, 0.0, 0.0, 0.0, -0.50, 0.0],
                       [0.10, -0.20, 0.0, 0.0, 0.30, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.90, -0.40]])
    sparse = torch.zeros(2, 64)
    sparse[0, 3], sparse[0, 40], sparse[1, 10], sparse[1, 63] = 1.0, -0.5, 0.25, 1.0
    state = {"fc.weight": fc, "fc.bias": torch.tensor([0.1, -0.2, 0.3, 0.0]), "out.weight": sparse}
    # bits=4 quantizes every float tensor of rank >= 2 on a per-output-channel 4-bit grid
    # (levels -7..7); the scales are computed and the weights snapped to them.
    summary = pack(state, path, bits=4, recipe="tutorial-04")
    print(summary)


def main(argv=None) -> None:
    args = parse_args(argv)
    from compress import load
    from compress.decoder import reference as ref
    from compress.format import layout as L

    # -----------------------------------------------------------------------------------
    # Step 0. A tiny file.
    # -----------------------------------------------------------------------------------
    if args.file:
        path = Path(args.file)
    else:
        out = Path(args.out or tempfile.mkdtemp(prefix="compress-t04-"))
        out.mkdir(parents=True, exist_ok=True)
        path = out / "tiny.psq"
        print("== step 0: write a tiny file")
        make_tiny_file(path)
    buf = path.read_bytes()
    print(f"\n{path}: {len(buf)} bytes")

    # -----------------------------------------------------------------------------------
    # Step 1. The header: 48 bytes at offset 0.
    #
    # Read every field at its offset, as C would with a fixed-width little-endian load.
    # header_crc is the CRC-32 (zlib's) of bytes 0..43; check it before trusting any
    # other field. Then let the reference decoder read the same header: it validates
    # magic, CRC, version, flags, file_len and the table's extent.
    # -----------------------------------------------------------------------------------
    print("\n== step 1: header (offset, +field offset, type, name, bytes, value)")
    hexdump(buf, 0, L.HEADER.size)
    fields = read_fields(buf, 0, HEADER_FIELDS)
    crc = zlib.crc32(buf[:44])
    print(f"CRC-32 of bytes 0..43 = 0x{crc:08x}; header_crc {'matches' if crc == fields['header_crc'] else 'DIFFERS'}")
    h = ref.read_header(buf)
    agree = all(h[k] == fields[k] for k in ("n_tensors", "meta_len", "names_len", "file_len", "meta_crc", "table_crc"))
    print(f"reference.read_header agrees with the field table: {agree}")

    # -----------------------------------------------------------------------------------
    # Step 2. Metadata: meta_len bytes of canonical JSON right after the header.
    #
    # Provenance only: a decoder never needs it. Its CRC is meta_crc.
    # -----------------------------------------------------------------------------------
    meta_at = L.HEADER.size
    print(f"\n== step 2: metadata, {h['meta_len']} bytes at offset {meta_at}")
    print(f"  {buf[meta_at : meta_at + h['meta_len']].decode('ascii')}")
    print(f"  parsed by reference.read_metadata: {ref.read_metadata(buf, h)}")

    # -----------------------------------------------------------------------------------
    # Step 3. The tensor table: n_tensors records of 88 bytes, then the name pool.
    #
    # `reference.read_table` checks table_crc, the names, every record's fields and the
    # layout rule (each data block starts at the next multiple of 8; no gaps, no tail).
    # -----------------------------------------------------------------------------------
    table_at = meta_at + h["meta_len"]
    names_at = table_at + h["n_tensors"] * L.RECORD.size
    data_at = L.align(names_at + h["names_len"])
    print(f"\n== step 3: tensor table at offset {table_at}, name pool at {names_at}, data from {data_at}")
    records = ref.read_table(buf, h)  # layout.Record: the fields by name, plus shape and numel
    nw = max(len(r.name) for r in records) if records else 4
    print(f"  {'#':>2} {'name':<{nw}} {'kind':<6} {'dtype':<8} {'bits':>4} {'encoding':<8} {'shape':<8} "
          f"{'nnz':>4} {'data_off':>8} {'data_len':>8} {'index_len':>9}")
    for r in records:
        enc = L.ENCODING_NAMES[r.encoding] if r.kind == L.QUANT else "-"
        shape = "x".join(map(str, r.shape))
        print(f"  {r.index:>2} {r.name:<{nw}} {L.KIND_NAMES[r.kind]:<6} {L.DTYPES[r.dtype][0]:<8} "
              f"{r.bits:>4} {enc:<8} {shape:<8} {r.nnz:>4} {r.data_off:>8} {r.data_len:>8} {r.index_len:>9}")

    quant = [r for r in records if r.kind == L.QUANT]
    if not quant:
        raise SystemExit(f"{path} holds no quantized tensor to decode")
    chosen = [r for r in records if r.name == args.tensor] if args.tensor else quant[:1]
    if not chosen:
        raise SystemExit(f"--tensor: no tensor {args.tensor!r} in {path}; it holds {[r.name for r in records]}")
    r = chosen[0]
    print(f"\nrecord {r.index} ({r.name!r}), field by field:")
    rec = read_fields(buf, r.offset, RECORD_FIELDS)
    same = all(rec[name] == getattr(r, name) for _, _, name in RECORD_FIELDS)
    print(f"reference.read_record agrees with the field table: {same}")
    print(f"name: name_pool[{r.name_off}:{r.name_off + r.name_len}] = "
          f"{buf[names_at + r.name_off : names_at + r.name_off + r.name_len]!r}")
    if r.kind != L.QUANT:
        raise SystemExit(f"--tensor: {r.name!r} is passed through raw; pick a quantized one: "
                         f"{[q.name for q in quant]}")

    # -----------------------------------------------------------------------------------
    # Step 4. Decode that tensor by hand.
    #
    # A QUANT data block is `scales | index | values`. Decode each part with the
    # reference decoder's function for it, printing what it reads.
    # -----------------------------------------------------------------------------------
    start, numel, bits = r.data_off, r.numel, r.bits
    scales_at = start
    index_at = scales_at + L.SCALE_STORES[r.store] * r.scale_count  # 4 bytes each, or 2 (16-bit scales)
    values_at = index_at + r.index_len
    end = start + r.data_len
    print(f"\n== step 4: decode {r.name!r}: data block [{start}, {end}): scales at {scales_at}, "
          f"index at {index_at} ({r.index_len} bytes), values at {values_at} ({end - values_at} bytes)")
    hexdump(buf, start, end)

    # 4a. Data CRC first, as a port would before touching the block.
    crc = zlib.crc32(buf[start:end])
    print(f"4a. CRC-32 of the block = 0x{crc:08x}; data_crc {'matches' if crc == r.data_crc else 'DIFFERS'}")

    # 4b. Scales: scale_count float32 (or float16 / bfloat16 when the record's `store`
    # says so), one per output channel (axis 0) or one in all.
    scales = ref.read_scales(buf, scales_at, r.scale_count, bits, r.store)
    qmax = (1 << (bits - 1)) - 1
    shown = ", ".join(f"{s:.6g}" for s in scales[:8]) + (", ..." if len(scales) > 8 else "")
    print(f"4b. {len(scales)} scales (read_scales): [{shown}]; levels are in [-{qmax}, {qmax}]")

    # 4c. Index: where the nonzero levels are (none for DENSE).
    enc = r.encoding
    blocks = None
    if enc == L.DENSE:
        positions = None
        print("4c. DENSE: no index, every level is stored")
    elif enc == L.BLOCK:
        blocks = ref.decode_block_index(buf, index_at, r, end - values_at)
        positions = [first + j for first, width in blocks for j in range(width)]  # every element of a stored block
        print(f"4c. BLOCK of {r.block}: one bit per block of {r.block} consecutive elements of a row; "
              f"decode_block_index -> {len(blocks)} stored blocks (first element, width): {blocks[:8]}"
              f"{' ...' if len(blocks) > 8 else ''}")
    elif enc == L.BITMASK:
        positions = ref.decode_bitmask(buf, index_at, numel, r.nnz)
        bits_str = "".join(str(ref.read_bits(buf, index_at, i, 1)) for i in range(min(numel, 128)))
        print(f"4c. BITMASK, stream bit i = bit (i & 7) of byte (i >> 3): {bits_str}{'...' if numel > 128 else ''}")
        print(f"    decode_bitmask -> {len(positions)} positions: {positions[:24]}{' ...' if len(positions) > 24 else ''}")
    else:
        w, u = L.golomb_width(r.golomb_m)
        positions = ref.decode_golomb(buf, index_at, r)
        gaps = [p - q - 1 for q, p in zip([-1] + positions[:-1], positions)]
        print(f"4c. GOLOMB m={r.golomb_m} (low field {w} bits, cutoff u={u}), unary part {r.unary_bits} bits")
        print(f"    decode_golomb -> positions {positions[:16]}{' ...' if len(positions) > 16 else ''}, "
              f"gaps {gaps[:16]}{' ...' if len(gaps) > 16 else ''}")

    # 4d. Values: `count` fields of `bits` bits, LSB-first, two's complement. Here are
    # the first fields read by hand, then all of them with decode_levels.
    count = numel if enc == L.DENSE else len(positions) if enc == L.BLOCK else r.nnz
    print(f"4d. {count} levels of {bits} bits at offset {values_at}; the first ones by hand:")
    for i in range(min(count, 4)):
        pos = i * bits
        field = ref.read_bits(buf, values_at, pos, bits)
        level = field - (1 << bits) if field & (1 << (bits - 1)) else field
        print(f"    level {i}: stream bits {pos}..{pos + bits - 1} = byte {values_at + (pos >> 3)} "
              f"(0x{buf[values_at + (pos >> 3)]:02x}) from bit {pos & 7}: field 0b{field:0{bits}b} -> {level}")
    stored = ref.decode_levels(buf, values_at, count, bits, enc in (L.BITMASK, L.GOLOMB))  # BLOCK keeps zeros
    print(f"    decode_levels -> {stored[:24]}{' ...' if count > 24 else ''}")

    # 4e. Scatter into a dense array of levels (absent = 0), then dequantize: element i
    # is float32(q_i) * scale[c], one float32 rounding, c = i // (numel / dims[0]).
    # In the tiny file, fc.weight's first row was [0.5, 0, 0, -0.3, 0, 0.15, 0, 0]: the
    # writer chose its scale as max|w| / 7 and rounded each weight to the nearest level,
    # so -0.3 comes back as -4 * 0.0714 = -0.2857. That rounding is the quantization;
    # a model trained with QuantizationRegularizer is already on its grid and loses nothing.
    levels = stored if positions is None else [0] * numel
    if positions is not None:
        for p, q in zip(positions, stored):
            levels[p] = q
    per = numel // r.dims[0] if r.scale_count > 1 else numel
    values = [ref.dequantize_level(q, scales[i // per]) for i, q in enumerate(levels)]
    shape = r.shape
    row = min(shape[-1] if shape else 1, 16)
    print(f"4e. dequantize_level(q, scale[i // {per}]) over {numel} elements; the first {row}:")
    print(f"    levels {levels[:row]}")
    print(f"    values {[float(f'{v:.6g}') for v in values[:row]]}")

    # -----------------------------------------------------------------------------------
    # Step 5. Check the hand decode against the reference's own decode_tensor and
    # against compress.load, bit for bit (int32 views also tell +0.0 from -0.0).
    # -----------------------------------------------------------------------------------
    whole = ref.decode_tensor(buf, r)
    by_hand = torch.tensor(values, dtype=torch.float32).view(shape)
    loaded = load(path)[r.name].to(torch.float32)
    same_ref = whole["values"] == values and whole["levels"] == levels
    same_load = torch.equal(by_hand.view(torch.int32), loaded.view(torch.int32))
    print(f"\n== step 5: {r.name!r} by hand == reference.decode_tensor: {same_ref}; "
          f"== compress.load (bit for bit): {same_load}")
    full = ref.decode_file(buf)
    loaded_all = load(path)
    every = all(
        torch.equal(torch.tensor(t["values"], dtype=loaded_all[t["name"]].dtype).view(loaded_all[t["name"]].shape),
                    loaded_all[t["name"]])
        for t in full["tensors"]
    )
    print(f"every tensor: reference.decode_file == compress.load: {every} ({len(full['tensors'])} tensors)")
    if not (same_ref and same_load and every):
        raise SystemExit("the hand decode differs from the decoders")

    # -----------------------------------------------------------------------------------
    # Step 6. The port, function by function.
    #
    # Each reference function is one C function; its docstring opens with the signature.
    # In call order (a RAW tensor goes through decode_raw instead of the QUANT steps):
    # -----------------------------------------------------------------------------------
    print("\n== step 6: the C functions to write, in call order")
    for fn in (ref.read_header, ref.read_metadata, ref.read_table, ref.read_record, ref.check_record,
               ref.check_quant_fields, ref.decode_tensor, ref.read_scales, ref.decode_bitmask, ref.decode_golomb,
               ref.read_bits, ref.decode_levels, ref.dequantize_level, ref.decode_raw):
        parts = (fn.__doc__ or "").strip().split("``")
        print(f"  {parts[1] if len(parts) > 2 else fn.__name__ + '(...)'}")


if __name__ == "__main__":
    main()
