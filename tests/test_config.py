"""Config parsing: defaults, overrides, and one-line errors naming the key."""

import pytest

from hpcql.config import load_config
from hpcql.errors import BadInput


def test_default_job_is_a_sizeable_gridworld():
    cfg = load_config(None)
    assert cfg.env.kind == "gridworld" and cfg.env.rows * cfg.env.cols >= 100_000
    assert cfg.algo.name == "value-iteration"


def test_set_overrides_and_types(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[run]\nname = "x"\n[env]\nkind = "gridworld"\nrows = 5\ncols = 6\n[algo]\nname = "value-iteration"\n')
    cfg = load_config(str(p), ["algo.gamma=0.9", "env.slip=0.2", 'run.name="y"', "run.out_dir=plain/string"])
    assert cfg.algo.gamma == 0.9 and cfg.env.slip == 0.2 and cfg.run.name == "y"
    assert cfg.run.out_dir == "plain/string" and cfg.env.rows == 5


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[algo]\nname = "value-iteration"\ngamma = 1.5\n', "[algo] gamma"),
        ('[algo]\nname = "value-iteration"\ngama = 0.9\n', "[algo] gama: unknown key"),
        ('[env]\nkind = "gridworld"\nrows = "ten"\n', "[env] rows"),
        ('[env]\nkind = "nope"\n', "[env]"),
        ('[bogus]\nx = 1\n', "[bogus]: unknown key"),
        ('[run]\nseed = -1\n', "[run] seed"),
        ('[checkpoint]\nkeep = 0\n', "[checkpoint] keep"),
        ('[run\nname = 1\n', "TOML syntax error"),
        ('[env]\nkind = "mdp-file"\n', "[env] path: Field required"),
        ('[env]\nkind = "gymnasium"\nid = "CartPole-v1"\n[algo]\nname = "dqn"\nengine = "numpy"\ndevice = "cuda"\n',
         "[algo]: Value error, engine = 'numpy' computes on the CPU"),
        ('[env]\nkind = "gymnasium"\nid = "CartPole-v1"\n[algo]\nname = "dqn"\nengine = "jax"\n', "[algo] engine"),
        ('[env]\nkind = "gridworld"\ngoal_reward = nan\n', "[env] goal_reward: Input should be a finite number"),
        ('[algo]\nname = "value-iteration"\ntol = inf\n', "[algo] tol: Input should be a finite number"),
        ('[env]\nkind = "gymnasium"\nid = "CartPole-v1"\n[algo]\nname = "dqn"\nlr = inf\n', "[algo] lr"),
        ('[algo]\nname = "q-learning"\nq_init = -nan\n', "[algo] q_init"),
        ('[algo]\nname = "policy-iteration"\nmode = "async"\n', "[algo] mode: Input should be 'sync'"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, expected):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(BadInput) as err:
        load_config(str(p))
    msg = str(err.value)
    assert expected in msg and "\n" not in msg and str(p) in msg


def test_missing_file_and_bad_set():
    with pytest.raises(BadInput, match="config file not found"):
        load_config("/nonexistent/job.toml")
    with pytest.raises(BadInput, match="section.key=value"):
        load_config(None, ["gamma=0.9"])
