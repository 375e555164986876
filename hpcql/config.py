"""Typed, validated job configuration (TOML) with ``--set section.key=value`` overrides.

Every rank parses the same file the same way, so a config error is raised on all
ranks at once (``BadInput(agreed=True)``): rank 0 prints it and every rank exits 2.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpcql.errors import BadInput


class Section(BaseModel):
    """Base of every config section: unknown keys, wrong types and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------- [run]
class RunSection(Section):
    name: str = "default"
    out_dir: Annotated[str, Field(min_length=1)] = "runs/default"
    seed: Annotated[int, Field(ge=0)] = 0
    overwrite: bool = False
    """Replace an existing result.h5 in out_dir (otherwise that is an error)."""
    progress: Literal["auto", "bar", "log", "none"] = "auto"
    status_every_seconds: Annotated[float, Field(gt=0)] = 5.0
    plots: bool = True
    bind_cores: Literal["auto", "off"] = "auto"
    """auto: when the launcher left a node's ranks unbound and they fit, bind each to its own
    equal share of the cores (what srun --cpu-bind=cores does); off: leave CPU affinity alone."""


# ----------------------------------------------------------------------------- [env]
class GridworldEnv(Section):
    """A rows x cols grid; actions up/right/down/left; slips go sideways."""

    kind: Literal["gridworld"]
    rows: Annotated[int, Field(ge=1)] = 320
    cols: Annotated[int, Field(ge=2)] = 320
    slip: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    obstacle_density: Annotated[float, Field(ge=0.0, lt=0.9)] = 0.0
    goals: list[list[int]] = []
    """[[row, col], ...] absorbing goal cells; default: the bottom-right corner."""
    goal_reward: float = 1.0
    step_reward: float = 0.0
    discount: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99


class MdpFileEnv(Section):
    """An "hpcql-mdp" HDF5 file."""

    kind: Literal["mdp-file"]
    path: str


class GymTabularEnv(Section):
    """A gymnasium toy-text environment, solved through its model ``env.unwrapped.P``."""

    kind: Literal["gymnasium-tabular"]
    id: str = "FrozenLake-v1"
    options: dict[str, Union[bool, int, float, str]] = {}
    """Keyword arguments for ``gymnasium.make`` (e.g. map_name, is_slippery)."""
    discount: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99


class RandomEnv(Section):
    """A random sparse MDP (uniform successors), generated shard-locally from run.seed."""

    kind: Literal["random"]
    states: Annotated[int, Field(ge=1)] = 100_000
    actions: Annotated[int, Field(ge=1)] = 4
    successors: Annotated[int, Field(ge=1)] = 8
    local_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Fraction of successors drawn near the state (banded structure)."""
    discount: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99


class GymEnv(Section):
    """A gymnasium environment with Box observations and discrete actions (DQN)."""

    kind: Literal["gymnasium"]
    id: str = "CartPole-v1"
    options: dict[str, Union[bool, int, float, str]] = {}
    num_envs: Annotated[int, Field(ge=1)] = 4
    """Vectorised environments per rank."""


EnvSection = Annotated[Union[GridworldEnv, MdpFileEnv, GymTabularEnv, RandomEnv, GymEnv], Field(discriminator="kind")]


# ----------------------------------------------------------------------------- [algo]
class AlgoBase(Section):
    mode: Literal["sync", "async"] = "sync"
    gamma: Optional[Annotated[float, Field(gt=0.0, lt=1.0)]] = None
    """Discount; overrides the MDP's own when given."""
    tol: Annotated[float, Field(gt=0.0)] = 1e-6
    """Target optimality: the greedy policy is tol-optimal at the stop."""
    max_iterations: Annotated[int, Field(ge=1)] = 1_000_000
    float32: bool = False
    """Store transition probabilities as float32 (4 bytes less per transition; sums stay float64).

    The solvers then solve the MDP with rounded probabilities: V moves from the float64 optimum by
    at most gamma / (1 - gamma) * 2^-24 * max|V| (6e-5 * max|V| at gamma 0.999), on top of ``tol``."""


class ValueIterationAlgo(AlgoBase):
    name: Literal["value-iteration"]
    stopping: Literal["sup", "span"] = "sup"
    """sup: stop at ||V'-V||_inf < tol(1-g)/(2g). span (sync only): stop at
    span(V'-V) < tol(1-g)/g and shift V by g/(1-g) * mid-range of V'-V (Puterman
    6.6.12); both leave a tol-optimal greedy policy and ||V - V*|| <= tol/2."""
    sweep_layout: Literal["auto", "rows", "tiles"] = "auto"
    """Sync sweeps' entry layout: rows (state by state), tiles (column-blocked, gathers kept in
    cache; a second copy of the entries, 12 bytes each), or auto, the default (tiles where most
    successors are far from their state and a shard gathers from at least 2^18 values, as in large
    random MDPs; rows otherwise). Tiles need mode = 'sync'; auto in async mode runs rows. On a
    10^6-state random MDP tiles sweep 2x faster than rows; below 2^18 states they are slower."""

    @model_validator(mode="after")
    def _sync_only_options(self) -> "ValueIterationAlgo":
        if self.stopping == "span" and self.mode != "sync":
            raise ValueError("stopping = 'span' needs mode = 'sync'")
        if self.sweep_layout == "tiles" and self.mode != "sync":
            raise ValueError("sweep_layout = 'tiles' needs mode = 'sync' (Gauss-Seidel sweeps run on rows)")
        return self


class PolicyIterationAlgo(AlgoBase):
    name: Literal["policy-iteration"]
    mode: Literal["sync"] = "sync"
    """Policy iteration is synchronous (evaluation sweeps and Krylov solves in lockstep)."""
    variant: Literal["optimistic", "inexact"] = "optimistic"
    eval_sweeps: Annotated[int, Field(ge=1)] = 20
    """Optimistic PI: evaluation sweeps on P^pi between improvements."""
    krylov: Literal["gmres", "bicgstab"] = "gmres"
    krylov_restart: Annotated[int, Field(ge=2)] = 30
    max_inner: Annotated[int, Field(ge=1)] = 5000
    """Inexact PI: Krylov iterations per evaluation at most."""
    inner_rtol_factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    """Inexact PI: relative tolerance of the inner solve, times the Bellman residual."""


class DQNAlgo(AlgoBase):
    """Replicated DQN on a gymnasium env: a Q-network replica, envs and a replay shard per rank.

    Step counts (total_steps, learning_starts, eps_decay_steps, eval_every) are global env
    steps summed over ranks; batch_size, buffer_size and env.num_envs are per rank.
    gamma (from [algo]) defaults to 0.99.
    """

    name: Literal["dqn"]
    total_steps: Annotated[int, Field(ge=1)] = 100_000
    """Env-step budget over all ranks."""
    hidden: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [128, 128]
    """Hidden layer sizes of the MLP Q-network (ReLU)."""
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    """Adam learning rate."""
    batch_size: Annotated[int, Field(ge=1)] = 64
    """Local minibatch per rank; the global batch is batch_size x ranks (sync and overlap modes)."""
    buffer_size: Annotated[int, Field(ge=1)] = 50_000
    """Replay capacity of each rank's shard."""
    learning_starts: Annotated[int, Field(ge=0)] = 1000
    """Global env steps before the first gradient update."""
    train_every: Annotated[int, Field(ge=1)] = 1
    """Vector-env steps per rank between training rounds."""
    gradient_steps: Annotated[int, Field(ge=1)] = 1
    """Gradient updates per training round."""
    target_update_every: Annotated[int, Field(ge=1)] = 100
    """Gradient updates between hard copies of the online network into the target network."""
    n_step: Annotated[int, Field(ge=1, le=100)] = 3
    """n-step returns."""
    double_dqn: bool = True
    max_grad_norm: Annotated[float, Field(gt=0.0)] = 10.0
    """Clip the (averaged) gradient to this global L2 norm."""
    huber_delta: Annotated[float, Field(gt=0.0)] = 1.0
    eps_start: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    eps_end: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    eps_decay_steps: Annotated[int, Field(ge=1)] = 10_000
    """Global env steps of the linear epsilon decay from eps_start to eps_end."""
    eval_every: Annotated[int, Field(ge=1)] = 5000
    """Global env steps between greedy evaluations."""
    eval_episodes: Annotated[int, Field(ge=1)] = 20
    """Greedy episodes per evaluation, spread over the ranks."""
    target_return: Optional[float] = None
    """Stop at the first evaluation whose mean return reaches this (None: run total_steps)."""
    async_scheme: Literal["overlap", "parameter-server"] = "overlap"
    """mode="async": overlapped Iallreduce with bounded staleness, or a parameter server on rank 0."""
    max_staleness: Annotated[int, Field(ge=0, le=64)] = 1
    """overlap: averaged gradients are applied exactly this many updates late; parameter-server:
    gradients a worker may have in flight (at least 1)."""
    allreduce: Literal["shared-memory", "mpi"] = "shared-memory"
    """How sync and overlap average gradients: shared-memory (ranks of a node sum each other's
    vectors in an MPI-3 shared window; node leaders reduce across nodes with MPI) or mpi (one
    MPI Allreduce / Iallreduce over all ranks). Same average, different summation order."""
    check_every: Annotated[int, Field(ge=0)] = 200
    """Updates between replica checksums (sync/overlap); 0 disables."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: the GPU of the node-local rank when CUDA is available, else CPU."""
    engine: Literal["auto", "numpy", "torch"] = "auto"
    """How a CPU replica computes: numpy (hand-written forward/backward and Adam on the torch
    module's own memory; several times faster for small networks) or torch (autograd).
    auto: numpy on the CPU, torch on a GPU. numpy keeps the replica on the CPU whatever the
    GPUs (device = "cuda" with it is a config error)."""
    diverge_rank: int = -1
    """Debug: perturb this rank's replica (tests the replica check); -1 disables."""
    diverge_at_update: Annotated[int, Field(ge=0)] = 0
    """Debug: the update after which diverge_rank's replica is perturbed."""

    @model_validator(mode="after")
    def _numpy_engine_on_cpu(self) -> "DQNAlgo":
        if self.engine == "numpy" and self.device == "cuda":
            raise ValueError("engine = 'numpy' computes on the CPU: it cannot go with device = 'cuda'")
        return self


class QLearningAlgo(AlgoBase):
    """Sharded model-free Q-learning: agents migrate to the rank owning their state.

    ``mode = "sync"``: lockstep rounds of ``exchange_every`` steps per agent, then
    migration and ghost max-Q refresh (bitwise deterministic for a seed and rank
    count). ``mode = "async"``: migrants and ghost values are sent as soon as ready
    and used when they arrive; no rank waits for another. ``tol`` is the accuracy
    of the exact evaluations (greedy policy value, optimum).
    """

    name: Literal["q-learning"]
    agents_per_rank: Annotated[int, Field(ge=1, le=100_000_000)] = 1024
    """Agents created per rank (the global count stays agents_per_rank x ranks)."""
    budget_updates: Annotated[int, Field(ge=0)] = 10_000_000
    """Stop after this many Q updates over all ranks (0: no update budget)."""
    budget_seconds: Annotated[float, Field(ge=0.0)] = 0.0
    """Stop after this much wall time (0: no time budget)."""
    exchange_every: Annotated[int, Field(ge=1, le=1_000_000)] = 16
    """Steps per agent between migrations / ghost max-Q refreshes."""
    rebalance_every: Annotated[int, Field(ge=0)] = 0
    """Agreed steps (sync rounds; completed budget reductions in async mode) between load-balance
    checks, which recut the partition when the busiest rank did more than rebalance_threshold times
    the mean number of updates since the last check (0: keep the starting partition)."""
    rebalance_threshold: Annotated[float, Field(ge=1.0)] = 1.1
    epsilon_schedule: Literal["constant", "linear", "exponential"] = "linear"
    epsilon_start: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    epsilon_end: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    epsilon_decay_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    """Fraction of the budget over which epsilon goes from start to end."""
    step_size: Literal["constant", "visits", "rescaled"] = "rescaled"
    """constant: alpha; visits: n(s,a)^-omega; rescaled: (1 + (1-gamma)(n(s,a)-1))^-omega."""
    alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    omega: Annotated[float, Field(gt=0.5, le=1.0)] = 0.8
    """Step-size exponent: the noise left in Q falls as n^-omega/2, the memory of early (biased)
    targets fades more slowly as omega grows. On a 10^4-state gridworld at 100M updates, 0.8 gave a
    0.5% gap and 1.0 2.2%; on FrozenLake 8x8 (64 states, an action gap of 0.0013 that matters)
    1.0 stays within 0.13% at 16M updates over 40 seeds where 0.8 reached 1.8%."""
    starts: Literal["fixed", "exploring", "mixed"] = "exploring"
    """fixed: episodes start in start_states (uniform pick); exploring: uniform state, uniform first
    action; mixed: an exploring start with probability exploring_fraction, else a fixed one."""
    exploring_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Share of exploring starts under starts = "mixed"."""
    start_states: list[Annotated[int, Field(ge=0)]] = [0]
    """Start states of episodes (fixed starts) and where the greedy policy's value is reported."""
    max_episode_steps: Annotated[int, Field(ge=1)] = 1000
    """Episodes end at absorbing states or after this many steps, then restart."""
    q_init: float = 0.0
    """Initial Q of non-absorbing states (absorbing states start at their exact value)."""
    eval_points: Annotated[int, Field(ge=0, le=10_000)] = 10
    """Metric rows with the exact greedy-policy value over the run (0: only at the end)."""


AlgoSection = Annotated[Union[ValueIterationAlgo, PolicyIterationAlgo, DQNAlgo, QLearningAlgo], Field(discriminator="name")]


# ----------------------------------------------------------------------------- [checkpoint], [debug]
class CheckpointSection(Section):
    enabled: bool = True
    every_seconds: Annotated[float, Field(ge=0.0)] = 600.0
    every_iterations: Annotated[int, Field(ge=0)] = 0
    """0 disables the iteration trigger."""
    keep: Annotated[int, Field(ge=1)] = 3
    fresh: bool = False
    """Delete existing checkpoints in out_dir and start over (``hpcql run --fresh``)."""


class DebugSection(Section):
    """Test aids: a failing, slow or signalled rank; emulated nodes."""

    fail_rank: int = -1
    fail_at_iteration: Annotated[int, Field(ge=0)] = 0
    slow_rank: int = -1
    slow_seconds: Annotated[float, Field(ge=0.0)] = 0.0
    """Sleep this long per iteration on slow_rank."""
    signal_rank: int = -1
    signal_at_iteration: Annotated[int, Field(ge=0)] = 0
    """Send SIGUSR1 to this process on signal_rank at that iteration (checkpoint/requeue tests)."""
    ranks_per_node: Annotated[int, Field(ge=0)] = 0
    """> 0: the shared-memory allreduce treats consecutive groups of this many ranks as nodes
    (tests its inter-node path on one machine); 0: the real nodes."""


class SlurmSection(Section):
    """Batch resources and job-script settings for ``hpcql submit`` (command-line options win)."""

    nodes: Annotated[int, Field(ge=1)] = 1
    ntasks_per_node: Annotated[int, Field(ge=1)] = 1
    cpus_per_task: Annotated[int, Field(ge=1)] = 1
    """Also OMP_NUM_THREADS / torch threads of every rank."""
    time: str = "01:00:00"
    partition: str = ""
    account: str = ""
    qos: str = ""
    gpus_per_node: Annotated[int, Field(ge=0)] = 0
    """> 0 selects the GPU job template."""
    mem: str = ""
    """e.g. "32G" per node; empty: the site default."""
    launcher: Literal["srun", "mpiexec"] = "srun"
    """How ranks start inside the allocation: ``srun --mpi=<mpi>`` or the MPI's own ``mpiexec``."""
    mpi: str = "pmi2"
    """``srun --mpi`` plugin: pmi2 works with the mpich wheel; pmix for many site MPIs."""
    signal_seconds: Annotated[int, Field(ge=0)] = 300
    """USR1 to the batch script this long before the time limit (checkpoint, then requeue); 0 disables."""
    requeue: bool = True
    setup: list[str] = []
    """Shell lines run before launching (``module load ...``, ``source venv/bin/activate``)."""
    extra: list[str] = []
    """Further sbatch options, e.g. ["--constraint=cpu", "--exclusive"]."""


class Config(Section):
    run: RunSection = RunSection()
    env: EnvSection = GridworldEnv(kind="gridworld")
    algo: AlgoSection = ValueIterationAlgo(name="value-iteration")
    checkpoint: CheckpointSection = CheckpointSection()
    debug: DebugSection = DebugSection()
    slurm: SlurmSection = SlurmSection()


# ----------------------------------------------------------------------------- loading
DEFAULT_JOB: dict[str, Any] = {
    "run": {"name": "default", "out_dir": "runs/default"},
    "env": {"kind": "gridworld", "rows": 320, "cols": 320, "slip": 0.1, "obstacle_density": 0.05},
    "algo": {"name": "value-iteration", "mode": "sync", "gamma": 0.99, "tol": 1e-6},
}
TAGS = {"env": "kind", "algo": "name"}


def _parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value when it parses as one, else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config dict (copy)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise BadInput(f"--set {item!r}: expected section.key=value", agreed=True)
        section, name = parts
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            raise BadInput(f"--set {item!r}: [{section}] is not a table", agreed=True)
        table[name] = _parse_value(value.strip())
    return out


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    if len(loc) >= 2 and loc[0] in TAGS and err["type"] not in ("union_tag_invalid", "union_tag_not_found"):
        loc = [loc[0]] + loc[2:]  # drop the discriminator value pydantic inserts
    if err["type"] == "union_tag_not_found":
        loc = loc + [TAGS.get(loc[0], "?")]
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]" if loc else "config"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    msg = err["msg"]
    if "input" in err and err["type"] not in ("missing", "union_tag_not_found") and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}"


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw dict into a ``Config``; the first error becomes a one-line ``BadInput``."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        extra = len(exc.errors()) - 1
        more = f" (and {extra} more error{'s' if extra > 1 else ''})" if extra else ""
        raise BadInput(f"{source}: {_describe(first)}{more}", agreed=True) from None


def load_config(path: str | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (or the built-in default job when None), apply overrides, validate."""
    if path is None:
        data, source = DEFAULT_JOB, "default job"
    else:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise BadInput(f"{path}: config file not found", agreed=True) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{path}: cannot read config: {exc}", agreed=True) from None
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"{path}: TOML syntax error: {exc}", agreed=True) from None
        source = path
    return parse_config(apply_overrides(data, overrides or []), source)


def effective_gamma(cfg: Config, model_discount: float | None) -> float:
    """The discount to use: ``algo.gamma`` when given, else the model's own, else an error."""
    if cfg.algo.gamma is not None:
        return cfg.algo.gamma
    if model_discount is None:
        raise BadInput("[algo] gamma: required, the MDP file has no discount", agreed=True)
    return model_discount
