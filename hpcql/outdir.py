"""Output directories: checked and created before any work starts (pure; callers agree across ranks)."""

from __future__ import annotations

from pathlib import Path

from hpcql.errors import BadInput


def make_out_dir(out: Path, where: str, earlier: Path, overwrite: bool, hint: str) -> None:
    """Create ``out`` (named ``where`` in errors); ``BadInput`` when it is a file, cannot be created, or
    already holds ``earlier`` (a previous run's output) and ``overwrite`` is false (``hint`` says what to do)."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"{where}: {out} exists and is not a directory")
    if earlier.exists() and not overwrite:
        raise BadInput(f"{where}: {earlier} already exists; {hint}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"{where}: cannot create {out} ({exc.strerror or exc})") from None
