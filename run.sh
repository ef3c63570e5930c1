#!/usr/bin/env bash
# The whole pipeline, stage by stage; each stage is skipped when its output exists.
#   bash run.sh                                    built-in demo data, sized for a CPU
#   DATA=<train dir> TEST=<test dir> bash run.sh   the contest's data
#   FORCE="ldm test" bash run.sh                   redo the named stages
#   GPUS=4 bash run.sh                             train on 4 GPUs (MPI data parallelism; NP=N: CPU processes)
#   SCALE=small bash run.sh                        the proof that it learns: ../shared/data/gaugan_proxy at 128x96,
#                                                  about 2 h on 2 CPU cores with NP=2 (judges and tuning included),
#                                                  scored on held-out pairs (report.md)
#   SCALE=full DATA=<train> TEST=<test> bash run.sh   the contest recipe at 512x384, on GPUs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# ---- settings ---------------------------------------------------------------------------
SCALE=${SCALE:-demo}          # demo | small | full: one recipe; only resolution, widths and steps differ
DATA=${DATA:-}                # training root with imgs/ + labels/ (empty: the demo data)
TEST=${TEST:-}                # test folder with label PNGs + label_to_img.json (empty: demo);
                              # "holdout": made from DATA's held-out pairs, then scored into report.md
RUN=${RUN:-runs/$SCALE}       # checkpoints, sample grids, results and logs of this run
DEMO=${DEMO:-data/demo}       # where the demo data is generated
DEMO_FLAGS="--train 120 --test 24 --seed 0"
VAE_FLAGS=${VAE_FLAGS:-}      # extra train_vae.py flags, e.g. "--max_steps 200000 --size 256,192 --ch 128"
LDM_FLAGS=${LDM_FLAGS:-}      # extra train_ldm.py flags (the sizes' values: jmodels/presets.py)
SR_FLAGS=${SR_FLAGS:-}        # extra train_sr.py flags
DISTILL_FLAGS=${DISTILL_FLAGS:-}  # extra flags of the distill, steps and consistency stages (--teacher)
STUDENT_STEPS=${STUDENT_STEPS:-8 4}  # the steps stage's rounds: each student halves its teacher's steps
TEST_FLAGS=${TEST_FLAGS:-}    # extra test.py flags, e.g. "--steps 30 --guidance 3"
TUNE_FLAGS=${TUNE_FLAGS:-}    # extra tools/experiments/tune.py flags, e.g. "--budget 480" (held-out runs only)
RESULTS=${RESULTS:-$RUN/results}  # the contest's output folder; the zip goes beside it
FORCE=${FORCE:-}              # stages to redo: data check vae ldm sr distill steps consistency tune test picks report
                              # sr_report calls_report
JUDGE=${JUDGE:-runs/judge}    # the stand-in judge (<folder>/ckpt.npz) that tunes, picks and reports: half a of DATA
JUDGE2=${JUDGE2:-runs/judge2} # a second judge (seed 1, half b) that scores best of N without having picked
GPUS=${GPUS:-}                # training processes, one per GPU (the global batch stays the flags' batch_size)
NP=${NP:-${GPUS:-1}}          # training processes on any device (CPU: NP=2); > 1 launches through mpirun
# -------------------------------------------------------------------------------------------

if [ "$NP" -gt 1 ]; then bash tools/env/setup.sh --mpi; else bash tools/env/setup.sh; fi
PY=.venv/bin/python
# The recipe at this SCALE: jmodels/presets.py holds each stage's flags (demo: the scripts' own defaults)
SCALE_VAE=$($PY -m jmodels.presets "$SCALE" vae) && SCALE_LDM=$($PY -m jmodels.presets "$SCALE" ldm) \
    && SCALE_SR=$($PY -m jmodels.presets "$SCALE" sr) && SCALE_DISTILL=$($PY -m jmodels.presets "$SCALE" distill) \
    && SCALE_STEPS=$($PY -m jmodels.presets "$SCALE" steps) \
    && SCALE_CONSISTENCY=$($PY -m jmodels.presets "$SCALE" consistency) || exit 2
[ "$SCALE" != small ] || { DATA=${DATA:-../shared/data/gaugan_proxy}; TEST=${TEST:-holdout}; }
TRAIN="env NP=$NP bash tools/env/launch.sh $PY"  # the training stages, as NP processes
mkdir -p "$RUN"

forced() { [[ " $FORCE " == *" $1 "* ]]; }
banner() { printf '\n== %s ==\n' "$*"; }
timed() {  # timed STAGE CMD...: run CMD, append its wall time to $RUN/times.tsv (a resumed stage adds a line)
    local t0=$SECONDS; "${@:2}"; printf '%s\t%d\t%s\n' "$1" $((SECONDS - t0)) "$(date -Is)" >> "$RUN/times.tsv"
}
redo() {  # redo STAGE PATH...: a forced stage starts over: its outputs and its recorded times go
    rm -rf "${@:2}"; [ ! -f "$RUN/times.tsv" ] || sed -i "/^$1\t/d" "$RUN/times.tsv"
}
older() {  # older PATH: PATH is missing or older than a checkpoint of this run (new weights: new outputs)
    local stage
    for stage in vae ldm sr distill $(printf 'distill%s ' $STUDENT_STEPS) consistency; do
        [ ! "$RUN/$stage/ckpt.npz" -nt "$1" ] || return 0
    done
    return 1
}
REPORT=""                     # set below when the test folder is made from held-out pairs

if [ -z "$DATA" ]; then
    DATA="$DEMO/train"
    TEST=${TEST:-$DEMO/test}
    if [ ! -d "$DEMO" ] || forced data; then
        banner "data: generating the demo set in $DEMO"
        $PY tools/data/make_demo_data.py --out "$DEMO" $DEMO_FLAGS $(forced data && echo --force)
    fi
fi

if [ ! -f "$RUN/data_check.txt" ] || forced check; then
    CHECK_TEST=$TEST; [ "$TEST" != holdout ] || CHECK_TEST=""  # made from DATA after training
    banner "check: reading every file of $DATA${CHECK_TEST:+ and $CHECK_TEST}"
    $PY dataset.py "$DATA" ${CHECK_TEST:+--test "$CHECK_TEST"} | tee "$RUN/data_check.txt.tmp"
    mv "$RUN/data_check.txt.tmp" "$RUN/data_check.txt"
fi

# Training stages resume from their checkpoint and return at once when finished.
banner "vae: stage 1, the autoencoder -> $RUN/vae/ckpt.npz"
! forced vae || redo vae "$RUN/vae"
timed vae $TRAIN train_vae.py --data "$DATA" --out "$RUN/vae" $SCALE_VAE $VAE_FLAGS

banner "ldm: stage 2, the conditional UNet -> $RUN/ldm/ckpt.npz"
if forced ldm || forced vae; then  # a new autoencoder means new latents
    redo ldm "$RUN/ldm"
fi
timed ldm $TRAIN train_ldm.py --data "$DATA" --vae "$RUN/vae/ckpt.npz" --out "$RUN/ldm" $SCALE_LDM $LDM_FLAGS

if [ "$TEST" = holdout ]; then
    TEST="$RUN/holdout_test"
    if [ ! -f "$TEST/label_to_img.json" ] || forced test; then
        banner "holdout: the pairs this run never trained on, as a test set -> $TEST"
        $PY tools/data/holdout_test.py --ckpt "$RUN/ldm/ckpt.npz" --out "$TEST"
    fi
    REPORT=1
fi

if [ -n "$REPORT" ]; then  # held-out pairs: two stand-in judges (the second never picks)
    if [ ! -f "$JUDGE/ckpt.npz" ]; then
        banner "judge: the stand-in segmenter that scores layouts (half a of DATA) -> $JUDGE/ckpt.npz"
        timed judge $PY tools/eval/train_segmenter.py --data "$DATA" --out "$JUDGE" --part a
    fi
    if [ ! -f "$JUDGE2/ckpt.npz" ]; then
        banner "judge2: a second judge (seed 1, the other half b) for best of N -> $JUDGE2/ckpt.npz"
        timed judge2 $PY tools/eval/train_segmenter.py --data "$DATA" --out "$JUDGE2" --seed 1 --part b
    fi
fi

banner "sr: stage 3, 2x super-resolution steered by the label -> $RUN/sr/ckpt.npz"
if forced sr || forced vae; then  # a new autoencoder degrades the training inputs differently
    redo sr "$RUN/sr"
fi
SR_JUDGE=()  # held-out runs: the chain's native-resolution realism in the stage's log
[ -z "$REPORT" ] || SR_JUDGE=(--judge "$JUDGE/ckpt.npz")
timed sr $TRAIN train_sr.py --data "$DATA" --vae "$RUN/vae/ckpt.npz" --out "$RUN/sr" "${SR_JUDGE[@]}" $SCALE_SR $SR_FLAGS

banner "distill: the guidance-distilled student of stage 2, one UNet call per step -> $RUN/distill/ckpt.npz"
if forced distill || forced ldm || forced vae; then  # a new stage 2 needs its own student
    redo distill "$RUN/distill"
fi
timed distill $TRAIN train_ldm.py --data "$DATA" --vae "$RUN/vae/ckpt.npz" --teacher "$RUN/ldm/ckpt.npz" \
    --out "$RUN/distill" $SCALE_LDM $SCALE_DISTILL $DISTILL_FLAGS

TEACHER="$RUN/distill"  # progressive distillation: each round's student teaches the next, half the steps
for N in $STUDENT_STEPS; do
    banner "steps: a student of $N DDIM steps (one UNet call each) from $TEACHER -> $RUN/distill$N/ckpt.npz"
    if forced steps || forced distill || forced ldm || forced vae; then  # a new teacher needs new students
        redo "distill$N" "$RUN/distill$N"
    fi
    timed "distill$N" $TRAIN train_ldm.py --data "$DATA" --vae "$RUN/vae/ckpt.npz" --teacher "$TEACHER/ckpt.npz" \
        --student_steps "$N" --out "$RUN/distill$N" $SCALE_LDM $SCALE_STEPS $DISTILL_FLAGS
    TEACHER="$RUN/distill$N"
done

banner "consistency: a consistency student of $RUN/distill, any DDIM steps (one UNet call each) -> $RUN/consistency/ckpt.npz"
if forced consistency || forced distill || forced ldm || forced vae; then  # a new teacher needs a new student
    redo consistency "$RUN/consistency"
fi
timed consistency $TRAIN train_ldm.py --data "$DATA" --vae "$RUN/vae/ckpt.npz" --teacher "$RUN/distill/ckpt.npz" \
    --consistency 1 --out "$RUN/consistency" $SCALE_LDM $SCALE_CONSISTENCY $DISTILL_FLAGS

if [ -n "$REPORT" ]; then  # tune test.py's settings on one half of the held-out pairs, report on the other
    if forced tune || older "$RUN/test_flags.json"; then
        banner "tune: test.py's settings on half the held-out pairs -> $RUN/test_flags.json"
        redo tune "$RUN/test_flags.json"
        timed tune $PY tools/experiments/tune.py --run "$RUN" --input_path "$TEST" --img_path "$DATA" \
            --judge "$JUDGE/ckpt.npz" --judge2 "$JUDGE2/ckpt.npz" $TUNE_FLAGS
    fi
fi

if [ -z "$TEST" ]; then
    echo "test: skipped (no TEST folder given)"
else
    banner "test: the contest entry -> $RESULTS and $RESULTS.zip"
    if forced test || older "$RESULTS" || [ "$RUN/test_flags.json" -nt "$RESULTS" ]; then  # older weights or settings
        redo test "$RESULTS" "$RESULTS.zip" "${RESULTS}_picks.png" "${RESULTS}_picks.txt"
    fi
    timed test $PY test.py --input_path "$TEST" --img_path "$DATA" --output_path "$RESULTS" --run "$RUN" --resume 1 $TEST_FLAGS
fi

if [ -n "$TEST" ] && { forced picks || [ ! -f "${RESULTS}_picks.txt" ]; }; then  # a new test stage removed them
    banner "picks: 3 images for the expert vote, the best of different scenes -> ${RESULTS}_picks.png"
    PICK_JUDGE=()  # held-out runs: the judge trained on DATA above; else by style alone
    [ -z "$REPORT" ] || PICK_JUDGE=(--judge "$JUDGE/ckpt.npz")
    timed picks $PY tools/eval/select_picks.py --results "$RESULTS" --input_path "$TEST" --img_path "$DATA" --n 3 "${PICK_JUDGE[@]}"
fi

if [ -n "$REPORT" ] && { forced report || older "$RUN/report.md" || [ "$RUN/test_flags.json" -nt "$RUN/report.md" ]; }; then
    banner "report: held-out scores against baselines and ablations -> $RUN/report.md"
    if forced report || [ -f "$RUN/report.md" ]; then  # else an interrupted report resumes its ablations
        redo report "$RUN/report" "$RUN/report.md"
    fi
    timed report $PY tools/eval/report.py --run "$RUN" --data "$DATA" --test "$TEST" --results "$RESULTS" \
        --judge "$JUDGE/ckpt.npz" --flags "$TEST_FLAGS"
fi

if [ -n "$REPORT" ] && { forced sr_report || older "$RUN/sr_report.md" || [ "$RUN/test_flags.json" -nt "$RUN/sr_report.md" ]; }; then
    banner "sr_report: stage 3 against --sr 0 on the report half, the native measure's sanity rows -> $RUN/sr_report.md"
    timed sr_report $PY tools/eval/sr_report.py --run "$RUN" --data "$DATA" --test "$TEST" \
        --judge "$JUDGE/ckpt.npz" --judge2 "$JUDGE2/ckpt.npz"
fi

if [ -n "$REPORT" ] && { forced calls_report || older "$RUN/calls_report.md" || [ "$RUN/test_flags.json" -nt "$RUN/calls_report.md" ]; }; then
    banner "calls_report: score against UNet calls per image, teacher and distilled students -> $RUN/calls_report.md"
    timed calls_report $PY tools/eval/calls_report.py --run "$RUN" --data "$DATA" --test "$TEST" \
        --judge "$JUDGE/ckpt.npz" --judge2 "$JUDGE2/ckpt.npz"
fi

banner "done: $RUN, $RESULTS.zip${REPORT:+, $RUN/report.md, $RUN/sr_report.md, $RUN/calls_report.md}"
