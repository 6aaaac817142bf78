"""The C engine (``engine.h`` / ``engine.c``): a ``ctc_lstm`` model run from its ``.psq`` file.

The packed file is the engine's only weight input: ``Engine(path, config)`` reads it with the
C decoder, builds each matrix's int8 kernel storage (dense, CSR or block-sparse, see
``engine.h`` for the rule) into memory this module allocates, and runs utterances of
log-mel features, one at a time, to greedy CTC token ids. The shapes come from the file;
what they cannot tell (the front end's strides and the head's ``upsample``) comes from
the recipe, as an ``EngineConfig``.

``Engine.transcribe(features, lengths)`` takes the padded batches a ``CTCLSTM`` takes and
returns the same kind of text, so the pipeline's commands use either one.

Example:
    >>> config = EngineConfig.from_hparams({"subsample": 8, "upsample": 2})
    >>> config.strides, config.upsample
    ((2, 4), 2)
    >>> engine = Engine("run/model.psq", config)  # doctest: +SKIP
    >>> engine.run(features).tokens  # doctest: +SKIP
    [20, 8, 5]
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from compress.checks import check_choice, check_int, fail
from compress.native import PsqError, PsqFile

STORAGES = ("auto", "dense", "csr", "bsr")  # the codes PSQ_ENGINE_AUTO .. _BSR, in order
# What ConvSubsampling does with each subsample factor (compress/models/base.py).
SUBSAMPLE_STRIDES = {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (2, 4)}
# CTCLSTM's own defaults, for a recipe that leaves them out (tests/test_engine.py checks them).
DEFAULT_SUBSAMPLE, DEFAULT_UPSAMPLE = 4, 2
DEFAULT_MAX_FRAMES = 3000  # 30 s of 10 ms frames; a longer input reloads the engine for its length
MAX_MATRICES = 3 + 4 * 8  # PSQ_ENGINE_MAX_MATRICES
E_FORMAT = 1


class EngineError(ValueError):
    """The engine refused a file or an input: ``code`` (PSQ_ENGINE_E_*), ``tensor`` (or "")
    and the message; ``str()`` reads ``tensor: message``."""

    def __init__(self, code: int, tensor: str, message: str):
        self.code, self.tensor, self.message = code, tensor, message
        super().__init__(f"{tensor}: {message}" if tensor else message)


class _Config(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("stride1", "stride2", "upsample", "storage", "block", "max_frames")]


class _Sizes(ctypes.Structure):
    _fields_ = [("model_bytes", ctypes.c_size_t), ("scratch_bytes", ctypes.c_size_t),
                ("max_out_frames", ctypes.c_uint32)]


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("tensor", ctypes.c_char * 96), ("message", ctypes.c_char * 160),
                ("psq", PsqError)]


class _Info(ctypes.Structure):
    M = MAX_MATRICES
    _fields_ = ([(n, ctypes.c_uint32) for n in ("n_mels", "channels", "kernel", "stride1", "stride2", "hidden",
                                                 "layers", "directions", "vocab", "upsample", "n_matrices")]
                + [("storage", ctypes.c_uint32 * M), ("block", ctypes.c_uint32 * M), ("nnz", ctypes.c_uint64 * M),
                   ("numel", ctypes.c_uint64 * M), ("stored", ctypes.c_uint64 * M), ("model_used", ctypes.c_size_t)])


_bound: dict = {}  # id(lib) -> True once the signatures are set


def _bind(lib):
    if _bound.get(id(lib)):
        return lib
    P, vp, u32, sz = ctypes.POINTER, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t
    sigs = {
        "psq_engine_query": (ctypes.c_int, [P(PsqFile), P(_Config), P(_Sizes), P(_Error)]),
        "psq_engine_load": (ctypes.c_int, [P(PsqFile), P(_Config), vp, sz, vp, sz, P(vp), P(_Error)]),
        "psq_engine_get_info": (ctypes.c_int, [vp, P(_Info)]),
        "psq_engine_out_frames": (u32, [vp, u32]),
        "psq_engine_run": (ctypes.c_int, [vp, vp, u32, vp, sz, vp, sz, P(u32), vp, sz, P(_Error)]),
        "psq_engine_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _bound[id(lib)] = True
    return lib


def _raise(err: _Error, lib) -> None:
    message = err.message.decode("utf-8", "replace")
    if err.code == E_FORMAT:
        from compress import native

        message = f"{message} ({native.format_error(err.psq, lib)})"
    raise EngineError(err.code, err.tensor.decode("utf-8", "replace"), message)


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs beyond the file's shapes.

    Args:
        subsample: the front end's time subsampling (1, 2, 4 or 8: ``ConvSubsampling``).
        upsample: CTC frames per LSTM frame (``CTCLSTM``'s ``upsample``).
        storage: ``auto`` (the rule in ``engine.h``), or ``dense``, ``csr`` or ``bsr`` for
            every matrix.
        block: block width of ``bsr`` (0: chosen per matrix).
        max_frames: the longest input the memory is sized for (a longer one reloads).

    Example:
        >>> EngineConfig(subsample=4, storage="csr").strides
        (2, 2)
    """

    subsample: int = DEFAULT_SUBSAMPLE
    upsample: int = DEFAULT_UPSAMPLE
    storage: str = "auto"
    block: int = 0
    max_frames: int = DEFAULT_MAX_FRAMES

    def __post_init__(self):
        if self.subsample not in SUBSAMPLE_STRIDES or isinstance(self.subsample, bool):
            fail("subsample", "1, 2, 4 or 8", self.subsample)
        check_int("upsample", self.upsample, min=1)
        check_choice("storage", self.storage, STORAGES)
        check_int("block", self.block, min=0, max=256)
        check_int("max_frames", self.max_frames, min=1, max=1 << 24)

    @property
    def strides(self) -> tuple[int, int]:
        return SUBSAMPLE_STRIDES[self.subsample]

    @classmethod
    def from_hparams(cls, hparams, **overrides) -> EngineConfig:
        """From a ``CTCLSTM``'s hyperparameters (or a recipe's ``model`` section).

        Example:
            >>> EngineConfig.from_hparams({"subsample": 8}, storage="bsr").upsample
            2
        """
        get = hparams.get if hasattr(hparams, "get") else (lambda k, d: getattr(hparams, k, d))
        return cls(subsample=int(get("subsample", DEFAULT_SUBSAMPLE)), upsample=int(get("upsample", DEFAULT_UPSAMPLE)),
                   **overrides)


@dataclass
class EngineResult:
    """One utterance: its greedy CTC token ids (collapsed, no blanks) and, when asked for,
    the logits (CTC frames, vocab) as a float32 numpy array."""

    tokens: list
    logits: object = None


def tokens_to_text(ids) -> str:
    """Collapsed token ids -> text, as ``ctc_collapse`` spells it (spaces normalized).

    Example:
        >>> tokens_to_text([3, 1, 1, 4])
        'a b'
    """
    from compress.data.text import decode

    return " ".join(decode(ids).split())


class Engine:
    """A ``ctc_lstm`` ``.psq`` file loaded into the C engine.

    Args:
        source: the ``.psq`` path, or its bytes.
        config: an ``EngineConfig`` (strides and upsample from the recipe).
        lib: the loaded C library (default ``compress.native.library()``).

    Raises:
        EngineError: the file is not a ``ctc_lstm`` (naming the tensor it lacks), a tensor has
            the wrong shape or kind (a RAW matrix), or the C decoder refused it.

    Example:
        >>> engine = Engine("run/model.psq", EngineConfig(subsample=8))  # doctest: +SKIP
        >>> engine.info["storage"]  # doctest: +SKIP
        ['bsr', 'bsr', 'bsr', 'bsr', 'dense']
    """

    def __init__(self, source, config: EngineConfig | None = None, lib=None):
        from compress import native

        self.config = config or EngineConfig()
        self.lib = _bind(lib or native.library() or _unavailable())
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._bytes, self.path = bytes(source), None
        else:
            self.path = os.fspath(source)
            with open(self.path, "rb") as f:
                self._bytes = f.read()
        self._load(self.config.max_frames)

    def _load(self, max_frames: int) -> None:
        from compress import native

        lib, ref = self.lib, ctypes.byref
        buf = ctypes.create_string_buffer(self._bytes, len(self._bytes))
        pfile, perr = PsqFile(), PsqError()
        n = max(len(self._bytes) // 88, 1)  # at most one table record per 88 bytes
        work = (ctypes.c_uint32 * n)()
        rc = lib.psq_open(buf, len(self._bytes), 1 << 28, work, n, ref(pfile), ref(perr))
        if rc:
            raise EngineError(E_FORMAT, "", str(native.format_error(perr, lib)))
        s1, s2 = self.config.strides
        cfg = _Config(s1, s2, self.config.upsample, STORAGES.index(self.config.storage), self.config.block, max_frames)
        sizes, err = _Sizes(), _Error()
        if lib.psq_engine_query(ref(pfile), ref(cfg), ref(sizes), ref(err)):
            _raise(err, lib)
        model = ctypes.create_string_buffer(sizes.model_bytes)
        scratch = ctypes.create_string_buffer(sizes.scratch_bytes)
        handle = ctypes.c_void_p()
        if lib.psq_engine_load(ref(pfile), ref(cfg), model, sizes.model_bytes, scratch, sizes.scratch_bytes,
                               ref(handle), ref(err)):
            _raise(err, lib)
        info = _Info()
        lib.psq_engine_get_info(handle, ref(info))
        # the engine reads only the model memory now; self._bytes stays for a reload (a longer input)
        self._model, self._scratch, self._handle, self._sizes = model, scratch, handle, sizes
        self.max_frames = max_frames
        self._info = info

    @property
    def info(self) -> dict:
        """The shapes, and per matrix (conv1, conv2, LSTM ih/hh per layer and direction, head)
        its storage, block width, nonzeros, elements and the levels its kernel multiplies."""
        i, m = self._info, self._info.n_matrices
        out = {k: int(getattr(i, k)) for k in ("n_mels", "channels", "kernel", "stride1", "stride2", "hidden",
                                                 "layers", "directions", "vocab", "upsample")}
        out.update(storage=[STORAGES[i.storage[k]] for k in range(m)], block=[int(i.block[k]) for k in range(m)],
                   nnz=[int(i.nnz[k]) for k in range(m)], numel=[int(i.numel[k]) for k in range(m)],
                   stored=[int(i.stored[k]) for k in range(m)], model_bytes=int(i.model_used),
                   scratch_bytes=int(self._sizes.scratch_bytes))
        return out

    def out_frames(self, n_frames: int) -> int:
        """CTC frames of an input of ``n_frames`` feature frames."""
        return int(self.lib.psq_engine_out_frames(self._handle, n_frames))

    def run(self, features, logits: bool = False) -> EngineResult:
        """One utterance, unpadded: ``features`` (T, n_mels) float32 (a tensor or an array).

        Example:
            >>> engine.run(torch.zeros(120, 80)).tokens  # doctest: +SKIP
            []
        """
        import numpy as np

        x = features.detach().cpu().numpy() if hasattr(features, "detach") else features
        x = np.ascontiguousarray(x, dtype=np.float32)  # (T, n_mels)
        if x.ndim != 2 or x.shape[1] != self._info.n_mels or x.shape[0] < 1:
            fail("features", f"an array of shape (T >= 1, {self._info.n_mels})", tuple(x.shape))
        T = int(x.shape[0])
        if T > self.max_frames:
            self._load(max(T, 2 * self.max_frames))
        n_out = self.out_frames(T)
        tokens = np.empty(n_out, dtype=np.int32)
        out = np.empty((n_out, self._info.vocab), dtype=np.float32) if logits else None
        n_tokens, err = ctypes.c_uint32(), _Error()
        rc = self.lib.psq_engine_run(self._handle, x.ctypes.data, T, self._scratch, self._sizes.scratch_bytes,
                                     tokens.ctypes.data, n_out, ctypes.byref(n_tokens),
                                     out.ctypes.data if logits else None, out.size if logits else 0, ctypes.byref(err))
        if rc:
            _raise(err, self.lib)
        return EngineResult(tokens[: n_tokens.value].tolist(), out)

    def transcribe(self, features, feature_lengths) -> list[str]:
        """Text of a padded batch (B, T, n_mels) with lengths (B,), each utterance run alone
        on its own frames: what ``CTCLSTM.transcribe`` returns for the same batch."""
        return [tokens_to_text(self.run(features[b, : int(feature_lengths[b])]).tokens)
                for b in range(len(feature_lengths))]


def _unavailable():
    from compress import native

    raise native.NativeUnavailable("the C engine needs the C library (a C compiler; COMPRESS_NATIVE must not be 0)")
