#!/usr/bin/env bash
# The checkpoint tests again, on parallel HDF5 (h5py driver="mpio"), which `make test` cannot reach:
# its h5py wheel is serial, so checkpoints there are written by ranks taking turns.
#
# Builds (once) a second environment, .venv-mpio, against Debian's MPICH and its MPI build of HDF5
# (apt packages mpich, libmpich-dev, libhdf5-mpich-dev, installed when missing), with mpi4py and
# h5py (HDF5_MPI=ON) compiled from source, then runs the tests that write and read checkpoints
# and result files under that MPICH's launcher (mpicc.mpich / mpiexec.mpich by name, so an Open MPI
# that owns the plain mpicc / mpiexec alternatives does not get mixed in).
#
#   bash scripts/test-parallel-hdf5.sh          # set up if needed, then test
#   VENV_MPIO=/path bash scripts/test-parallel-hdf5.sh
#
# Exit status: the tests' status; 3 when the environment cannot be set up (no apt-get, no root,
# a failed build), with the reason on one line, so CI can report the leg as unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_MPIO:-.venv-mpio}
PY=$VENV/bin/python
STAMP=$VENV/.hpcql-mpio-installed
MPICC=/usr/bin/mpicc.mpich
TESTS=(tests/test_checkpoint.py tests/test_qlearning_checkpoint.py tests/test_dqn_checkpoint.py
       tests/test_tabular_sync.py tests/test_bad_input.py)

unavailable() { echo "test-parallel-hdf5: unavailable: $*" >&2; exit 3; }
log() { echo "test-parallel-hdf5: $*"; }

setup() {
    local pkgs=(mpich libmpich-dev libhdf5-mpich-dev pkg-config)
    if ! dpkg -s "${pkgs[@]}" >/dev/null 2>&1; then
        command -v apt-get >/dev/null || unavailable "apt-get not found (needs ${pkgs[*]})"
        [ "$(id -u)" = 0 ] || unavailable "not root: cannot apt-get install ${pkgs[*]}"
        log "installing ${pkgs[*]} (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null \
            || unavailable "apt-get install ${pkgs[*]} failed"
    fi
    local hdf5_dir
    hdf5_dir=$(dirname "$(find /usr/lib -path '*hdf5/mpich/libhdf5.so' -print -quit)")
    [ "$hdf5_dir" != . ] && [ -d "$hdf5_dir/include" ] || unavailable "HDF5 (MPICH build) not found under /usr/lib"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || unavailable "python3 -m venv failed"
    log "building mpi4py and h5py against $MPICC and $hdf5_dir (a few minutes)"
    {
        "$PY" -m pip install -q --upgrade pip setuptools wheel &&
        "$PY" -m pip install -q "numpy>=1.26" "cython>=3" pkgconfig &&
        MPICC=$MPICC "$PY" -m pip install -q --no-binary=mpi4py --no-cache-dir "mpi4py>=4.0" &&
        CC=$MPICC HDF5_MPI=ON HDF5_DIR="$hdf5_dir" "$PY" -m pip install -q --no-binary=h5py \
            --no-build-isolation --no-cache-dir "h5py>=3.10" &&
        "$PY" -m pip install -q -e '.[test]'
    } || unavailable "building the environment failed (pip output above)"
    # the launcher tests/conftest.py picks (next to python); a wrapper, not a link: hydra looks for
    # hydra_pmi_proxy next to the path it was started by
    printf '#!/bin/sh\nexec /usr/bin/mpiexec.mpich "$@"\n' > "$VENV/bin/mpiexec"
    chmod +x "$VENV/bin/mpiexec"
    touch "$STAMP"
}

[ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] || setup
# hpcql's own mpiexec calls (scale, slurm fallbacks) find the same launcher first
export PATH="$(cd "$VENV/bin" && pwd):/usr/bin:/bin"
"$PY" - <<'EOF' || unavailable "this environment's h5py or mpi4py is not the parallel build"
import h5py
from mpi4py import MPI
assert h5py.get_config().mpi, "h5py is serial"
assert MPI.Get_library_version().startswith("MPICH"), MPI.Get_library_version()
from hpcql import h5io
assert h5io.PARALLEL_HDF5
print("test-parallel-hdf5: h5py", h5py.__version__, "HDF5", h5py.version.hdf5_version, "parallel;",
      MPI.Get_library_version().splitlines()[0])
EOF
exec "$PY" -m pytest -q -m "not slow" "${TESTS[@]}" "$@"
