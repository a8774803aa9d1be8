#!/usr/bin/env bash
# A short GPU session (about 15 minutes of device time, two calls) spent on what two CPU cores cannot do, most
# valuable first. Run from the repository root on the GPU machine:
#
#   bash bench/gpu_session.sh data    # latency rows (CARP engine --compile; PAD, Diffusion-VLA, NavDP), then the MT10
#                                     # image store and action-free video collected there, then PAD's autoencoder
#   bash bench/gpu_session.sh train   # PAD and its two ablations side by side, 8000 steps each (cosine schedule
#                                     # annealed to its end), four data workers each; each evaluated there on 200
#                                     # episodes; then their acting checkpoints
#
# Each phase stops its trainings (SIGTERM: a checkpoint is saved) in time to finish inside DEADLINE_S seconds, and
# leaves in $OUT what comes back: records.tar.gz (results records, metrics.csv, evaluation metrics, logs) and the
# acting checkpoints (EMA weights, no optimizer state: `python -m vmp.policies.checkpoint`) in 15 MiB parts, as many
# as fit what a device call returns (8 files, 64 MiB). Put one together with `cat pad.pt.* > pad.pt`; an evaluation
# the session had no time for runs on the CPU: the metaworld_mt recipe's vmp-eval lines with checkpoint=pad.pt.
# The second phase needs the first's stores and autoencoder on the same machine (run it right after).
#
# A machine without this project's packages installs them from .whl/ and the EGL loaders from .gl/ (both ignored by
# git; `make gpu-bundle` fills them here). SMOKE=1 rehearses both phases on the CPU in a minute or two: tiny stores,
# a few steps, the same commands.
set -uo pipefail
phase=${1:?usage: bash bench/gpu_session.sh data|train}
OUT=${OUT:-runs/gpu_session}
DEADLINE_S=${DEADLINE_S:-560}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python3}
start=$(date +%s)
mkdir -p "$OUT" logs
export MUJOCO_GL=egl PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1

left() { echo $(( DEADLINE_S - ($(date +%s) - start) )); }
say() { echo "[gpu_session $phase +$(( $(date +%s) - start ))s] $*"; }

install() {
    if [ -d .gl ] && ! ldconfig -p | grep -q libEGL.so.1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
    fi
    local vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json  # the driver's EGL, when glvnd misses it
    if [ -f "$vendor" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor; fi
    if [ -d /tmp/site/vmp ]; then export PYTHONPATH=/tmp/site; fi  # installed by the first phase on this machine
    if ! "$PY" -c "import vmp.policies, mujoco, metaworld, zarr, hydra, diffusers" 2>/dev/null; then
        [ -d .whl ] || { echo "no vmp here and no .whl/ to install it from (make gpu-bundle)"; exit 2; }
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && PYTHONPATH=/tmp/site "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . \
            || exit 2
        export PYTHONPATH=/tmp/site
    fi
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
}

if [ "$SMOKE" = 1 ]; then  # everything under runs/gpu_smoke: no store, run or record of the real session touched
    ROOT=runs/gpu_smoke/; OUT=${ROOT}out; mkdir -p "$OUT"
    DEV=cpu; N_MT=4; N_VIDEO=2; W_MT=2; W_VIDEO=1; VAE_STEPS=4; PAD_STEPS=4; BATCH=8; WORKERS=0; REPEATS=2
    N_EVAL=2; W_EVAL=1; EVAL_S=120
    EXTRA="training.val_every=2 training.log_every=1"; PAD_EXTRA="policy.width=32 policy.depth=1"; COMPILE=""
else
    ROOT=""
    DEV=cuda; N_MT=500; N_VIDEO=200; W_MT=11; W_VIDEO=4; VAE_STEPS=6000; PAD_STEPS=8000; BATCH=128; WORKERS=4; REPEATS=50
    N_EVAL=200; W_EVAL=5; EVAL_S=150
    EXTRA=""; PAD_EXTRA=""; COMPILE="--compile"
fi
STORES=${ROOT}stores RUNS=${ROOT}runs REC=${ROOT}runs/gpu_session_records
MT="task=metaworld_mt store=$STORES/metaworld_mt.zarr device=$DEV training.batch_size=$BATCH"

# a training stopped at the deadline keeps its last checkpoint (SIGTERM saves one); the run's log says where it stopped
train() {  # train <seconds> <log> <overrides...>
    local limit=$1 logf=$2; shift 2
    timeout --signal=TERM --kill-after=30 "$limit" "$PY" -m vmp.policies.train "$@" > "$logf" 2>&1
    say "$(basename "$logf" .log): exit $? ($(grep -o 'done: [0-9]* steps' "$logf" || grep -o 'interrupted at step [0-9]*' "$logf" || echo failed))"
}

pack() {  # records first; then acting checkpoints in 15 MiB parts (cat NAME.pt.* > NAME.pt), while 8 files / 60 MiB hold
    tar czf "$OUT/records.tar.gz" --ignore-failed-read logs/gpu_*.log "$REC" "$RUNS"/metaworld_mt-pad*/metrics.csv \
        "$RUNS"/metaworld_mt-pad*/eval/metrics.json 2>/dev/null
    local files=1 bytes=$(stat -c %s "$OUT/records.tar.gz")
    for run in pad pad-nofuture pad-novideo; do
        local ckpt=$RUNS/$run-acting.pt
        [ -f "$ckpt" ] || continue
        local size=$(stat -c %s "$ckpt") parts=$(( ($(stat -c %s "$ckpt") + 15728639) / 15728640 ))
        if (( files + parts > 8 || bytes + size > 62914560 )); then say "$run.pt stays behind (no room)"; continue; fi
        split -b 15M -d -a 1 "$ckpt" "$OUT/$run.pt."
        files=$(( files + parts )); bytes=$(( bytes + size ))
    done
    ls -la "$OUT"
}

install
case $phase in
data)
    say "latency rows"
    "$PY" -m vmp.bench.cli latency --device "$DEV" --engine $COMPILE --heads carp --repeats "$REPEATS" --out-dir "$REC" \
        > logs/gpu_latency_compile.log 2>&1; say "carp --compile: exit $?"
    "$PY" -m vmp.bench.cli latency --device "$DEV" --heads pad divla navdp --repeats "$REPEATS" --out-dir "$REC" \
        > logs/gpu_latency.log 2>&1; say "pad/divla/navdp: exit $?"
    "$PY" -m vmp.bench.cli latency --device "$DEV" --engine --heads pad divla navdp --repeats "$REPEATS" \
        --out-dir "$REC" \
        > logs/gpu_latency_engine.log 2>&1; say "pad/divla/navdp engine: exit $?"
    say "collecting (${N_MT} + ${N_VIDEO} episodes)"
    "$PY" -m vmp.sim.collect task=metaworld_mt n_episodes=$N_MT action_noise=0.1 n_workers=$W_MT \
        out=$STORES/metaworld_mt.zarr append=true > logs/gpu_collect_mt.log 2>&1 &
    "$PY" -m vmp.sim.collect task=metaworld_video n_episodes=$N_VIDEO action_free=true n_workers=$W_VIDEO \
        out=$STORES/metaworld_video.zarr append=true > logs/gpu_collect_video.log 2>&1 &
    wait; say "collected: $(tail -n 1 logs/gpu_collect_mt.log | cut -c1-160)"
    train $(( $(left) - 20 )) logs/gpu_pad_vae.log $MT policy=pad_vae training.steps=$VAE_STEPS training.lr=5e-4 \
        training.num_workers=$WORKERS run_dir=$RUNS/metaworld_mt-pad_vae resume=true $EXTRA
    ;;
train)
    [ -f $RUNS/metaworld_mt-pad_vae/checkpoints/latest.pt ] || { echo "no autoencoder: run the data phase first"; exit 2; }
    PAD="$MT policy=pad policy.vae=$RUNS/metaworld_mt-pad_vae training.steps=$PAD_STEPS training.num_workers=$WORKERS resume=true $EXTRA $PAD_EXTRA"
    limit=$(( $(left) - EVAL_S - 60 ))  # then the evaluations, the acting checkpoints and the bundle
    say "three PAD runs, ${limit}s at most"
    train $limit logs/gpu_pad.log $PAD run_dir=$RUNS/metaworld_mt-pad \
        "mix=[{store: $STORES/metaworld_video.zarr, weight: 0.5}]" &
    train $limit logs/gpu_pad_novideo.log $PAD run_dir=$RUNS/metaworld_mt-pad-novideo &
    train $limit logs/gpu_pad_nofuture.log $PAD policy.predict_future=false run_dir=$RUNS/metaworld_mt-pad-nofuture &
    wait
    # evaluated here while the GPU is held (the records come back whatever the checkpoints' size), 5 workers each
    for run in pad pad-novideo pad-nofuture; do
        [ -f $RUNS/metaworld_mt-$run/checkpoints/latest.pt ] || continue
        steps=$(grep -o 'done: [0-9]*\|interrupted at step [0-9]*' logs/gpu_${run//-/_}.log | grep -o '[0-9]*$')
        timeout $(( $(left) - 50 )) "$PY" -m vmp.sim.evaluate checkpoint=$RUNS/metaworld_mt-$run n_episodes=$N_EVAL \
            n_workers=$W_EVAL n_videos=0 device=$DEV out_dir=$RUNS/metaworld_mt-$run/eval \
            "variant=\"10-step DDIM; $run, ${steps} of $PAD_STEPS steps ($DEV)\"" \
            results_json=$REC/success_metaworld_mt_image_${run//-/_}_cuda.json > logs/gpu_eval_$run.log 2>&1 &
    done
    wait; say "evaluated: $(grep -ho 'success [0-9.]*' logs/gpu_eval_*.log | tr '\n' ' ')"
    for run in pad pad-novideo pad-nofuture; do
        [ -f $RUNS/metaworld_mt-$run/checkpoints/latest.pt ] && \
            "$PY" -m vmp.policies.checkpoint $RUNS/metaworld_mt-$run "$RUNS/$run-acting.pt"
    done
    ;;
*) echo "unknown phase $phase: data or train"; exit 2 ;;
esac
pack
say "done"
