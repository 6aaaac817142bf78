"""The C decoder (``psq.h`` / ``psq.c``) from Python, through ctypes.

The C source ships inside the package. On first use it is compiled with the system C
compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a per-user cache directory
(``$COMPRESS_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/compress`` or ``~/.cache/compress``),
under a name keyed by the hash of the source, the compiler and its flags; the library is
written to a temporary file and renamed into place, so parallel processes never see a
partial file. ``compress.load`` then decodes with it.

``COMPRESS_NATIVE`` selects the path: ``0`` never uses C (the pure-Python loader);
``require`` makes a failed build an error (``make test`` sets it, so CI exercises the C
path); anything else (the default) uses C when it builds and otherwise falls back to the
pure-Python loader with one warning.

Example:
    >>> from compress import native
    >>> native.mode() in ("auto", "off", "require")
    True
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
# Every source of the one shared library: the decoder, the int8 kernels, the CTC-LSTM engine.
SOURCES = ("psq.h", "psq.c", "kernels.h", "kernels.c", "engine.h", "engine.c")
LIBRARY_SOURCES = ("psq.c", "kernels.c", "engine.c")
TOOL_SOURCE = "psqdump.c"
ENV = "COMPRESS_NATIVE"
# -O3 -march=native: the level checks vectorize, and on x86-64 with AVX2 psq.c's optional
# SIMD path expands 8-bit bitmask tensors. The cache key includes the CPU's feature list,
# so a cache directory shared by different machines never hands one another's build.
CFLAGS = ("-O3", "-std=c99", "-fPIC", "-shared")
NATIVE_FLAGS = ("-march=native",)
SANITIZE = ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")


class NativeUnavailable(RuntimeError):
    """The C decoder could not be built or loaded (no compiler, compile error, ...)."""


class PsqError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("field", ctypes.c_char_p), ("offset", ctypes.c_uint64),
                ("detail", ctypes.c_int64)]


class PsqFile(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("len", ctypes.c_size_t), ("major", ctypes.c_uint16),
                ("minor", ctypes.c_uint16), ("n_tensors", ctypes.c_uint32), ("meta_len", ctypes.c_uint32),
                ("names_len", ctypes.c_uint32), ("meta_crc", ctypes.c_uint32), ("table_crc", ctypes.c_uint32),
                ("table_off", ctypes.c_uint64), ("names_off", ctypes.c_uint64), ("table_end", ctypes.c_uint64),
                ("total_numel", ctypes.c_uint64), ("table_ok", ctypes.c_int), ("flags", ctypes.c_uint32)]


class PsqTensor(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("record_off", ctypes.c_uint64), ("name_off", ctypes.c_uint64),
                ("name_len", ctypes.c_uint32), ("rank", ctypes.c_uint32), ("kind", ctypes.c_uint32),
                ("dtype", ctypes.c_uint32), ("store", ctypes.c_uint32), ("bits", ctypes.c_uint32),
                ("encoding", ctypes.c_uint32), ("scale_count", ctypes.c_uint32), ("golomb_m", ctypes.c_uint32),
                ("unary_bits", ctypes.c_uint32), ("dims", ctypes.c_uint32 * 6), ("numel", ctypes.c_uint64),
                ("nnz", ctypes.c_uint64), ("data_off", ctypes.c_uint64), ("data_len", ctypes.c_uint64),
                ("index_len", ctypes.c_uint64), ("data_crc", ctypes.c_uint32), ("block", ctypes.c_uint32)]


class PsqRows(ctypes.Structure):
    _fields_ = ([("buf", ctypes.c_void_p)]
                + [(n, ctypes.c_uint64) for n in ("data_off", "scales_off", "index_off", "values_off", "index_len",
                                                  "values_len", "numel", "nnz", "rows", "row", "row_elems", "elem",
                                                  "vk", "ucur", "ub", "ecur", "gap", "after_pos")]
                + [(n, ctypes.c_uint32) for n in ("m", "w", "u", "kind", "dtype", "store", "bits", "encoding",
                                                  "scale_count", "npos", "ipos", "bad_index")]
                + [("bad_level", ctypes.c_uint64), ("pos", ctypes.c_uint32 * 64)]  # PSQ_GOLOMB_BATCH
                + [("nb", ctypes.c_uint64), ("block", ctypes.c_uint32), ("scale_size", ctypes.c_uint32)])


_P = ctypes.POINTER
_SIGNATURES = {
    "psq_read_header": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, _P(PsqFile), _P(PsqError)]),
    "psq_check_metadata": (ctypes.c_int, [_P(PsqFile), _P(PsqError)]),
    "psq_read_table": (ctypes.c_int, [_P(PsqFile), ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, _P(PsqError)]),
    "psq_open": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t,
                                _P(PsqFile), _P(PsqError)]),
    "psq_tensor_info": (ctypes.c_int, [_P(PsqFile), ctypes.c_uint32, _P(PsqTensor), _P(PsqError)]),
    "psq_check_tensor": (ctypes.c_int, [_P(PsqFile), _P(PsqTensor), _P(PsqError)]),
    "psq_decode_tensor": (ctypes.c_int, [_P(PsqFile), _P(PsqTensor), ctypes.c_void_p, ctypes.c_size_t, _P(PsqError)]),
    "psq_rows_begin": (ctypes.c_int, [_P(PsqFile), _P(PsqTensor), _P(PsqRows), _P(PsqError)]),
    "psq_rows_next": (ctypes.c_int, [_P(PsqRows), ctypes.c_void_p, ctypes.c_size_t, _P(PsqError)]),
    "psq_decode_levels": (ctypes.c_int, [_P(PsqFile), _P(PsqTensor), ctypes.c_void_p, ctypes.c_size_t,
                                         ctypes.c_void_p, ctypes.c_size_t, _P(PsqError)]),
    "psq_validate": (ctypes.c_int, [_P(PsqFile), _P(PsqError)]),
    "psq_crc32": (ctypes.c_uint32, [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]),
    "psq_f32_to_f16": (ctypes.c_uint16, [ctypes.c_uint32]),
    "psq_f32_to_bf16": (ctypes.c_uint16, [ctypes.c_uint32]),
    "psq_f16_to_f32": (ctypes.c_uint32, [ctypes.c_uint16]),
    "psq_strerror": (ctypes.c_char_p, [ctypes.c_int]),
}

_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded CDLL, "error": why it is unavailable, "warned": bool


def mode() -> str:
    """``off`` (COMPRESS_NATIVE=0), ``require`` (COMPRESS_NATIVE=require) or ``auto``."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "off", "no", "false", "python"):
        return "off"
    if value == "require":
        return "require"
    return "auto"


def cache_dir() -> str:
    """The per-user directory holding compiled libraries."""
    if os.environ.get("COMPRESS_NATIVE_CACHE"):
        return os.environ["COMPRESS_NATIVE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "compress")


def compiler() -> list:
    """The C compiler command (``$CC`` or the first of cc, gcc, clang on PATH); [] if none."""
    if os.environ.get("CC"):
        cmd = os.environ["CC"].split()
        return cmd if shutil.which(cmd[0]) else []
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return []


def source_path(name: str) -> str:
    return os.path.join(HERE, name)


def _digest(cc: list, flags, names) -> str:
    h = hashlib.sha256()
    for name in names:
        with open(source_path(name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    h.update(" ".join(list(cc) + list(flags)).encode())
    h.update(f"{sys.platform} {platform.machine()} {_cpu_features()}".encode())
    return h.hexdigest()[:20]


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), else the processor's name: part of the cache key."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("flags", "Features"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compile(cc: list, flags, sources, out_name: str, extra=(), libs=("-lm",)) -> str:
    """Compile into the cache (once per source hash); returns the path. Raises NativeUnavailable."""
    if not cc:
        raise NativeUnavailable("no C compiler found (set CC, or install cc/gcc/clang)")
    names = tuple(SOURCES) + tuple(s for s in sources if s not in SOURCES)
    path = os.path.join(cache_dir(), out_name.format(key=_digest(cc, tuple(flags) + tuple(extra) + tuple(libs), names)))
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".build-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    # libraries after the sources: the engine's expf/erff come from libm, which a program
    # linking the library (not only Python, which has it loaded already) must find
    cmd = [*cc, *flags, *extra, "-o", tmp, *(source_path(s) for s in sources), *libs]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NativeUnavailable(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
        os.replace(tmp, path)  # atomic: a parallel build renames an identical file
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeUnavailable(f"{' '.join(cmd)} failed: {err}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def build() -> str:
    """The compiled shared library's path (built if needed)."""
    ext = ".dll" if sys.platform == "win32" else ".dylib" if sys.platform == "darwin" else ".so"
    cc = compiler()
    try:
        return _compile(cc, CFLAGS, LIBRARY_SOURCES, "libpsq-{key}" + ext, NATIVE_FLAGS)
    except NativeUnavailable:  # a compiler without -march=native: the portable build
        return _compile(cc, CFLAGS, LIBRARY_SOURCES, "libpsq-{key}" + ext)


def build_tool(sanitize: bool = False, simd: bool = True) -> str:
    """The ``psqdump`` command-line tool over the same psq.c: optimized like the library
    (``-O3 -march=native``), or with ASan and UBSan; ``simd=False`` builds the portable C only."""
    flags = SANITIZE if sanitize else ("-O3", "-std=c99")
    extra = (NATIVE_FLAGS if simd else ("-DPSQ_NO_SIMD",)) + (("-std=c99",) if sanitize else ())
    name = "psqdump-" + ("asan-" if sanitize else "") + "{key}"
    try:
        return _compile(compiler(), flags, ("psqdump.c", "psq.c"), name, extra)
    except NativeUnavailable:
        if not simd:
            raise
        return _compile(compiler(), flags, ("psqdump.c", "psq.c"), name, ())


def _open(path: str):
    lib = ctypes.CDLL(path)
    for name, (res, args) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def library():
    """The loaded C library, or None (COMPRESS_NATIVE=0, or no compiler in ``auto`` mode).

    Raises NativeUnavailable in ``require`` mode when it cannot be built.
    """
    m = mode()
    if m == "off":
        return None
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _open(build())
            except (NativeUnavailable, OSError) as err:
                _state["error"] = str(err)
        if "lib" in _state:
            return _state["lib"]
        if m == "require":
            raise NativeUnavailable(f"{ENV}=require, but the C decoder is unavailable: {_state['error']}")
        if not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(f"compress: C decoder unavailable ({_state['error'].splitlines()[0]}); "
                          "using the pure-Python loader", RuntimeWarning, stacklevel=3)
        return None


def available() -> bool:
    """True when ``compress.load`` decodes with C."""
    try:
        return library() is not None
    except NativeUnavailable:
        return False


# ---------------------------------------------------------------------------------------
# compress.load on the C path


def format_error(e: PsqError, lib):
    """The C error as ``FormatError("field: what at offset N")`` (the reference's field names)."""
    from compress.format.errors import FormatError

    field = (e.field or b"?").decode()
    what = lib.psq_strerror(e.code).decode()
    if field == "values" and e.code == 12 and e.detail:
        what = f"level {e.detail} not allowed"
    elif field == "values" and e.code == 12:
        what = "invalid value (non-finite float, bool byte not 0/1, or level 0)"
    elif e.detail:
        what = f"{what} ({e.detail})"
    return FormatError(f"{field}: {what} (C decoder, code {e.code}) at offset {e.offset}")


def _check(rc: int, e: PsqError, lib) -> None:
    if rc:
        raise format_error(e, lib)


class Opened:
    """A file validated by the C decoder: header, metadata (C checks, then the host's canonical
    JSON check, in the reference's order), table. ``buf`` must stay alive and unchanged."""

    def __init__(self, lib, buf: bytearray, max_numel: int):
        from compress.format.layout import HEADER
        from compress.format.metadata import parse as parse_metadata

        self.lib, self.buf = lib, buf
        self.cbuf = (ctypes.c_char * len(buf)).from_buffer(buf) if len(buf) else None
        self.file, err = PsqFile(), PsqError()
        ref = ctypes.byref
        _check(lib.psq_read_header(self.cbuf, len(buf), ref(self.file), ref(err)), err, lib)
        _check(lib.psq_check_metadata(ref(self.file), ref(err)), err, lib)
        at = HEADER.size  # the metadata follows the header
        self.metadata = parse_metadata(bytes(buf[at : at + self.file.meta_len]), at)  # the host's part
        n = self.file.n_tensors
        work = (ctypes.c_uint32 * max(n, 1))()
        _check(lib.psq_read_table(ref(self.file), max_numel, work, n, ref(err)), err, lib)
        self.tensors = []
        for i in range(n):
            t = PsqTensor()
            _check(lib.psq_tensor_info(ref(self.file), i, ref(t), ref(err)), err, lib)
            self.tensors.append(t)

    def name(self, t: PsqTensor) -> str:
        return bytes(self.buf[t.name_off : t.name_off + t.name_len]).decode("utf-8")

    def decode_into(self, t: PsqTensor, out) -> None:
        """Decode tensor ``t`` into the contiguous torch tensor ``out`` (its dtype and shape)."""
        err = PsqError()
        nbytes = out.numel() * out.element_size()
        rc = self.lib.psq_decode_tensor(ctypes.byref(self.file), ctypes.byref(t), out.data_ptr() if nbytes else None,
                                        nbytes, ctypes.byref(err))
        _check(rc, err, self.lib)


def decode_levels(opened: Opened, t: PsqTensor):
    """A QUANT tensor's integer levels and scales, as the C decoder's ``psq_decode_levels`` gives them.

    Args:
        opened: a file validated by the C decoder.
        t: one of ``opened.tensors``, of kind QUANT.

    Returns:
        ``(levels, scales)``: an ``np.int8`` array of the tensor's shape and an ``np.float32``
        array of ``scale_count`` scales (widened exactly when stored in 16 bits). Element ``i``
        decodes to ``float32(levels.flat[i]) * scales[c]``, ``c`` as in FORMAT.md.

    Raises:
        ArgumentError: ``t`` is a RAW tensor.
        FormatError: the tensor's data block fails a check (the reference decoder's field and offset).

    Example:
        >>> import numpy as np
        >>> from compress import native
        >>> from compress.format.encode import encode_quant
        >>> from compress.format.writer import chunks
        >>> enc = encode_quant(np.array([0, 2, 2, 0]), (2, 2), 4, np.array([0.25, 0.5], np.float32), dtype=1)
        >>> buf = bytearray(b"".join(chunks([("w", enc)], b"{}")))
        >>> opened = native.Opened(native.library(), buf, 1 << 28)
        >>> levels, scales = native.decode_levels(opened, opened.tensors[0])
        >>> levels.tolist(), scales.tolist()
        ([[0, 2], [2, 0]], [0.25, 0.5])
    """
    import numpy as np

    if t.kind != 1:  # QUANT: a RAW tensor has no levels
        from compress.errors import ArgumentError

        raise ArgumentError.must("t", "a QUANT tensor", opened.name(t), f"kind {t.kind}")
    levels = np.empty(tuple(t.dims[: t.rank]), dtype=np.int8)
    scales = np.empty(t.scale_count, dtype=np.float32)
    err = PsqError()
    rc = opened.lib.psq_decode_levels(ctypes.byref(opened.file), ctypes.byref(t), levels.ctypes.data, levels.size,
                                      scales.ctypes.data, scales.size, ctypes.byref(err))
    _check(rc, err, opened.lib)
    return levels, scales


def load_buffer(buf: bytearray, max_numel: int, lib=None) -> dict:
    """``{name: Tensor}`` of a file in ``buf`` (a bytearray, viewed without copy), decoded in C."""
    import torch

    from compress.format import layout as L

    lib = lib or library()
    opened = Opened(lib, buf, max_numel)
    dtypes = {code: getattr(torch, name) for code, (name, _, _) in L.DTYPES.items()}
    # every output first, then decode (see compress.decoder.fast._load: fresh pages are what cost)
    outs = [torch.empty(tuple(t.dims[: t.rank]), dtype=dtypes[t.dtype]) for t in opened.tensors]
    result = {}
    for t, out in zip(opened.tensors, outs):
        opened.decode_into(t, out)
        result[opened.name(t)] = out
    return result
