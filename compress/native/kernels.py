"""The int8 matrix kernels (``kernels.h`` / ``kernels.c``) from numpy, through ctypes.

``y = diag(scale) · Q · x`` with Q one tensor's int8 levels, in three storages: dense,
CSR (the nonzeros of each row) and BSR (the 1 × ``block`` blocks of each row that hold a
nonzero). :func:`dense`, :func:`csr` and :func:`bsr` build them from a level array; the
returned object keeps its arrays alive (the C structure points into them) and offers
``matmul(x)`` on the dispatching kernel (AVX2 + FMA where the CPU has both) and
``matmul(x, ref=True)`` on the plain C reference (C99 ``fmaf``). Both give the same bits:
one fused multiply-add per stored element, in the fixed order of kernels.h.

The kernels live in the one shared library (``compress.native.library()``); ``lib=``
takes another CDLL with the same functions (a private build, e.g. the portable
``-DPSQ_NO_SIMD`` one from :func:`build_library`). :func:`build_check` builds the
standalone ``kernels_check.c`` program (ASan and UBSan) that compares the two paths.

The AVX2 BSR kernels specialize blocks of 8 and 16 (one or two 8-float vectors per block)
and 4 (two blocks per vector); other widths take a generic path. 1 × 16 blocks are a
little faster than 1 × 8 on one frame, but cost more WER in training (docs/callbacks.md),
so the recipes and the bench use 1 × 8 (``python -m compress.bench.kernels``).

Example:
    >>> import numpy as np
    >>> from compress.native import kernels
    >>> q = np.array([[1, 0, -2, 0], [0, 0, 0, 3]], dtype=np.int8)
    >>> w = kernels.bsr(q, np.float32(0.5), block=2)
    >>> w.blocks, w.bcol.tolist()
    (3, [0, 1, 1])
    >>> w.matmul(np.ones(4, np.float32)).tolist()
    [-0.5, 1.5]
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

from compress import native
from compress.checks import fail, is_int

MAX_INDEX = 65536  # column / block numbers are uint16
MAX_BLOCK = 256


class PsqDense(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_uint32), ("cols", ctypes.c_uint32), ("q", ctypes.c_void_p),
                ("scale", ctypes.c_void_p)]


class PsqCsr(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_uint32), ("cols", ctypes.c_uint32), ("row_ptr", ctypes.c_void_p),
                ("col", ctypes.c_void_p), ("val", ctypes.c_void_p), ("scale", ctypes.c_void_p)]


class PsqBsr(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_uint32), ("cols", ctypes.c_uint32), ("block", ctypes.c_uint32),
                ("row_ptr", ctypes.c_void_p), ("bcol", ctypes.c_void_p), ("val", ctypes.c_void_p),
                ("scale", ctypes.c_void_p)]


_P, _V, _U32, _U64 = ctypes.POINTER, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64
SIGNATURES = {
    **{f"psq_matmul_{kind}{sfx}": (None, [_P(st), _V, _U32, _V])
       for kind, st in (("dense", PsqDense), ("csr", PsqCsr), ("bsr", PsqBsr)) for sfx in ("", "_ref")},
    "psq_csr_count": (_U64, [_V, _U32, _U32]),
    "psq_csr_build": (ctypes.c_int, [_V, _U32, _U32, _V, _V, _V]),
    "psq_bsr_count": (_U64, [_V, _U32, _U32, _U32]),
    "psq_bsr_build": (ctypes.c_int, [_V, _U32, _U32, _U32, _V, _V, _V]),
    "psq_kernels_simd": (ctypes.c_int, []),
}


def bind(lib):
    """Set the restype and argtypes of the kernels' functions on ``lib`` (a CDLL); returns it."""
    for name, (res, args) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def library(lib=None):
    """``lib`` bound, else the project's shared library (raises NativeUnavailable if absent)."""
    if lib is None:
        lib = native.library()
        if lib is None:
            raise native.NativeUnavailable(f"{native.ENV}=0: the C kernels are disabled")
    if not getattr(lib, "_psq_kernels_bound", False):
        bind(lib)
        lib._psq_kernels_bound = True
    return lib


def build_library(simd: bool = True, extra=()) -> str:
    """A private shared library of ``kernels.c`` alone (the library's flags); ``simd=False``
    builds the portable C only (``-DPSQ_NO_SIMD``). Returns its path; load it with ctypes."""
    ext = ".dylib" if sys.platform == "darwin" else ".so"
    flags = tuple(extra) + (native.NATIVE_FLAGS if simd else ("-DPSQ_NO_SIMD",))
    name = "libpsqkernels-" + ("" if simd else "portable-") + "{key}" + ext
    return native._compile(native.compiler(), native.CFLAGS, ("kernels.c",), name, flags)


def build_check(sanitize: bool = True, simd: bool = True, march: bool = True) -> str:
    """The standalone ``kernels_check`` program (kernels_check.c + kernels.c), with ASan and
    UBSan unless ``sanitize=False``; ``simd=False`` builds the portable C only, ``march=False``
    the AVX2 path through its function attributes alone (no ``-march=native``). Its path.

    Run with no argument (or a case count and a seed), it prints ``ok ...`` and exits 0 when
    every fast result equals the reference one byte for byte, else names the case, exits 1.
    """
    flags = native.SANITIZE if sanitize else ("-O3",)
    extra = ("-std=c99",) + ((native.NATIVE_FLAGS if march else ()) if simd else ("-DPSQ_NO_SIMD",))
    name = "kernels-check-" + ("asan-" if sanitize else "") + ("" if simd else "portable-") + "{key}"
    return native._compile(native.compiler(), flags, ("kernels_check.c", "kernels.c"), name, extra)


def simd(lib=None) -> bool:
    """True when the dispatching kernels take the AVX2 + FMA path on this CPU."""
    return bool(library(lib).psq_kernels_simd())


def _levels(q) -> np.ndarray:
    q = np.asarray(q)
    if q.dtype != np.int8 or q.ndim != 2:
        fail("q", "a 2-D int8 array", f"{q.dtype} array of shape {q.shape}")
    if q.shape[1] >= 1 << 32 or q.shape[0] >= 1 << 32:
        fail("q", "an array with fewer than 2**32 rows and columns", q.shape)
    return np.ascontiguousarray(q)


def _scales(scale, rows: int) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float32)
    if s.ndim == 0:
        s = np.full(rows, s, dtype=np.float32)  # a per-tensor scale, repeated per row
    if s.shape != (rows,):
        fail("scale", f"a scalar or an array of shape ({rows},)", s.shape)
    return np.ascontiguousarray(s)


def _ptr(a: np.ndarray):
    return a.ctypes.data if a.size else None


class _Matrix:
    """Common part: the C structure, the functions, matmul."""

    kind = ""
    rows: int
    cols: int

    def __init__(self, lib):
        self.lib = library(lib)

    def matmul(self, x, ref: bool = False) -> np.ndarray:
        """``x`` (cols,) or (n, cols) float32 -> (rows,) or (n, rows): ``y = x · Wᵀ``.

        ``ref`` runs the plain C reference instead of the dispatching kernel.
        """
        x = np.asarray(x)
        shape_ok = x.ndim in (1, 2) and x.shape[-1] == self.cols and (x.ndim == 1 or x.shape[0] >= 1)
        if x.dtype != np.float32 or not shape_ok:
            fail("x", f"a float32 array of shape ({self.cols},) or (n, {self.cols}) with n >= 1",
                 f"{x.dtype} array of shape {x.shape}")
        x2 = np.ascontiguousarray(x.reshape(x.shape[0] if x.ndim == 2 else 1, self.cols))  # (n, cols)
        n = x2.shape[0]
        if n >= 1 << 32:
            fail("x", "an array of fewer than 2**32 frames", x.shape)
        y = np.empty((n, self.rows), dtype=np.float32)  # (n, rows)
        fn = getattr(self.lib, f"psq_matmul_{self.kind}" + ("_ref" if ref else ""))
        fn(ctypes.byref(self.struct), _ptr(x2), n, _ptr(y))
        return y[0] if x.ndim == 1 else y

    def weight_bytes(self) -> int:
        """Bytes of weights a product reads: levels, index and scales."""
        raise NotImplementedError


class Dense(_Matrix):
    """Dense storage: ``q`` (rows, cols) int8, ``scale`` (rows,) float32."""

    kind = "dense"

    def __init__(self, q, scale, lib=None):
        super().__init__(lib)
        self.q = _levels(q)
        self.rows, self.cols = self.q.shape
        self.scale = _scales(scale, self.rows)
        self.struct = PsqDense(self.rows, self.cols, _ptr(self.q), _ptr(self.scale))

    def weight_bytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes


class CSR(_Matrix):
    """CSR storage: ``row_ptr`` (rows + 1,) uint32, ``col`` and ``val`` (nnz,) uint16 / int8."""

    kind = "csr"

    def __init__(self, q, scale, lib=None):
        super().__init__(lib)
        q = _levels(q)
        self.rows, self.cols = q.shape
        if self.cols > MAX_INDEX:
            fail("q", f"an array of at most {MAX_INDEX} columns for CSR", q.shape)
        self.scale = _scales(scale, self.rows)
        self.nnz = int(self.lib.psq_csr_count(_ptr(q), self.rows, self.cols))
        self.row_ptr = np.zeros(self.rows + 1, dtype=np.uint32)
        self.col = np.zeros(self.nnz, dtype=np.uint16)
        self.val = np.zeros(self.nnz, dtype=np.int8)
        rc = self.lib.psq_csr_build(_ptr(q), self.rows, self.cols, _ptr(self.row_ptr), _ptr(self.col), _ptr(self.val))
        if rc != 0:
            fail("q", "levels whose nonzeros fit a 32-bit row_ptr", q.shape)
        self.struct = PsqCsr(self.rows, self.cols, _ptr(self.row_ptr), _ptr(self.col), _ptr(self.val),
                             _ptr(self.scale))

    def weight_bytes(self) -> int:
        return self.row_ptr.nbytes + self.col.nbytes + self.val.nbytes + self.scale.nbytes


class BSR(_Matrix):
    """BSR storage (1 × block): ``row_ptr`` (rows + 1,), ``bcol`` (blocks,), ``val`` (blocks * block,)."""

    kind = "bsr"

    def __init__(self, q, scale, block: int, lib=None):
        super().__init__(lib)
        if not is_int(block) or not 1 <= block <= MAX_BLOCK:
            fail("block", f"an integer in [1, {MAX_BLOCK}]", block)
        q = _levels(q)
        self.rows, self.cols = q.shape
        self.block = block
        if -(-self.cols // block) > MAX_INDEX:
            fail("q", f"an array of at most {MAX_INDEX} blocks per row for BSR", q.shape)
        self.scale = _scales(scale, self.rows)
        self.blocks = int(self.lib.psq_bsr_count(_ptr(q), self.rows, self.cols, block))
        self.row_ptr = np.zeros(self.rows + 1, dtype=np.uint32)
        self.bcol = np.zeros(self.blocks, dtype=np.uint16)
        self.val = np.zeros(self.blocks * block, dtype=np.int8)
        rc = self.lib.psq_bsr_build(_ptr(q), self.rows, self.cols, block, _ptr(self.row_ptr), _ptr(self.bcol),
                                    _ptr(self.val))
        if rc != 0:
            fail("q", "levels whose blocks fit a 32-bit row_ptr", q.shape)
        self.struct = PsqBsr(self.rows, self.cols, block, _ptr(self.row_ptr), _ptr(self.bcol), _ptr(self.val),
                             _ptr(self.scale))

    def weight_bytes(self) -> int:
        return self.row_ptr.nbytes + self.bcol.nbytes + self.val.nbytes + self.scale.nbytes


def dense(q, scale, lib=None) -> Dense:
    """Dense storage of the levels ``q`` (rows, cols) int8 with ``scale`` (a scalar or (rows,))."""
    return Dense(q, scale, lib)


def csr(q, scale, lib=None) -> CSR:
    """CSR storage of the nonzero levels of ``q`` (at most 65536 columns)."""
    return CSR(q, scale, lib)


def bsr(q, scale, block: int, lib=None) -> BSR:
    """BSR storage of ``q``'s 1 × ``block`` blocks that hold a nonzero (block in [1, 256])."""
    return BSR(q, scale, block, lib)


def matmul(w: _Matrix, x, ref: bool = False) -> np.ndarray:
    """``w.matmul(x, ref)``: ``x`` (cols,) or (n, cols) float32 through any storage."""
    return w.matmul(x, ref=ref)


def check_source() -> str:
    """The path of kernels_check.c (shipped beside kernels.c)."""
    return os.path.join(native.HERE, "kernels_check.c")
