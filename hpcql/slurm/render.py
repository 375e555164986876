"""Job scripts from the templates in ``hpcql/templates/`` (package data, Jinja2).

``slurm-cpu.sh.j2`` and ``slurm-gpu.sh.j2`` extend ``slurm-base.sh.j2``, which holds
the resources, the config snapshot, the launch line and the signal/requeue logic.
Everything here is pure: no SLURM needed.
"""

from __future__ import annotations

import itertools
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from hpcql import __version__
from hpcql.config import SlurmSection, load_config
from hpcql.errors import BadInput
from hpcql.slurm.validate import RESOURCES, check_extra, check_resource, time_limit_seconds

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"
RESOURCE_KEYS = ("nodes", "ntasks_per_node", "cpus_per_task", "time", "partition", "account", "qos",
                 "gpus_per_node", "mem", "launcher", "mpi", "signal_seconds")


@dataclass(frozen=True)
class JobPoint:
    """One run of the job (one array task): which config text and which ``--set`` overrides."""

    config_id: int
    overrides: tuple[str, ...]
    label: str


@dataclass
class JobSpec:
    """Everything a job script needs."""

    job_name: str
    slurm: SlurmSection
    config_texts: list[str]
    points: list[JobPoint]
    runs_root: Path
    workdir: Path
    array: bool = False
    array_throttle: int = 0
    hpcql_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "hpcql"])
    mpiexec: str = ""

    @property
    def template(self) -> str:
        return "slurm-gpu.sh.j2" if self.slurm.gpus_per_node > 0 else "slurm-cpu.sh.j2"

    @property
    def ntasks(self) -> int:
        return self.slurm.nodes * self.slurm.ntasks_per_node


def default_mpiexec() -> str:
    """The mpiexec next to this interpreter (the mpich wheel's), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else "mpiexec"


def label_for(overrides: list[str]) -> str:
    """A directory-safe label for a sweep point, e.g. ``gamma-0.95``."""
    parts = []
    for item in overrides:
        key, _, value = item.partition("=")
        parts.append(f"{key.split('.')[-1]}-{value}")
    text = "_".join(parts) or "run"
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)[:80]


def parse_sweeps(sweeps: list[str]) -> list[list[str]]:
    """``["algo.gamma=0.9,0.99", "env.rows=8,16"]`` -> cartesian product of override lists."""
    axes = []
    for item in sweeps:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or key.count(".") != 1 or not vals:
            raise BadInput(f"--sweep {item!r}: expected section.key=value1,value2,...")
        axes.append([f"{key.strip()}={v}" for v in vals])
    return [list(p) for p in itertools.product(*axes)] if axes else [[]]


def effective_slurm(base: SlurmSection, options: dict, source: str = "config") -> SlurmSection:
    """The config's ``[slurm]`` section with command-line options (not None) on top, validated.

    A bad value is named as its command-line option when given there, else as ``SOURCE: [slurm] key``.
    """
    updates = {k: v for k, v in options.items() if v is not None}
    merged = base.model_dump() | updates
    try:
        slurm = SlurmSection.model_validate(merged)
    except Exception as exc:  # pydantic ValidationError: one line naming the option
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": ("?",), "msg": str(exc)}
        raise BadInput(f"slurm option {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    for key in ("time", *RESOURCES):
        check_resource(key, getattr(slurm, key), f"--{key}" if key in updates else f"{source}: [slurm] {key}")
    check_extra(slurm.extra, f"{source}: [slurm] extra")
    limit = time_limit_seconds(slurm.time)
    if slurm.signal_seconds and slurm.signal_seconds >= limit:
        raise BadInput(f"--signal-seconds {slurm.signal_seconds}: must be shorter than the time limit "
                       f"{slurm.time} ({limit} s), or the job is signalled as soon as it starts")
    return slurm


def build_spec(configs: list[str], overrides: list[str], sweeps: list[str], options: dict,
               out_dir: str | None = None, array: bool = False, array_throttle: int = 0,
               workdir: Path | None = None) -> JobSpec:
    """Validate every (config, overrides) point and assemble the job.

    Several configs or a ``--sweep`` make a job array with one task per point.
    Run directories: ``<root>/<jobid>`` or ``<root>/<arrayjobid>/<task>-<label>``, where root is
    ``out_dir`` or the first config's ``run.out_dir`` (made absolute).
    """
    if not configs:
        raise BadInput("submit: give at least one CONFIG.toml")
    workdir = (workdir or Path.cwd()).resolve()
    points: list[JobPoint] = []
    texts: list[str] = []
    first_cfg = None
    for cid, path in enumerate(configs):
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise BadInput(f"{path}: cannot read config: {exc.strerror or exc}") from None
        if "\nHPCQL_CONFIG_EOF" in f"\n{text}":
            raise BadInput(f"{path}: contains the line HPCQL_CONFIG_EOF, which the job script uses as a delimiter")
        texts.append(text.rstrip("\n"))
        for sweep in parse_sweeps(sweeps):
            cfg = load_config(path, overrides + sweep)  # BadInput names the key
            first_cfg = first_cfg or cfg
            label = label_for(sweep) if sweep else Path(path).stem
            if len(configs) > 1 and sweep:
                label = f"{Path(path).stem}_{label}"
            points.append(JobPoint(cid, tuple(overrides + sweep), re.sub(r"[^A-Za-z0-9._+-]+", "-", label)))
    assert first_cfg is not None
    slurm = effective_slurm(first_cfg.slurm, options, configs[0])
    root = Path(out_dir) if out_dir else Path(first_cfg.run.out_dir)
    root = root if root.is_absolute() else workdir / root
    for what, p in (("run directory root", root), ("working directory", workdir)):
        if re.search(r"\s", str(p)):
            raise BadInput(f"{what} {str(p)!r}: #SBATCH paths cannot contain whitespace")
    return JobSpec(job_name=re.sub(r"[^A-Za-z0-9._-]+", "-", first_cfg.run.name), slurm=slurm,
                   config_texts=texts, points=points, runs_root=root, workdir=workdir,
                   array=array or len(points) > 1, array_throttle=array_throttle, mpiexec=default_mpiexec())


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env


def render(spec: JobSpec) -> str:
    """The batch script text."""
    s = spec.slurm
    array = ""
    if spec.array:
        array = f"0-{len(spec.points) - 1}" + (f"%{spec.array_throttle}" if spec.array_throttle else "")
    return _environment().get_template(spec.template).render(
        version=__version__, template=spec.template, job_name=spec.job_name,
        nodes=s.nodes, ntasks_per_node=s.ntasks_per_node, cpus_per_task=s.cpus_per_task, time=s.time,
        partition=s.partition, account=s.account, qos=s.qos, mem=s.mem, gpus_per_node=s.gpus_per_node,
        array=array, runs_root=str(spec.runs_root), workdir=str(spec.workdir),
        signal_seconds=s.signal_seconds, requeue=s.requeue, extra=s.extra, setup=s.setup,
        hpcql_cmd=" ".join(shlex.quote(c) for c in spec.hpcql_cmd), launcher=s.launcher, mpi=s.mpi,
        mpiexec=shlex.quote(spec.mpiexec), points=spec.points, config_texts=spec.config_texts,
    )
