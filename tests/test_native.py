"""The C decoder (compress/native/psq.c) against the reference decoder, the oracle.

Golden corpus and differential fuzzing through the ctypes binding (bit-identical tensors,
or the same field named by both), the same files through the psqdump tool built with
ASan and UBSan, strict compiler warnings, no allocator in the object file, and the build
and fallback rules of the binding. ``make test`` sets COMPRESS_NATIVE=require, so there
a missing C path fails instead of skipping.
"""

import ctypes
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib

import pytest
import torch
from test_decoder_parity import as_tensor, same
from test_fuzz import mutate, mutate_block, seeds

import compress
from compress import native
from compress.decoder import reference
from compress.format import layout as L
from compress.format.errors import FormatError
from compress.native import conformance

SRC = native.HERE
STRICT = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Wconversion", "-Werror"]
N_MUTANTS = 1500  # per mutator; both decoders and the sanitized tool see every one
FUZZ_NUMEL = 1 << 16


def lib():
    if native.mode() != "require" and not native.available():
        pytest.skip("no C compiler (COMPRESS_NATIVE=require makes this a failure)")
    return native.library()


@pytest.fixture(scope="module")
def corpus():
    return conformance.corpus()


def field_of(err: Exception) -> str:
    return str(err).split(":", 1)[0]


def offset_of(err: Exception) -> int:
    return int(re.findall(r"at offset (\d+)", str(err))[-1])


def outcome(fn, buf):
    try:
        return fn(buf)
    except FormatError as err:
        return err


def assert_agree(buf: bytes, max_numel: int = 1 << 28, offsets: bool = True):
    """C path == reference: same tensors bit for bit, or the same field (and offset)."""
    ref = outcome(lambda b: reference.decode_file(b, max_numel=max_numel), buf)
    c = outcome(lambda b: compress.decoder.load_bytes(b, max_numel=max_numel, native=True), buf)
    py = outcome(lambda b: compress.decoder.load_bytes(b, max_numel=max_numel, native=False), buf)
    if isinstance(ref, FormatError):
        assert isinstance(c, FormatError), f"C accepted what the reference rejected ({ref})"
        assert field_of(c) == field_of(ref), (str(c), str(ref))
        if offsets:
            assert offset_of(c) == offset_of(ref), (str(c), str(ref))
        assert isinstance(py, FormatError)  # the pure-Python path may check in another order
        return None
    assert not isinstance(c, FormatError), f"C rejected what the reference accepted ({c})"
    assert not isinstance(py, FormatError), str(py)
    assert [t["name"] for t in ref["tensors"]] == list(c) == list(py)
    for t in ref["tensors"]:
        want = as_tensor(t, getattr(torch, t["dtype"]))
        assert same(want, c[t["name"]]), t["name"]
        assert same(want, py[t["name"]]), t["name"]
    return c


# ---------------------------------------------------------------- the C source itself


def compilers() -> list:
    found = [cc for cc in ("gcc", "clang") if shutil.which(cc)]
    if not found and native.mode() == "require":
        pytest.fail("no gcc or clang")
    return found or pytest.skip("no gcc or clang")


@pytest.mark.parametrize("variant", [["-O2"], ["-O3", "-march=native"], ["-O2", "-DPSQ_NO_SIMD"], ["-O0"]])
def test_strict_warnings(tmp_path, variant):
    for cc in compilers():
        for src in ("psq.c", "psqdump.c"):
            cmd = [cc, *STRICT, *variant, "-c", os.path.join(SRC, src), "-o", str(tmp_path / "o.o")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"


@pytest.mark.parametrize("variant", [["-O2"], ["-O3", "-march=native"], ["-Os"]])
def test_object_needs_no_allocator_and_no_io(tmp_path, variant):
    if not shutil.which("nm"):
        pytest.skip("no nm")
    cc = compilers()[0]
    obj = tmp_path / "psq.o"
    subprocess.run([cc, "-std=c99", *variant, "-c", os.path.join(SRC, "psq.c"), "-o", str(obj)], check=True)
    undefined = set(subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split())
    undefined.discard("U")
    assert not undefined & {"malloc", "calloc", "realloc", "free", "aligned_alloc", "posix_memalign"}, undefined
    # only the string functions and compiler helpers: no stdio, no exit, no errno
    assert undefined <= {"memcpy", "memset", "memcmp", "memmove", "__popcountdi2"}, undefined
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout.split("\n")
    writable = [line for line in symbols if len(line.split()) == 3 and line.split()[1] in "bBdDcC"]
    assert not writable, writable  # no static mutable state: nothing in .data or .bss


def test_header_is_self_contained(tmp_path):
    cc = compilers()[0]
    (tmp_path / "t.c").write_text('#include "psq.h"\nint main(void) { psq_file f; (void)f; return 0; }\n')
    subprocess.run([cc, *STRICT, "-I", SRC, str(tmp_path / "t.c"), "-o", str(tmp_path / "t")], check=True)


# ---------------------------------------------------------------- binding and build rules


def test_compiled_path_in_ci():
    if native.mode() == "require":
        assert native.available(), "COMPRESS_NATIVE=require but the C decoder did not build"
    if native.available():
        assert os.path.exists(native.build())


def test_load_uses_c_path(tmp_path, monkeypatch):
    lib()
    calls = []
    real = native.load_buffer
    monkeypatch.setattr(native, "load_buffer", lambda *a, **k: calls.append(1) or real(*a, **k))
    from compress.export import pack

    pack({"w": torch.tensor([[0.5, 0.0], [0.0, -1.0]])}, tmp_path / "m.psq", bits={"w": 4},
         scales={"w": torch.tensor(0.5)})
    assert compress.load(tmp_path / "m.psq")["w"][1, 1] == -1.0
    assert calls == [1]
    monkeypatch.setenv(native.ENV, "0")
    assert compress.load(tmp_path / "m.psq")["w"][1, 1] == -1.0  # the pure-Python path
    assert calls == [1]


def _fresh_state(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("COMPRESS_NATIVE_CACHE", str(tmp_path / "cache"))


def test_without_compiler_falls_back_once(tmp_path, monkeypatch):
    from compress.export import pack

    pack({"w": torch.ones(2, 2)}, tmp_path / "m.psq", bits={"w": 4}, scales={"w": torch.tensor(0.5)})
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(native.ENV, "auto")
    with pytest.warns(RuntimeWarning, match="pure-Python"):
        out = compress.load(tmp_path / "m.psq")
    assert torch.equal(out["w"], torch.ones(2, 2))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        compress.load(tmp_path / "m.psq")
    monkeypatch.setenv(native.ENV, "require")
    with pytest.raises(native.NativeUnavailable, match="require"):
        compress.load(tmp_path / "m.psq")
    with pytest.raises(native.NativeUnavailable):
        compress.load(tmp_path / "m.psq", native=True)
    monkeypatch.setenv(native.ENV, "0")
    assert native.library() is None


def test_parallel_first_builds_share_one_library(tmp_path):
    lib()
    cache = tmp_path / "cache"
    env = {**os.environ, "COMPRESS_NATIVE_CACHE": str(cache), native.ENV: "require"}
    code = "from compress import native; print(native.build()); native.library()"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    paths = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1 and os.path.exists(paths.pop())
    assert not [f for f in os.listdir(cache) if f.startswith(".build-")]


def test_crc32_matches_zlib():
    c = lib()
    rng = random.Random(3)
    for n in list(range(0, 70)) + [65535, 65536, 65537, 65536 * 4 + 13, 1 << 20, 3615552]:
        data = bytes(rng.getrandbits(8) for _ in range(min(n, 4096))) * (n // 4096 + 1)
        data = data[:n]
        seed = rng.getrandbits(32)
        assert c.psq_crc32(0, data, n) == zlib.crc32(data), n
        assert c.psq_crc32(seed, data, n) == zlib.crc32(data, seed), n


def test_float_casts_match_torch_and_reference():
    c = lib()
    rng = random.Random(5)
    xs = [rng.getrandbits(32) for _ in range(30000)]
    for base in range(0x32000000, 0x48000000, 0x00200000):  # f16's subnormal, normal and overflow edges
        xs += [base, base + 0xFFF, base + 0x1000, base + 0x1001, base + 0x2000, base + 0x7FFF, base + 0x8000]
    xs += [0x7F7FFFFF, 0xFF7FFFFF, 0x477FEFFF, 0x477FF000, 0x33000000, 0x33000001, 0x387FC000, 0x80000000, 0]
    xs = [x for x in xs if (x & 0x7FFFFFFF) < 0x7F800000]  # finite: all a valid file can give
    t = torch.tensor(struct.unpack(f"<{len(xs)}f", struct.pack(f"<{len(xs)}I", *xs)))
    h = t.to(torch.float16).view(torch.int16).tolist()
    b = t.to(torch.bfloat16).view(torch.int16).tolist()
    for x, hh, bb in zip(xs, h, b):
        assert c.psq_f32_to_f16(x) == reference.f32_to_f16(x) == hh & 0xFFFF, hex(x)
        assert c.psq_f32_to_bf16(x) == reference.f32_to_bf16(x) == bb & 0xFFFF, hex(x)
    halves = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    wide = halves.float().view(torch.int32).tolist()
    for hbits, want in zip(range(1 << 16), wide):
        if (hbits & 0x7C00) != 0x7C00:
            assert c.psq_f16_to_f32(hbits) == want & 0xFFFFFFFF, hex(hbits)


# ---------------------------------------------------------------- golden corpus


def test_corpus_covers_the_matrix(corpus):
    seen, raw = set(), set()
    for name, data in corpus:
        if not name.startswith(("dense", "bitmask", "golomb", "block")):
            continue
        pf = compress.decoder.from_bytes(data)
        for r in pf.records:
            if r.kind == L.QUANT:
                seen.add((r.encoding, r.bits, r.scale_count > 1, r.dtype))
            else:
                raw.add((r.dtype, r.store))
    assert seen == {(e, b, g, d) for e in range(4) for b in range(2, 9) for g in (False, True) for d in (1, 2, 3, 4)}
    assert raw >= {(d, d) for d in range(1, 11)} | {(1, 2)}
    stores = set()  # 16-bit scales under every encoding, per tensor and per channel
    for name, data in corpus:
        if name.startswith("scales16-"):
            stores |= {(r.store, r.encoding, r.scale_count > 1) for r in compress.decoder.from_bytes(data).records}
    assert stores == {(s, e, g) for s in (2, 3) for e in range(4) for g in (False, True)}


def test_corpus_bit_identical(corpus):
    lib()
    accepted = 0
    for _, data in corpus:
        accepted += assert_agree(data) is not None
    assert accepted >= 42 + 14 + 8 + 24


def test_rows_equal_whole_tensor(corpus):
    c = lib()
    for name, data in corpus:
        if name.startswith("mutant"):
            continue
        buf = bytearray(data)
        opened = native.Opened(c, buf, 1 << 28)
        for t in opened.tensors:
            whole = torch.empty(tuple(t.dims[: t.rank]), dtype=getattr(torch, reference.L.DTYPES[t.dtype][0]))
            opened.decode_into(t, whole)
            rows, err = native.PsqRows(), native.PsqError()
            assert c.psq_rows_begin(ctypes.byref(opened.file), ctypes.byref(t), ctypes.byref(rows), ctypes.byref(err)) == 0
            flat = whole.reshape(rows.rows, -1) if rows.rows else whole
            row = torch.empty_like(flat[0]) if rows.rows else None
            for r in range(rows.rows):
                nbytes = row.numel() * row.element_size()
                assert c.psq_rows_next(ctypes.byref(rows), row.data_ptr() if nbytes else None, nbytes,
                                       ctypes.byref(err)) == 0
                assert same(row, flat[r]), (name, opened.name(t), r)
            assert c.psq_rows_next(ctypes.byref(rows), None, 0, ctypes.byref(err)) != 0  # past the last row


def test_levels_times_scales_equal_the_reference(corpus):
    """psq_decode_levels: float32(level) * scale is the reference's float32 tensor, bit for bit."""
    import numpy as np

    c = lib()
    checked = set()
    for name, data in corpus:
        if name.startswith("mutant"):
            continue
        ref = {t["name"]: t for t in reference.decode_file(data)["tensors"]}
        opened = native.Opened(c, bytearray(data), 1 << 28)
        for t in opened.tensors:
            if t.kind != L.QUANT:
                with pytest.raises(compress.errors.ArgumentError, match="t must be a QUANT tensor"):
                    native.decode_levels(opened, t)
                continue
            levels, scales = native.decode_levels(opened, t)
            assert levels.dtype == np.int8 and levels.shape == tuple(t.dims[: t.rank])
            assert scales.dtype == np.float32 and scales.shape == (t.scale_count,)
            tensor = ref[opened.name(t)]
            assert levels.reshape(-1).tolist() == tensor["levels"]
            assert scales.tolist() == tensor["scales"]  # float32 widened to Python floats: exact
            rows = t.dims[0] if t.rank else 1
            per_row = np.repeat(scales, t.numel // rows) if t.scale_count > 1 else scales[0]
            got = levels.reshape(-1).astype(np.float32) * per_row
            want = np.array([reference.dequantize_level(q, s) for q, s in
                             zip(tensor["levels"], np.broadcast_to(per_row, (t.numel,)).tolist())], np.float32)
            assert np.array_equal(got.view(np.int32), want.view(np.int32)), name
            if tensor["dtype"] == "float32":  # and the decoded tensor itself
                assert np.array_equal(got.view(np.int32), np.array(tensor["values"], np.float32).view(np.int32))
            checked.add(t.encoding)
    assert checked >= {L.DENSE, L.BITMASK, L.GOLOMB}


def test_levels_refuses_small_buffers(corpus):
    c = lib()
    name, data = next((n, d) for n, d in corpus if n.startswith("bitmask"))
    opened = native.Opened(c, bytearray(data), 1 << 28)
    t = next(t for t in opened.tensors if t.kind == L.QUANT and t.numel > 1)
    levels = (ctypes.c_int8 * t.numel)()
    scales = (ctypes.c_float * t.scale_count)()
    f, err = ctypes.byref(opened.file), native.PsqError()
    assert c.psq_decode_levels(f, ctypes.byref(t), levels, t.numel, scales, t.scale_count, ctypes.byref(err)) == 0
    assert c.psq_decode_levels(f, ctypes.byref(t), levels, t.numel - 1, scales, t.scale_count,
                               ctypes.byref(err)) == 17 and err.field == b"levels"
    assert c.psq_decode_levels(f, ctypes.byref(t), levels, t.numel, scales, t.scale_count - 1,
                               ctypes.byref(err)) == 17 and err.field == b"scales"
    raw = next((t for t in opened.tensors if t.kind == L.RAW), None)
    if raw is not None:
        assert c.psq_decode_levels(f, ctypes.byref(raw), levels, t.numel, scales, t.scale_count,
                                   ctypes.byref(err)) == 17


def test_older_c_reader_refuses_each_flag(tmp_path, corpus):
    """psq.c built without a feature bit (-DPSQ_KNOWN_FLAGS) refuses the files that set it, at the header."""
    lib()
    files = dict(corpus)
    picks = {"block": "block-b4-tensor.psq", "scales16": "edge-scales16-scalar.psq", "plain": "dense-b4-tensor.psq"}
    for name, file in picks.items():
        (tmp_path / f"{name}.psq").write_bytes(files[file])
    names = [f"{n}.psq" for n in picks]
    for known, refused in ((0, {"block", "scales16"}), (L.FLAG_SCALES16, {"block"}), (L.FLAG_BLOCK, {"scales16"})):
        tool = native._compile(native.compiler(), ("-O1", "-std=c99"), ("psqdump.c", "psq.c"), "psqdump-known{key}",
                               (f"-DPSQ_KNOWN_FLAGS={known}u",))
        lines = run_tool(tool, tmp_path, names)
        for name in picks:
            last = [line for line in lines if line.startswith(f"{name}.psq ")][-1]
            if name in refused:
                assert last == f"{name}.psq error flags 12", last
            else:
                assert last.split()[1] == "ok", last


def test_duplicate_check_without_work_buffer(tiny_dup):
    c = lib()
    for work in (None, (ctypes.c_uint32 * 8)()):
        f, err = native.PsqFile(), native.PsqError()
        rc = c.psq_open(bytes(tiny_dup), len(tiny_dup), 1 << 28, work, 8 if work else 0, ctypes.byref(f),
                        ctypes.byref(err))
        assert rc == 16 and err.field == b"name"


@pytest.fixture
def tiny_dup(tmp_path):
    from compress.export import pack

    pack({"a": torch.ones(1), "b": torch.ones(1), "c": torch.ones(2)}, tmp_path / "d.psq", bits={})
    buf = bytearray((tmp_path / "d.psq").read_bytes())
    (meta_len,) = struct.unpack_from("<I", buf, 20)
    names_at = 48 + meta_len + 3 * 88
    buf[names_at + 2] = ord("a")  # "c" -> "a"
    return conformance.resign(bytes(buf))


# ---------------------------------------------------------------- the sanitized CLI


def run_tool(tool: str, directory, names, max_numel=None) -> list:
    lines = []
    for i in range(0, len(names), 400):
        args = [tool] + (["--max-numel", str(max_numel)] if max_numel else []) + names[i : i + 400]
        proc = subprocess.run(args, cwd=directory, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "runtime error" not in proc.stderr and "Sanitizer" not in proc.stderr, proc.stderr[-3000:]
        lines += proc.stdout.splitlines()
    return lines


@pytest.fixture(scope="module")
def sanitized_tools():
    lib()
    return [native.build_tool(sanitize=True, simd=True), native.build_tool(sanitize=True, simd=False)]


def test_sanitized_tool_over_corpus(tmp_path, sanitized_tools):
    names = conformance.write(str(tmp_path))
    want = (tmp_path / "expected.txt").read_text().splitlines()
    for tool in sanitized_tools:
        assert run_tool(tool, tmp_path, names) == want


def _mutants(tmp_path, mutator, seed):
    rng = random.Random(seed)
    base = seeds(tmp_path)
    return [mutator(rng.choice(base), rng) for _ in range(N_MUTANTS)]


@pytest.mark.slow
@pytest.mark.parametrize("mutator,seed", [(mutate, 11), (mutate_block, 12)])
def test_differential_fuzz(tmp_path, mutator, seed):
    lib()
    rejected = 0
    for buf in _mutants(tmp_path, mutator, seed):
        rejected += assert_agree(buf, FUZZ_NUMEL) is None
    assert N_MUTANTS // 10 < rejected < N_MUTANTS


@pytest.mark.slow
@pytest.mark.parametrize("mutator,seed", [(mutate, 13), (mutate_block, 14)])
def test_sanitized_tool_over_mutants(tmp_path, sanitized_tools, mutator, seed):
    files = tmp_path / "m"
    files.mkdir()
    names, want = [], {}
    for i, buf in enumerate(_mutants(tmp_path, mutator, seed)):
        name = f"m{i:05d}.psq"
        (files / name).write_bytes(buf)
        names.append(name)
        want[name] = conformance.expected(name, buf, FUZZ_NUMEL)
    for tool in sanitized_tools:
        got = {}
        for line in run_tool(tool, files, names, FUZZ_NUMEL):
            got.setdefault(line.split()[0], []).append(line)
        for name in names:
            if want[name][0].split()[1:3] == ["error", "metadata"]:
                # the canonical-JSON check is the host's: C alone may accept such a file
                assert got[name][-1].split()[1] in ("ok", "error"), got[name]
                continue
            assert got[name] == want[name], name
