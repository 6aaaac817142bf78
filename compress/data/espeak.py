"""A minimal ctypes binding to libespeak-ng, as shipped by the ``espeakng-loader`` wheel.

libespeak-ng keeps global state, so the library is initialized once per process (in
synchronous mode: ``espeak_Synth`` returns only after every sample went through the
callback). Parallel generation must therefore use processes, never threads. The library
also carries state from one call to the next, so identical calls in one process may
differ by a few samples; identical call sequences in fresh processes are identical.

Example:
    >>> from compress.data.espeak import synthesize
    >>> audio = synthesize("call mom", voice="en-us+f3", rate=170, pitch=50)
    >>> audio.dtype.name, audio.ndim
    ('int16', 1)
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from compress.checks import check_int, fail

SAMPLE_RATE = 22050  # what libespeak-ng reports for every voice

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_state: dict = {}  # the loaded library, the callback and the chunk buffer, set once


def _library():
    """Load and initialize libespeak-ng once for this process."""
    if "lib" in _state:
        return _state["lib"]
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    data = espeakng_loader.get_data_path()
    # buflength 0 -> the library default (60 ms chunks); options 0 -> no phoneme events.
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(os.path.dirname(data)), 0)
    if rate != SAMPLE_RATE:
        # espeak-ng looks for "<path>/espeak-ng-data"; the loader's data dir is that folder.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(data), 0)
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"espeak_Initialize failed: expected sample rate {SAMPLE_RATE}, got {rate}")
    chunks: list[np.ndarray] = []

    def on_audio(wav, n, events):
        if n > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep synthesizing

    callback = _CALLBACK(on_audio)  # kept referenced in _state so it is never collected
    lib.espeak_SetSynthCallback(callback)
    _state.update(lib=lib, callback=callback, chunks=chunks)
    return lib


def list_variants() -> list[str]:
    """Names of the voice variants bundled with the data (the part after ``+``).

    Example:
        >>> "f3" in list_variants()
        True
    """
    import espeakng_loader

    folder = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    return sorted(os.listdir(folder))


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
               pitch_range: int = 50, seed: int = 0) -> np.ndarray:
    """Speak ``text`` and return 22,050 Hz mono int16 samples.

    Args:
        text: what to say (UTF-8).
        voice: an eSpeak voice name, optionally with a variant: ``"en-us+f3"``.
        rate: words per minute (eSpeak accepts 80..450; 175 is its default).
        pitch: base pitch 0..100 (50 is eSpeak's default).
        pitch_range: pitch range 0..100 (50 is eSpeak's default; 0 is monotone).
        seed: seeds eSpeak's own random generator before the call. The output still
            depends on what this process synthesized before (the library keeps its
            pitch-flutter phase across calls), so reproducible corpora render each block
            of utterances in a fresh process (``compress.data.corpus.generate``).

    Returns:
        A 1-D int16 array at ``SAMPLE_RATE``.

    Example:
        >>> len(synthesize("hello")) > 0
        True
    """
    if not isinstance(text, str) or not text.strip():
        fail("text", "a non-empty string", text)
    for name, value, lo, hi in (("rate", rate, 80, 450), ("pitch", pitch, 0, 100),
                                ("pitch_range", pitch_range, 0, 100)):
        check_int(name, value, min=lo, max=hi)
    with _lock:
        lib = _library()
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice: eSpeak does not know the voice {voice!r}")
        lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        lib.espeak_SetParameter(_PARAM_RANGE, pitch_range, 0)
        lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        lib.espeak_ng_SetRandSeed(seed)
        chunks = _state["chunks"]
        chunks.clear()
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        err = lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with error code {err} for text {text!r}")
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        chunks.clear()
    return audio.astype(np.int16, copy=False)


def synthesize_in_fresh_process(requests: list[dict]) -> list[np.ndarray]:
    """Run ``synthesize(**request)`` for each request in a new interpreter, in order.

    The output then depends only on ``requests``, never on what this process said
    before (see the module docstring). The child is ``python -m compress.data.espeak``
    fed JSON on stdin, so it works from any calling script (no multiprocessing
    ``__main__`` re-import).

    Example:
        >>> [a.dtype.name for a in synthesize_in_fresh_process([{"text": "stop"}])]
        ['int16']
    """
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "compress.data.espeak"], input=json.dumps(requests).encode(),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"eSpeak worker failed (exit {proc.returncode}): {proc.stderr.decode()[-2000:]}")
    out, data, pos = [], proc.stdout, 0
    for _ in requests:  # each result: int64 sample count, then int16 samples
        n = int(np.frombuffer(data, "<i8", count=1, offset=pos)[0])
        out.append(np.frombuffer(data, "<i2", count=n, offset=pos + 8).copy())
        pos += 8 + 2 * n
    return out


def _serve() -> None:
    import json
    import sys

    for req in json.loads(sys.stdin.buffer.read()):
        audio = synthesize(**req).astype("<i2")
        sys.stdout.buffer.write(np.int64(len(audio)).astype("<i8").tobytes() + audio.tobytes())
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve()
