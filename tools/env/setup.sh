#!/usr/bin/env bash
# Idempotent set-up: project-local .venv, pinned packages, Jittor wired to oneDNN and compiled.
# Run by run.sh and tests/run.sh; a second run with nothing changed takes about a second.
#   bash tools/env/setup.sh [--dev] [--mpi]   --dev adds the test dependencies, --mpi OpenMPI (for NP/GPUS > 1)
# The tools' extra (tools/requirements.txt: matplotlib for the plots) is installed too; nothing needs it to train.
# Environment: PYTHON (interpreter for the venv, default python3), FORCE_CPU=1 (never use a GPU),
#   GPUS=N (NCCL for N GPUs), nvcc_path=... (your CUDA), CUDA_ONLINE=0|1 (skip the download-server probe).
# On a GPU machine it picks a CUDA route and says why (tools/env/cuda_route.py, docs/GPU.md).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
REQS=("$ROOT/requirements.txt" "$ROOT/tools/requirements.txt")
MPI=0
for arg in "$@"; do
    case "$arg" in
        --dev) REQS+=("$ROOT/tests/requirements.txt") ;;
        --mpi) MPI=1 ;;
        *) echo "usage: bash tools/env/setup.sh [--dev] [--mpi]" >&2; exit 2 ;;
    esac
done

say() { printf '[setup] %s\n' "$*" >&2; }

# 0. MPI, only when multi-process runs are asked for: Debian's OpenMPI (mpirun for tools/env/launch.sh,
#    mpicc for Jittor, which compiles its MPI ops against it on the next import).
if [ "$MPI" = 1 ] && ! { command -v mpirun && command -v mpicc; } >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if ! command -v apt-get >/dev/null; then
        say "error: multi-process runs need OpenMPI (mpirun, mpicc); install it with your package manager"
        exit 1
    fi
    say "installing OpenMPI (openmpi-bin, libopenmpi-dev) for multi-process runs"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
fi

# 1. The virtual environment and the pinned packages, reinstalled only when a requirements file changes.
if [ ! -x "$PY" ]; then
    say "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# One stamp per requirements file, named after its hash: a changed file reinstalls, nothing else does.
for req in "${REQS[@]}"; do
    stamp="$VENV/.installed-$(sha1sum < "$req" | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        say "installing ${req#"$ROOT/"}"
        "$PY" -m pip install --disable-pip-version-check -q -r "$req"
        touch "$stamp"
    fi
done
# The model package, editable: `import jmodels` from any folder runs this clone's code (a new stamp when
# pyproject.toml changes). --no-deps: the requirements above are its pinned dependencies.
stamp="$VENV/.jmodels-$(cat "$ROOT/pyproject.toml" <(echo "$ROOT") | sha1sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    say "installing the jmodels package (editable) from $ROOT"
    "$PY" -m pip install --disable-pip-version-check -q --no-deps -e "$ROOT"
    touch "$stamp"
fi
core=$(sha1sum < "$ROOT/requirements.txt" | cut -c1-16)

# 2. oneDNN where Jittor looks for it, so that it neither downloads it nor falls back to slow kernels.
#    Copied (not linked) so that the cache does not depend on this clone's venv staying in place.
DNNL="${JITTOR_HOME:-$HOME}/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp"
if [ ! -f "$DNNL/lib/libmkldnn.so" ] && [ -f "$VENV/include/dnnl.h" ]; then
    say "wiring oneDNN into $DNNL"
    tmp=$(mktemp -d "$(dirname "$DNNL")/.dnnl-XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$DNNL")"; mktemp -d "$(dirname "$DNNL")/.dnnl-XXXXXX"; })
    mkdir -p "$tmp/lib"
    cp -r "$VENV/include" "$tmp/include"
    cp "$(readlink -f "$VENV/lib/libdnnl.so")" "$tmp/lib/libdnnl.so.2"
    ln -s libdnnl.so.2 "$tmp/lib/libmkldnn.so"
    rm -rf "$DNNL" && mv "$tmp" "$DNNL"
fi

# 3. The CUDA route: which toolkit Jittor compiles with here and why (the CPU where there is no driver);
#    on a GPU its one-time work: Jittor's own toolkit downloaded, Jittor patched (fp32 accumulation, CUDA 13).
"$PY" "$ROOT/tools/env/cuda_route.py" setup ${GPUS:+--gpus "$GPUS"}
ready="$VENV/.jittor-ready-$core"
if ! grep -q '"route": "cpu"' "$VENV/jmodels-cuda-env.json"; then  # a new route compiles anew
    ready="$ready-$(sha1sum < "$VENV/jmodels-cuda-env.json" | cut -c1-16)"
fi

# 4. Jittor's first compile (minutes, once per machine): run it here, with Jittor's own progress lines.
if [ ! -f "$ready" ]; then
    say "compiling Jittor's core and first ops (first time on a machine: about 3 minutes on 2 cores;"
    say "Jittor prints its progress below; later starts take seconds)"
    t0=$(date +%s)
    (cd "$ROOT" && "$PY" -u - <<'PYEOF'
from jmodels.runtime import init_jittor
jt = init_jittor()
import jittor.nn as nn
x = jt.randn(1, 8, 16, 16)
y = nn.conv2d(x, jt.randn(8, 8, 3, 3), padding=1).sum()
y.sync()
print(f"[setup] Jittor {jt.__version__} ready, device: {'cuda' if jt.flags.use_cuda else 'cpu'}")
PYEOF
    )
    touch "$ready"
    say "Jittor ready in $(( $(date +%s) - t0 )) s"
fi
