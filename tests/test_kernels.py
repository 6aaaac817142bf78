"""The int8 matrix kernels (compress/native/kernels.c) against their oracles.

* a numpy emulation of the summation order of kernels.h (one fused multiply-add per stored
  element, rounded once: emulated exactly in float64 with round-to-odd), bit for bit, including
  on inputs where separate roundings, or a float64 sum rounded twice, would differ;
* the dispatching kernels (AVX2 + FMA where the CPU has both) equal the reference bit for bit, for
  dense, CSR and BSR, on random and edge shapes; a batched call equals n one-frame calls;
* numpy float64 ``(q * scale[:, None]) @ x`` within a rounding bound derived from the sizes;
* the CSR / BSR structures against numpy (``np.flatnonzero``, block ``any()``);
* the strict-flags compile, the ASan/UBSan run of kernels_check.c, the portable build, and
  the bench section's ``--kernels-quick`` run (the JSON's structure only).
"""

import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from compress import native
from compress.native import kernels

SRC = native.HERE
STRICT = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Wconversion", "-Werror"]
BLOCKS = (1, 3, 4, 8, 16, 32)
U = 2.0**-24  # float32 unit roundoff


@pytest.fixture(scope="module")
def lib():
    if native.mode() != "require" and not native.available():
        pytest.skip("no C compiler (COMPRESS_NATIVE=require makes this a failure)")
    return kernels.library()


def bits(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def same_bits(a, b) -> bool:
    return np.array_equal(bits(a), bits(b))


# ---------------------------------------------------------------- oracles


def stored(q: np.ndarray, storage: str, block: int = 1) -> list:
    """Each row's stored elements in kernel order, as column indices (numpy only)."""
    rows, cols = q.shape
    out = []
    for r in range(rows):
        if storage == "dense":
            out.append(np.arange(cols))
        elif storage == "csr":
            out.append(np.flatnonzero(q[r]))
        else:
            ks = [np.arange(k0, min(k0 + block, cols)) for k0 in range(0, cols, block) if q[r, k0 : k0 + block].any()]
            out.append(np.concatenate(ks) if ks else np.zeros(0, dtype=np.int64))
    return out


def fmaf(a, b, c) -> np.ndarray:
    """C99 fmaf(a, b, c) for an int8 level a and float32 b, c (arrays): a * b + c exactly, rounded
    once to float32. The product is exact in float64 (7 + 24 bits); the float64 sum is made
    round-to-odd (TwoSum's error says which way the exact sum lies), so that rounding it to
    float32 is the single correct rounding (a plain float64 sum would round twice)."""
    p = np.float64(a) * np.asarray(b, np.float64)
    c = np.asarray(c, np.float64)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)  # exact: p + c == s + err
    with np.errstate(invalid="ignore", over="ignore"):
        even = (s.view(np.uint64) & np.uint64(1)) == 0
        step = np.isfinite(s) & (err != 0) & even
        s = np.where(step, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
        return s.astype(np.float32)


def emulate(q, scale, x, order, fma: bool = True) -> np.ndarray:
    """kernels.h's order in numpy: lane i mod 8 = fmaf(float(q), x, lane), then the reduction.

    ``fma=False`` rounds each product and sum separately instead (the order before FMA).
    """
    x = np.atleast_2d(x)  # (n, cols)
    n, rows = x.shape[0], q.shape[0]
    y = np.empty((n, rows), dtype=np.float32)
    for r, ks in enumerate(order):
        acc = np.zeros((n, 8), dtype=np.float32)  # (n, 8)
        for i, k in enumerate(ks):
            if fma:
                acc[:, i % 8] = fmaf(q[r, k], x[:, k], acc[:, i % 8])
            else:
                acc[:, i % 8] = acc[:, i % 8] + np.float32(q[r, k]) * x[:, k]
        s = ((acc[:, 0] + acc[:, 4]) + (acc[:, 1] + acc[:, 5])) + ((acc[:, 2] + acc[:, 6]) + (acc[:, 3] + acc[:, 7]))
        y[:, r] = s * scale[r]
    return y


def random_case(rng, rows, cols, density=0.5, blocky=0, x_scale="mixed"):
    """Levels in [-127, 127] at ``density`` (whole 1 x blocky blocks zeroed when blocky)."""
    q = rng.integers(-127, 128, size=(rows, cols)).astype(np.int8)
    if blocky:
        nb = -(-cols // blocky)
        keep = np.repeat(rng.random((rows, nb)) < density, blocky, axis=1)[:, :cols]
        q = np.where(keep & (rng.random((rows, cols)) < 0.9), q, 0).astype(np.int8)
    else:
        q = np.where(rng.random((rows, cols)) < density, q, 0).astype(np.int8)
    scale = (rng.random(rows) * 0.01 + 1e-4).astype(np.float32)
    return q, scale


def random_x(rng, n, cols):
    """Mixed magnitudes: 1e-30 to 1e20, both signs, so that the order of the sums matters."""
    mag = 10.0 ** rng.choice([-30, -6, -3, 0, 0, 1, 3, 6, 20], size=(n, cols))
    return (rng.standard_normal((n, cols)) * mag).astype(np.float32)


def build(storage, q, scale, block, lib=None):
    if storage == "dense":
        return kernels.dense(q, scale, lib=lib)
    if storage == "csr":
        return kernels.csr(q, scale, lib=lib)
    return kernels.bsr(q, scale, block, lib=lib)


# ---------------------------------------------------------------- bit-exactness

STORAGES = ("dense", "csr", "bsr")


STORAGE_BLOCKS = [("dense", 1), ("csr", 1)] + [("bsr", b) for b in BLOCKS]


@pytest.mark.parametrize("storage,block", STORAGE_BLOCKS)
def test_reference_is_the_order_of_kernels_h(lib, storage, block):
    rng = np.random.default_rng(block * 7 + len(storage))
    for rows, cols, n in ((5, 37, 1), (3, 64, 3), (1, 19, 2)):
        q, scale = random_case(rng, rows, cols, density=0.6, blocky=block if storage == "bsr" else 0)
        x = random_x(rng, n, cols)
        w = build(storage, q, scale, block)
        want = emulate(q, scale, x, stored(q, storage, block))
        assert same_bits(w.matmul(x, ref=True), want)
        assert same_bits(w.matmul(x), want)


@pytest.mark.parametrize("storage", STORAGES)
def test_fused_multiply_add(lib, storage):
    """One rounding per multiply-add: on these inputs separate roundings differ, and so does a
    float64 sum rounded to float32 (two roundings), while the kernels give the exact fmaf."""
    # Frame 0: lane 0 holds 3, then adds -3 * (1 + 2**-23): the exact product needs 25 bits
    # (fused: -3 * 2**-23 exactly; separate roundings lose it). Frame 1: lane 0 holds 1, then
    # adds 65 * 16519105 * 2**-54 = 2**-24 + 2**-54, just above half an ulp of 1: fused rounds
    # to 1 + 2**-23, while the float64 sum rounds to 1 + 2**-24 first, then ties to even, 1.
    # Every level is nonzero (x is 0 elsewhere), so all three storages store every element.
    cols = 17
    q = np.ones((2, cols), dtype=np.int8)
    q[:, 0], q[:, 8] = 3, -3
    q[1, 0], q[1, 8] = 1, 65
    x = np.zeros((2, cols), dtype=np.float32)
    x[0, 0], x[0, 8], x[0, 3] = 1, np.float32(1 + 2.0**-23), np.float32(2.0**-30)
    x[1, 0], x[1, 8] = 1, np.float32(16519105 * 2.0**-54)
    scale = np.ones(2, dtype=np.float32)
    order = stored(q, storage, 8)
    plain, fused = emulate(q, scale, x, order, fma=False), emulate(q, scale, x, order)
    assert not same_bits(plain[0], fused[0])  # the input tells the two apart
    assert fused[1, 1] == np.float32(1 + 2.0**-23)  # the exact fmaf, not the float64 sum rounded twice
    assert np.float32(np.float64(65) * np.float64(x[1, 8]) + 1.0) == np.float32(1)
    assert same_bits(fused[0, 0], np.float32(-3 * 2.0**-23 + 2.0**-30))
    w = build(storage, q, scale, 8)
    assert same_bits(w.matmul(x, ref=True), fused)
    assert same_bits(w.matmul(x), fused)
    for f in range(2):
        assert same_bits(w.matmul(x[f]), fused[f])


def test_fmaf_emulation_is_exact():
    """The numpy fmaf against exact rational arithmetic, on random operands of mixed magnitudes
    and on ties, double-rounding traps and subnormal results."""
    from fractions import Fraction

    rng = np.random.default_rng(9)
    a = rng.integers(-127, 128, size=3000)
    b = random_x(rng, 1, 3000)[0]
    c = random_x(rng, 1, 3000)[0]
    c[:1000] = (-np.float64(a[:1000]) * b[:1000]).astype(np.float32)  # near-cancellation
    c[1000:1100] = 1
    b[1000:1100] = np.float32(16519105 * 2.0**-54) * rng.choice([1, -1, 2, 0.5], size=100).astype(np.float32)
    a[1000:1100] = 65
    b[1100:1200] = np.float32(2.0**-140)  # subnormal results
    c[1100:1200] = np.float32(2.0**-135)
    got = fmaf(a, b, c)
    for ai, bi, ci, g in zip(a.tolist(), b.tolist(), c.tolist(), got.tolist()):
        exact = Fraction(ai) * Fraction(bi) + Fraction(ci)
        lo = np.float32(float(exact))  # float(Fraction) is correctly rounded to float64; check the float32 one
        cands = {lo, np.nextafter(lo, np.float32(np.inf)), np.nextafter(lo, np.float32(-np.inf))}
        best = min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.float32(v).view(np.uint32)) & 1))
        assert np.float32(g) == best, (ai, bi, ci)


def shapes():
    rng = np.random.default_rng(1)
    out = [(1, 1), (1, 8), (1, 9), (4, 7), (4, 16), (7, 33), (9, 100), (33, 192), (5, 257), (17, 400)]
    out += [(int(rng.integers(1, 40)), int(rng.integers(1, 300))) for _ in range(6)]
    return out


@pytest.mark.parametrize("rows,cols", shapes())
def test_dispatch_equals_reference(lib, rows, cols):
    rng = np.random.default_rng(rows * 1000 + cols)
    for density in (0.0, 0.1, 0.5, 1.0):
        for block in BLOCKS:
            q, scale = random_case(rng, rows, cols, density=density, blocky=block if density < 1 else 0)
            if rows > 2:
                q[1] = 0  # an empty row
            for n in (1, 2, 5):
                x = random_x(rng, n, cols)
                for storage in STORAGES:
                    if storage != "bsr" and block != BLOCKS[0]:
                        continue
                    w = build(storage, q, scale, block)
                    ref, fast = w.matmul(x, ref=True), w.matmul(x)
                    assert same_bits(fast, ref), (storage, rows, cols, block, density, n)


@pytest.mark.parametrize("storage", STORAGES)
def test_all_zero_and_one_row(lib, storage):
    rng = np.random.default_rng(2)
    for rows, cols in ((1, 1), (1, 45), (6, 45), (3, 0)):
        q = np.zeros((rows, cols), dtype=np.int8)
        scale = np.full(rows, 0.5, np.float32)
        x = random_x(rng, 3, cols)
        w = build(storage, q, scale, 8)
        assert same_bits(w.matmul(x), np.zeros((3, rows), np.float32))
        assert same_bits(w.matmul(x, ref=True), np.zeros((3, rows), np.float32))
        if rows == 1 and cols:
            q[0, cols - 1] = -127
            w = build(storage, q, scale, 8)
            assert same_bits(w.matmul(x), w.matmul(x, ref=True))
            assert same_bits(w.matmul(x)[:, 0], (np.float32(-127) * x[:, -1]) * np.float32(0.5))


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("block", (4, 8, 16, 5))
def test_batched_equals_single_frames(lib, storage, block):
    rng = np.random.default_rng(block)
    q, scale = random_case(rng, 37, 203, density=0.4, blocky=block)
    w = build(storage, q, scale, block)
    for n in (2, 3, 4, 7, 48):
        x = random_x(rng, n, 203)
        batched = w.matmul(x)
        single = np.stack([w.matmul(x[f]) for f in range(n)])
        assert same_bits(batched, single), n
        assert same_bits(batched, w.matmul(x, ref=True)), n


def same_or_both_nan(a, b) -> bool:
    """Bit-identical, except that a NaN may carry any payload (kernels.h)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(bits(a)[~nan], bits(b)[~nan])


@pytest.mark.parametrize("storage,block", [("dense", 1), ("csr", 1), ("bsr", 8), ("bsr", 16), ("bsr", 4), ("bsr", 5)])
def test_register_tiles_and_their_edges(lib, storage, block):
    """The AVX2 tiles (rows x frames, four-row groups at n = 1) on row counts that are not a
    multiple of the tile, frame counts around the tile (8 and 6 frames, then 4, 3, 2, 1), rows
    of unequal block counts, empty rows and narrow last blocks: bit-exact against the
    reference and against one call per frame."""
    rng = np.random.default_rng(100 + block + len(storage))
    for rows, cols in ((1, 64), (2, 13), (3, 67), (5, 40), (6, 200), (7, 96), (9, 37), (13, 136)):
        for density in (0.1, 0.6):
            q, scale = random_case(rng, rows, cols, density=density, blocky=block if storage == "bsr" else 0)
            if rows > 3:
                q[2] = 0  # an empty row inside a group of four
            w = build(storage, q, scale, block)
            for n in (1, 2, 3, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19, 23, 62):
                x = random_x(rng, n, cols)
                fast = w.matmul(x)
                assert same_bits(fast, w.matmul(x, ref=True)), (rows, cols, density, n)
                assert same_bits(fast, np.stack([w.matmul(x[f]) for f in range(n)])), (rows, cols, density, n)
            x = random_x(rng, 9, cols)
            x[rng.random(x.shape) < 0.05] = np.inf  # infinities: inf * 0 is NaN, inf - inf too
            x[rng.random(x.shape) < 0.05] = -np.inf
            fast = w.matmul(x)
            assert same_or_both_nan(fast, w.matmul(x, ref=True)), (rows, cols, density)
            assert same_or_both_nan(fast, np.stack([w.matmul(x[f]) for f in range(9)])), (rows, cols, density)


@pytest.mark.parametrize("block", (8, 16))
def test_bsr_x_alignment(lib, block):
    """BSR copies an unaligned x to an aligned stack buffer (n = 1, and per tile of 8 frames):
    the same bits at every offset of x, and beyond the copy's size (cols > 4096 / 8 frames)."""
    rng = np.random.default_rng(200 + block)
    for rows, cols in ((9, 64), (16, 200), (12, 520), (8, 4100)):
        q, scale = random_case(rng, rows, cols, density=0.5, blocky=block)
        w = build("bsr", q, scale, block)
        for n in (1, 8, 17):
            base = random_x(rng, n, cols).reshape(-1)
            want = w.matmul(base.reshape(n, cols), ref=True)
            buf = np.empty(n * cols + 16, dtype=np.float32)
            for off in range(9):  # 4-byte steps through a 32-byte line
                buf[off:off + n * cols] = base
                x = buf[off:off + n * cols].reshape(n, cols)
                assert same_bits(w.matmul(x), want), (rows, cols, n, off)
                if n == 1:
                    assert same_bits(w.matmul(x[0]), want[0]), (rows, cols, off)


# ---------------------------------------------------------------- against float64


@pytest.mark.parametrize("storage", STORAGES)
def test_matches_float64_within_rounding(lib, storage):
    rng = np.random.default_rng(3)
    for rows, cols, n, block in ((64, 400, 1, 16), (48, 190, 5, 8), (7, 1024, 2, 4)):
        q, scale = random_case(rng, rows, cols, density=0.5, blocky=block)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        w = build(storage, q, scale, block)
        y = w.matmul(x).astype(np.float64)
        wf = q.astype(np.float64) * scale.astype(np.float64)[:, None]  # (rows, cols)
        want = x.astype(np.float64) @ wf.T  # (n, rows)
        # each lane sums ceil(cols / 8) products (one rounding per fused multiply-add), 3 levels
        # of reduction, 1 multiply by the scale: first-order bound (m + 5) u sum|t| (loose now)
        m = -(-cols // 8)
        bound = 1.01 * (m + 5) * U * (np.abs(x).astype(np.float64) @ np.abs(wf).T)
        assert np.all(np.abs(y - want) <= bound), np.max(np.abs(y - want) / bound)


def test_csr_and_bsr_agree_with_numpy(lib):
    rng = np.random.default_rng(4)
    q, scale = random_case(rng, 20, 77, density=0.3)
    x = rng.standard_normal((3, 77)).astype(np.float32)
    want = x.astype(np.float64) @ (q.astype(np.float64) * scale[:, None]).T
    for w in (kernels.csr(q, scale), kernels.bsr(q, scale, 8), kernels.bsr(q, scale, 3), kernels.dense(q, scale)):
        assert np.allclose(w.matmul(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ---------------------------------------------------------------- structures


def test_csr_structure(lib):
    rng = np.random.default_rng(5)
    q, scale = random_case(rng, 13, 70, density=0.3)
    q[4] = 0
    w = kernels.csr(q, scale)
    assert w.nnz == np.count_nonzero(q)
    counts = [np.flatnonzero(row).size for row in q]
    assert w.row_ptr.tolist() == [0] + np.cumsum(counts).tolist()
    for r in range(13):
        lo, hi = w.row_ptr[r], w.row_ptr[r + 1]
        assert w.col[lo:hi].tolist() == np.flatnonzero(q[r]).tolist()
        assert w.val[lo:hi].tolist() == q[r][q[r] != 0].tolist()


@pytest.mark.parametrize("block", BLOCKS + (256,))
def test_bsr_structure(lib, block):
    rng = np.random.default_rng(block)
    rows, cols = 11, 101
    q, scale = random_case(rng, rows, cols, density=0.4, blocky=block)
    w = kernels.bsr(q, scale, block)
    nb = -(-cols // block)
    padded = np.zeros((rows, nb * block), dtype=np.int8)
    padded[:, :cols] = q
    blocks = padded.reshape(rows, nb, block)  # (rows, nb, block)
    keep = blocks.any(axis=2)  # (rows, nb)
    assert w.blocks == keep.sum()
    assert w.row_ptr.tolist() == [0] + np.cumsum(keep.sum(axis=1)).tolist()
    assert w.bcol.tolist() == [int(b) for r in range(rows) for b in np.flatnonzero(keep[r])]
    assert np.array_equal(w.val.reshape(-1, block), blocks[keep])  # padding levels are zero
    assert w.weight_bytes() == w.row_ptr.nbytes + 2 * w.blocks + w.blocks * block + 4 * rows


def test_build_errors_return_minus_one(lib):
    q = np.array([[1, 0, 0, 2]], dtype=np.int8)
    row_ptr = np.zeros(2, np.uint32)
    idx = np.zeros(4, np.uint16)
    val = np.zeros(1024, np.int8)
    p = [a.ctypes.data for a in (q, row_ptr, idx, val)]
    assert lib.psq_bsr_build(p[0], 1, 4, 0, p[1], p[2], p[3]) == -1
    assert lib.psq_bsr_build(p[0], 1, 4, 257, p[1], p[2], p[3]) == -1
    assert lib.psq_bsr_build(None, 0, 65537, 1, p[1], p[2], p[3]) == -1  # 65537 blocks; rows 0 reads nothing
    assert lib.psq_csr_build(None, 0, 65537, p[1], p[2], p[3]) == -1
    assert lib.psq_bsr_build(None, 0, 2 * 65536, 2, p[1], p[2], p[3]) == 0  # 65536 blocks fit
    assert lib.psq_bsr_build(p[0], 1, 4, 2, p[1], p[2], p[3]) == 0
    assert row_ptr.tolist() == [0, 2] and idx[:2].tolist() == [0, 1] and val[:4].tolist() == [1, 0, 0, 2]


def test_python_argument_errors(lib):
    q = np.zeros((2, 3), np.int8)
    with pytest.raises(ValueError, match=r"^block must be an integer in \[1, 256\], got 0$"):
        kernels.bsr(q, 1.0, 0)
    with pytest.raises(ValueError, match=r"^q must be a 2-D int8 array"):
        kernels.dense(q.astype(np.int16), 1.0)
    with pytest.raises(ValueError, match=r"^scale must be a scalar or an array of shape \(2,\)"):
        kernels.dense(q, np.ones(3))
    with pytest.raises(ValueError, match=r"^x must be a float32 array of shape \(3,\) or \(n, 3\)"):
        kernels.dense(q, 1.0).matmul(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"^q must be an array of at most 65536 columns for CSR"):
        kernels.csr(np.zeros((0, 65537), np.int8), 1.0)


# ---------------------------------------------------------------- builds


def compilers() -> list:
    found = [cc for cc in ("gcc", "clang") if shutil.which(cc)]
    if not found and native.mode() == "require":
        pytest.fail("no gcc or clang")
    return found or pytest.skip("no gcc or clang")


@pytest.mark.parametrize("variant", [["-O2"], ["-O3", "-march=native"], ["-O3", "-DPSQ_NO_SIMD"], ["-O0"]])
def test_strict_warnings(tmp_path, variant):
    for cc in compilers():
        for src in ("kernels.c", "kernels_check.c", "kernels_bench.c"):
            cmd = [cc, *STRICT, *variant, "-c", os.path.join(SRC, src), "-o", str(tmp_path / "o.o")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"


@pytest.mark.parametrize("variant", [["-O2"], ["-O3", "-march=native"]])
def test_object_needs_no_allocator_and_no_io(tmp_path, variant):
    if not shutil.which("nm"):
        pytest.skip("no nm")
    obj = tmp_path / "kernels.o"
    subprocess.run([compilers()[0], "-std=c99", *variant, "-c", os.path.join(SRC, "kernels.c"), "-o", str(obj)],
                   check=True)
    undefined = set(subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split())
    undefined -= {"U", "_GLOBAL_OFFSET_TABLE_"}
    # memcpy / memset, fmaf (libm's, where -march does not give the instruction), and the CPU
    # feature word __builtin_cpu_supports reads
    assert undefined <= {"memcpy", "memset", "fmaf", "__cpu_model", "__cpu_indicator_init"}, undefined
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout.split("\n")
    writable = [line for line in symbols if len(line.split()) == 3 and line.split()[1] in "bBdDcC"]
    assert not writable, writable  # no static mutable state


def test_header_is_self_contained(tmp_path):
    (tmp_path / "t.c").write_text('#include "kernels.h"\nint main(void) { psq_bsr b; (void)b; return 0; }\n')
    subprocess.run([compilers()[0], *STRICT, "-I", SRC, str(tmp_path / "t.c"), "-o", str(tmp_path / "t")], check=True)


def run_check(tool: str) -> str:
    proc = subprocess.run([tool, "1500", "7"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "runtime error" not in proc.stderr and "Sanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok 1500 cases"), proc.stdout
    return proc.stdout


def test_sanitized_check_program(lib):
    out = run_check(kernels.build_check(sanitize=True, simd=True))
    assert out.split()[-1] == str(int(kernels.simd()))  # the fast path was the one compared
    out = run_check(kernels.build_check(sanitize=True, simd=True, march=False))  # target attributes only
    assert out.split()[-1] == str(int(kernels.simd()))
    assert run_check(kernels.build_check(sanitize=True, simd=False)).split()[-1] == "0"


def test_forced_reference_path(lib):
    """The portable build (-DPSQ_NO_SIMD) dispatches to the reference: same bits as both paths."""
    portable = kernels.library(ctypes.CDLL(kernels.build_library(simd=False)))
    assert portable.psq_kernels_simd() == 0
    rng = np.random.default_rng(6)
    q, scale = random_case(rng, 21, 150, density=0.5, blocky=16)
    x = random_x(rng, 3, 150)
    for storage in STORAGES:
        forced = build(storage, q, scale, 16, lib=portable).matmul(x)
        w = build(storage, q, scale, 16)
        assert same_bits(forced, w.matmul(x, ref=True))
        assert same_bits(forced, w.matmul(x))


def cpu_has_avx2_fma() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = [line.split(":", 1)[1].split() for line in f if line.startswith("flags")]
    except OSError:
        return False
    return bool(flags) and "avx2" in flags[0] and "fma" in flags[0]


def test_simd_reports_the_cpu(lib):
    if not cpu_has_avx2_fma():
        pytest.skip("no AVX2 + FMA on this CPU (or not x86-64 Linux)")
    assert kernels.simd() is True


# ---------------------------------------------------------------- bench section


def test_bench_quick_json(lib, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "compress.bench.kernels", "--kernels-quick", "--kernels-rounds", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threads" in proc.stdout and "Targets:" in proc.stdout
    result = json.loads((tmp_path / "kernels.json").read_text())
    assert result["threads"] == 1 and result["quick"] is True and result["rounds"] == 1
    names = {"torch fp32", "C dense", "C dense ref"} | {f"C CSR {s:.0%}" for s in (0, .5, .75, .9)}
    names |= {f"C BSR{result['block']} {s:.0%}" for s in (0, .5, .75, .9)}
    assert result["cases"] and all(c["n"] >= 1 for c in result["cases"])
    for case in result["cases"]:
        got = {v["name"] for v in case["variants"]}
        assert names <= got, names - got
        assert ("torch int8 dyn" in got) == (result["torch_int8"] is None)
        for v in case["variants"]:
            assert v["seconds"] > 0 and v["weight_bytes"] > 0 and v["stored"] >= 0
            assert v["gmacs"] == pytest.approx(case["rows"] * case["cols"] * case["n"] / v["seconds"] / 1e9)
    assert [t["target"] for t in result["targets"]] == [1.5, 2.5, 4.0, 1.0]
    assert all(isinstance(t["pass"], bool) and t["ratio"] > 0 for t in result["targets"])
