"""``hpcql inspect``: a readable summary of an MDP, result or checkpoint file."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from hpcql.errors import BadInput


def _datasets(f: h5py.File) -> list[str]:
    lines: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            filt = " fletcher32" if obj.fletcher32 else ""
            lines.append(f"  /{name}: {obj.shape} {obj.dtype}{filt}")

    f.visititems(visit)
    return lines


def _attrs(f: h5py.File, skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    for k, v in f.attrs.items():
        if k in skip:
            continue
        if isinstance(v, bytes):
            v = v.decode()
        out.append(f"  {k} = {v}")
    return out


def inspect_file(path: str) -> tuple[str, str | None]:
    """Summary text of ``path`` and, for a damaged checkpoint, why it fails its integrity check.

    ``BadInput`` when it is not a readable hpcql file.
    """
    if not Path(path).is_file():
        raise BadInput(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise BadInput(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        with f:
            fmt = str(f.attrs.get("format", "unknown"))
            lines = _summary(f, path, fmt)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise BadInput(f"{path}: damaged file ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    reason = None
    if fmt == "hpcql-checkpoint":
        from hpcql.checkpoint import verify

        reason = verify(Path(path))
        lines.append("integrity: OK (complete, all Fletcher32 checksums and the attribute digest verified)"
                     if reason is None else f"integrity: FAILED: {reason}")
    return "\n".join(lines), reason


def _summary(f: h5py.File, path: str, fmt: str) -> list[str]:
    """The summary lines of an open file whose format attribute is ``fmt``."""
    lines = [f"{path}: format {fmt}, version {f.attrs.get('version', '?')}"]
    lines += ["attributes:"] + _attrs(f, skip=("config_json", "phase_seconds_json"))
    if "phase_seconds_json" in f.attrs:
        phases = json.loads(f.attrs["phase_seconds_json"])
        lines.append("phase seconds (min/mean/max over ranks):")
        lines += [f"  {p}: {t['min']:.3f} / {t['mean']:.3f} / {t['max']:.3f}" for p, t in phases.items()]
    if fmt == "hpcql-mdp":
        S, A = int(f.attrs["num_states"]), int(f.attrs["num_actions"])
        nnz = f["transitions/indices"].shape[0] if "transitions/indices" in f else 0
        lines.append(f"model: {S} states, {A} actions, {nnz} transitions ({nnz / max(S * A, 1):.2f} per row)")
    if fmt == "hpcql-result" and "V" in f:
        v = np.asarray(f["V"][: min(f["V"].shape[0], 10_000_000)])
        if v.size:
            lines.append(f"V: min {v.min():.6g}, mean {v.mean():.6g}, max {v.max():.6g}")
    if "config_json" in f.attrs:
        lines.append("config: " + f.attrs["config_json"])
    lines += ["datasets:"] + _datasets(f)
    return lines
