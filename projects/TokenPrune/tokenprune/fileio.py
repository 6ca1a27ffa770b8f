"""Files: the one atomic writer, writable output folders, figures as PNG bytes.

An atomic write goes to a temporary file in the target's folder and is renamed into place,
so an interrupted run never leaves a file that looks complete.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Optional

from .errors import InputError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "make_output_dir",
           "figure_png"]


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (usual permissions)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 -> the usual permissions of a new file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any, compact: bool = False) -> None:
    """Write ``obj`` as JSON atomically: indented with sorted keys, or ``compact`` (one line,
    no spaces, keys in their order: the dataset files)."""
    text = (json.dumps(obj, separators=(",", ":")) if compact
            else json.dumps(obj, indent=2, sort_keys=True) + "\n")
    atomic_write_text(path, text)


def make_output_dir(path: str) -> str:
    """Create ``path`` (and parents) and check that it is writable (InputError if not)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise InputError(f"cannot write to output folder {path}: {e.strerror or e}") from e
    return path


def figure_png(fig, dpi: Optional[int] = None) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
