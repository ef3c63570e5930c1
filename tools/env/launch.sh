#!/usr/bin/env bash
# Run a training command as NP data-parallel MPI processes (Jittor's own engine), or as it is
# when NP is 1. Every rank runs the same command; jmodels/parallel.py does the rest.
#   NP=2 bash tools/env/launch.sh .venv/bin/python train_ldm.py --out runs/x/ldm
set -euo pipefail
NP=${NP:-1}
if [ "$NP" -le 1 ]; then
    exec "$@"
fi
if ! command -v mpirun >/dev/null; then
    echo "error: NP=$NP processes need MPI (mpirun); install it with: bash tools/env/setup.sh --mpi" >&2
    exit 2
fi
# Ranks waiting at a barrier yield their core (OpenMPI spins by default, which starves rank 0
# while it alone writes checkpoints and sample grids on a CPU-only machine).
args=(-np "$NP" --oversubscribe --mca mpi_yield_when_idle 1)
[ "$(id -u)" = 0 ] && args+=(--allow-run-as-root)
exec mpirun "${args[@]}" "$@"
