"""Atomic file writes for reports and projections: each file is written to a temporary name in its
folder and renamed with ``os.replace``, so a reader never sees half a file under the final name."""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from PIL import Image


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file is removed when ``write`` raises, and an existing ``path`` is replaced only
    after the new content is complete and flushed to disk.

    Raises:
        OSError: when the folder is missing or not writable.

    Example:
        >>> write_atomically("notes.txt", lambda handle: handle.write(b"hello\\n"))  # doctest: +SKIP
        PosixPath('notes.txt')
    """
    path = Path(path)
    # open(..., "xb") creates the file with the usual umask permissions, unlike tempfile.mkstemp's 0600.
    temporary = path.with_name(f".tmp-{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(temporary, "xb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see `write_atomically`)."""
    return write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))


def json_ready(value: Any) -> Any:
    """Return ``value`` with NaN and infinite floats replaced by None, so strict JSON can encode it.

    Tuples become lists and dict keys become strings. Example:
        >>> json_ready({"psnr": [float("inf"), 20.0]})
        {'psnr': [None, 20.0]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def to_json(value: Any, indent: int | None = 2) -> str:
    """Encode ``value`` as strict JSON (no NaN or Infinity tokens; non-finite floats become null)."""
    return json.dumps(json_ready(value), indent=indent, allow_nan=False)


def write_json_atomically(path: str | os.PathLike, value: Any) -> Path:
    """Write ``value`` as indented strict JSON (see `to_json`) to ``path`` atomically."""
    return write_text_atomically(path, to_json(value) + "\n")


def save_png_atomically(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a Pillow image as PNG to ``path`` atomically."""
    return write_atomically(path, lambda stream: image.save(stream, format="PNG"))


def save_figure_atomically(figure: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically."""
    return write_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=dpi, bbox_inches="tight"))


def check_writable_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` when missing and check that a file can be written there.

    Raises:
        OSError: when the folder cannot be created or written, or ``path`` is an existing file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    # mkdir succeeds on an existing read-only folder, so a file is written to prove the folder is writable.
    with tempfile.TemporaryFile(dir=path):
        pass
    return path
