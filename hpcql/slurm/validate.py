"""Checks for SLURM values that end up in ``#SBATCH`` lines and ``srun`` arguments.

Pure (no jinja2, no SLURM): ``hpcql submit`` checks the merged ``[slurm]`` section,
``hpcql scale --launcher slurm`` its own ``--partition/--account/--time/--mpi``.
A value that is not plain (whitespace, newlines, shell metacharacters) is bad input:
pasted into the job script it could add lines or commands of its own.
"""

from __future__ import annotations

import re

from hpcql.errors import BadInput

_NAMES = re.compile(r"[A-Za-z0-9_.,:+-]*")  # partition / account / qos names (comma lists allowed); empty: unset
RESOURCES: dict[str, tuple[re.Pattern[str], str]] = {
    "partition": (_NAMES, "a partition name (letters, digits, _.,:+-)"),
    "account": (_NAMES, "an account name (letters, digits, _.,:+-)"),
    "qos": (_NAMES, "a QOS name (letters, digits, _.,:+-)"),
    "mem": (re.compile(r"(?:[0-9]+[KMGTkmgt]?)?"), "a size like 32G or 4000M"),
    "mpi": (re.compile(r"[A-Za-z0-9_.-]+"), "an srun --mpi plugin such as pmi2 or pmix"),
}
_TIME = re.compile(r"(?:([0-9]+)-)?([0-9]+)(?::([0-9]+)(?::([0-9]+))?)?")
TIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def time_limit_seconds(text: str, where: str = "--time") -> int:
    """Seconds in a SLURM time limit (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); BadInput naming ``where``.

    The leading field may be any size (``90`` or ``90:00`` minutes, ``36:00:00``); the fields
    after it are bounded: hours < 24 after days, minutes and seconds < 60.
    """
    match = _TIME.fullmatch(text)
    if not match:
        raise BadInput(f"{where} {text!r}: expected {TIME_FORMATS}")
    days, fields = match.group(1), [int(x) for x in match.groups()[1:] if x is not None]
    if days is None:
        h, m, s = ((0, fields[0], 0), (0, *fields), tuple(fields))[len(fields) - 1]
        bad = s > 59 or (len(fields) == 3 and m > 59)
    else:
        h, m, s = (*fields, 0, 0)[:3]
        bad = h > 23 or m > 59 or s > 59
    if bad:
        raise BadInput(f"{where} {text!r}: out of range (hours < 24 after days, minutes and seconds < 60; "
                       f"expected {TIME_FORMATS})")
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def check_resource(key: str, value: str, where: str) -> None:
    """BadInput naming ``where`` unless ``value`` is a plain SLURM ``key`` (a RESOURCES key or ``time``)."""
    if key == "time":
        time_limit_seconds(value, where)
        return
    pattern, expected = RESOURCES[key]
    if not pattern.fullmatch(value):
        raise BadInput(f"{where} {value!r}: expected {expected}")


def check_extra(options: list[str], where: str) -> None:
    """Extra ``#SBATCH`` options: each one option (``-x`` / ``--name[=value]``) on one line."""
    for opt in options:
        if not opt.startswith("-") or not opt.isprintable():
            raise BadInput(f"{where} {opt!r}: expected one sbatch option such as '--exclusive' "
                           "or '--constraint=cpu', without line breaks or control characters")
