#!/usr/bin/env bash
# The whole pipeline, stage by stage; each stage is skipped when its output exists.
#   bash run.sh                                    built-in demo data, sized for a CPU
#   DATA=<train dir> TEST=<test dir> bash run.sh   the contest's data
#   FORCE="ldm test" bash run.sh                   redo the named stages
#   GPUS=4 bash run.sh                             train on 4 GPUs (MPI data parallelism; NP=N: CPU processes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# ---- settings ---------------------------------------------------------------------------
DATA=${DATA:-}                # training root with imgs/ + labels/ (empty: the demo data)
TEST=${TEST:-}                # test folder with label PNGs + label_to_img.json (empty: demo)
RUN=${RUN:-runs/demo}         # checkpoints, sample grids, results and logs of this run
DEMO=${DEMO:-data/demo}       # where the demo data is generated
DEMO_FLAGS="--train 120 --test 24 --seed 0"
VAE_FLAGS=${VAE_FLAGS:-}      # extra train_vae.py flags, e.g. "--max_steps 200000 --size 256,192 --ch 128"
LDM_FLAGS=${LDM_FLAGS:-}      # extra train_ldm.py flags (full-scale values: README.md)
TEST_FLAGS=${TEST_FLAGS:-}    # extra test.py flags, e.g. "--steps 30 --guidance 3"
RESULTS=${RESULTS:-$RUN/results}  # the contest's output folder; the zip goes beside it
FORCE=${FORCE:-}              # stages to redo: data check vae ldm test
GPUS=${GPUS:-}                # training processes, one per GPU (the global batch stays the flags' batch_size)
NP=${NP:-${GPUS:-1}}          # training processes on any device (CPU: NP=2); > 1 launches through mpirun
# -------------------------------------------------------------------------------------------

if [ "$NP" -gt 1 ]; then bash tools/setup.sh --mpi; else bash tools/setup.sh; fi
PY=.venv/bin/python
TRAIN="env NP=$NP bash tools/launch.sh $PY"  # the training stages, as NP processes
mkdir -p "$RUN"

forced() { [[ " $FORCE " == *" $1 "* ]]; }
banner() { printf '\n== %s ==\n' "$*"; }

if [ -z "$DATA" ]; then
    DATA="$DEMO/train"
    TEST=${TEST:-$DEMO/test}
    if [ ! -d "$DEMO" ] || forced data; then
        banner "data: generating the demo set in $DEMO"
        $PY tools/make_demo_data.py --out "$DEMO" $DEMO_FLAGS $(forced data && echo --force)
    fi
fi

if [ ! -f "$RUN/data_check.txt" ] || forced check; then
    banner "check: reading every file of $DATA${TEST:+ and $TEST}"
    $PY dataset.py "$DATA" ${TEST:+--test "$TEST"} | tee "$RUN/data_check.txt.tmp"
    mv "$RUN/data_check.txt.tmp" "$RUN/data_check.txt"
fi

# Training stages resume from their checkpoint and return at once when finished.
banner "vae: stage 1, the autoencoder -> $RUN/vae/ckpt.npz"
forced vae && rm -rf "$RUN/vae"
$TRAIN train_vae.py --data "$DATA" --out "$RUN/vae" $VAE_FLAGS

banner "ldm: stage 2, the conditional UNet -> $RUN/ldm/ckpt.npz"
forced ldm && rm -rf "$RUN/ldm"
$TRAIN train_ldm.py --data "$DATA" --vae "$RUN/vae/ckpt.npz" --out "$RUN/ldm" $LDM_FLAGS

if [ -z "$TEST" ]; then
    echo "test: skipped (no TEST folder given)"
else
    banner "test: the contest entry -> $RESULTS and $RESULTS.zip"
    forced test && rm -rf "$RESULTS" "$RESULTS.zip"
    $PY test.py --input_path "$TEST" --img_path "$DATA" --output_path "$RESULTS" --run "$RUN" --resume 1 $TEST_FLAGS
fi

banner "done: $RUN, $RESULTS.zip"
