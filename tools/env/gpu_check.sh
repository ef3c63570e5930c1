#!/usr/bin/env bash
# One prepared check for a GPU machine with no internet: install the wheels it carries, take the CUDA
# route, run every stage in its own guard (tools/env/gpu_check.py), all in under 8 minutes.
#   bash tools/env/gpu_check.sh --fetch-wheels [DIR]   here, online: the wheels for that machine into DIR
#                                                  (default .whl; add /.whl/ to .git/info/exclude)
#   bash tools/env/gpu_check.sh OUT_DIR                there: OUT_DIR/gpu_check.log and gpu_check.json
# Environment: WHEELS (default .whl), PYTHON (default python3), PYVER (--fetch-wheels, default 3.12),
#   DEADLINE (seconds for all stages, default 450), ONLY (comma-separated stages).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}

if [ "${1:-}" = --fetch-wheels ]; then  # jittor is a source package: its sdist built here into a pure wheel
    set -e
    DIR=${2:-$ROOT/.whl}
    mkdir -p "$DIR"
    plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
        "${plat[@]}" -d "$DIR" numpy==1.26.4 astunparse==1.6.3 onednn-cpu-gomp==2022.2.1 onednn-devel-cpu-gomp==2022.2.1
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" jittor==1.3.11.0
    "$PY" -m pip wheel -q --no-deps -w "$DIR" "$tmp"/jittor-1.3.11.0.tar.gz
    rm -rf "$tmp"
    du -ch "$DIR"/*.whl | tail -1
    exit 0
fi
[ $# -eq 1 ] && [ "${1:0:1}" != - ] || { echo "usage: bash tools/env/gpu_check.sh OUT_DIR | --fetch-wheels [DIR]" >&2; exit 2; }
OUT=$1
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
say() { printf '[gpu_check] %s\n' "$*" | tee -a "$LOG" >&2; }
t0=$(date +%s)
WHEELS=${WHEELS:-$ROOT/.whl}
SITE=${SITE:-/tmp/jmodels-site}

# 1. The carried wheels into a folder of their own, first on the path (numpy < 2 shadows the machine's).
say "machine: $(nvidia-smi -L 2>/dev/null | head -1); $($PY --version 2>&1); nvcc: $(command -v nvcc)"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        $(ls "$WHEELS"/*.whl | grep -v onednn) >>"$LOG" 2>&1 || say "wheel install FAILED (see above)"
else
    say "no wheels in $WHEELS: using what the machine has"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CUDA_ONLINE=0
# oneDNN for the CPU side of the comparisons where carried (else Jittor would download it: off)
DNNL="$HOME/.cache/jittor/mkl/dnnl_lnx_2.2.0_cpu_gomp"
if ls "$WHEELS"/onednn_cpu_gomp-*.whl >/dev/null 2>&1 && [ ! -f "$DNNL/lib/libmkldnn.so" ]; then
    "$PY" - "$WHEELS" "$DNNL" <<'PYEOF' >>"$LOG" 2>&1 || say "oneDNN wiring failed: CPU side without it"
import glob, os, sys, zipfile
wheels, dest = sys.argv[1:]
os.makedirs(f"{dest}/lib", exist_ok=True)
for whl in glob.glob(f"{wheels}/onednn_*.whl"):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            if "/data/include/" in n and not n.endswith("/"):
                path = f"{dest}/include/" + n.split("/data/include/", 1)[1]
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "wb").write(z.read(n))
            elif n.endswith("/data/lib/libdnnl.so.2"):
                open(f"{dest}/lib/libdnnl.so.2", "wb").write(z.read(n))
os.symlink("libdnnl.so.2", f"{dest}/lib/libmkldnn.so")
PYEOF
fi
[ -f "$DNNL/lib/libmkldnn.so" ] || export use_mkl=0

# 2. The route: a CUDA 13 toolkit whose cuBLAS/cuRAND live in pip's nvidia/cu13 gets a CUDA home that
#    holds both; then Jittor patched (fp32 accumulation, CUDA 13) and the route's environment exported.
nvcc=$(cd "$ROOT/tools/env" && "$PY" -c 'from cuda_route import find_nvcc; print(find_nvcc() or "")')
if [ -n "$nvcc" ] && [ ! -f "$(dirname "$nvcc")/../include/cublas_v2.h" ]; then
    cu=$("$PY" -c 'import nvidia, os; print(*[p + "/cu13" for p in nvidia.__path__ if os.path.isdir(p + "/cu13")][:1])' 2>/dev/null)
    if [ -n "$cu" ]; then
        "$PY" "$ROOT/tools/env/cuda_route.py" home /tmp/jmodels-cuda-home --nvcc "$nvcc" --add "$cu" >>"$LOG" 2>&1 \
            && export nvcc_path=/tmp/jmodels-cuda-home/bin/nvcc && say "CUDA home: $nvcc + $cu -> /tmp/jmodels-cuda-home"
    fi
fi
cuda13=$(cd "$ROOT/tools/env" && "$PY" -c 'import sys; from cuda_route import nvcc_version as v; print(int((v(sys.argv[1]) or (0,)) >= (13,)))' "${nvcc_path:-$nvcc}")
"$PY" "$ROOT/tools/env/cuda_route.py" patch "$SITE" $([ "$cuda13" = 1 ] && echo --cuda13) >>"$LOG" 2>&1 || say "patching Jittor FAILED"
eval "$("$PY" "$ROOT/tools/env/cuda_route.py" env --site "$SITE" | tee -a "$LOG")"
say "route: ${JMODELS_CUDA_ROUTE:-?} nvcc_path=${nvcc_path:-} conv_opt=${conv_opt:-0}; set-up took $(( $(date +%s) - t0 )) s"

# 3. The stages, each in its own process and time guard.
"$PY" "$ROOT/tools/env/gpu_check.py" run "$OUT" --deadline "${DEADLINE:-450}" ${ONLY:+--only "$ONLY"}
rc=$?
say "done in $(( $(date +%s) - t0 )) s"
exit $rc
