#!/usr/bin/env bash
# A short GPU session (about 15 minutes of device time: one call of under ten minutes per phase) spent on what two
# CPU cores cannot do. Run from the repository root on the GPU machine:
#
#   bash bench/gpu_session.sh image [can|square] [HEADS]  # one call: latency rows of PAD, Diffusion-VLA and NavDP;
#                                     # the task's image store collected there; HEADS (default "beso carp ddpm") from
#                                     # two 84 px cameras side by side until the deadline (checkpoints every 1000
#                                     # steps); the last checkpoints evaluated there on 50 episodes each; the acting
#                                     # checkpoints back for CPU evaluations
#   bash bench/gpu_session.sh data    # latency rows (CARP engine --compile; PAD, Diffusion-VLA, NavDP), then the MT10
#                                     # image store and action-free video collected there, then PAD's autoencoder
#   bash bench/gpu_session.sh train   # PAD and its two ablations side by side, 8000 steps each (cosine schedule
#                                     # annealed to its end), four data workers each; each evaluated there on 200
#                                     # episodes and probed (vmp-bench pad-probe); then their acting checkpoints
#
# Each phase stops its trainings (SIGTERM: a checkpoint is saved) in time to finish inside DEADLINE_S seconds, and
# leaves in $OUT what comes back: records.tar.gz (results records, metrics.csv, evaluation metrics, logs) and the
# acting checkpoints (EMA weights, no optimizer state: `python -m vmp.policies.checkpoint`) in one tar split in 15 MiB
# parts, as many as fit what a device call returns (8 files, 64 MiB): `cat acting.tar.* | tar xf -` unpacks them
# (runs/acting/<run>-step_N.pt, runs/<pad run>-acting.pt); an evaluation the session had no time for runs on the CPU
# with the recipe's vmp-eval lines. `train` needs `data`'s stores and autoencoder on the same machine (right after).
#
# A machine without this project's packages installs them from .whl/ and the EGL loaders from .gl/ (both ignored by
# git; `make gpu-bundle` fills them here). SMOKE=1 rehearses a phase on the CPU in a few minutes: tiny stores, a
# few steps, the same commands.
set -uo pipefail
phase=${1:?usage: bash bench/gpu_session.sh image [can|square] [HEADS] | data | train}
TASK=${2:-can} HEADS=${3:-beso carp ddpm}
OUT=${OUT:-runs/gpu_session}
DEADLINE_S=${DEADLINE_S:-560}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python3}
start=$(date +%s)
mkdir -p "$OUT"
export MUJOCO_GL=egl PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1

left() { echo $(( DEADLINE_S - ($(date +%s) - start) )); }
say() { echo "[gpu_session $phase +$(( $(date +%s) - start ))s] $*"; }

install() {
    # the repository root holds a folder named vmp/ (the package's top level only): with the root first on sys.path,
    # `python -m vmp.sim...` would find that instead of the installed package, so the root stays off it
    export PYTHONSAFEPATH=1
    if [ -d .gl ] && ! ldconfig -p | grep -q libEGL.so.1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
    fi
    local vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json  # the driver's EGL, when glvnd misses it
    if [ -f "$vendor" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor; fi
    if [ -d /tmp/site/vmp ]; then export PYTHONPATH=/tmp/site; fi  # installed by the first phase on this machine
    if ! "$PY" -c "import vmp.policies, mujoco, metaworld, robosuite, zarr, hydra, diffusers" 2>/dev/null; then
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
    N_EVAL=2; W_EVAL=1; EVAL_S=120; PROBE_WINDOWS=8
    EXTRA="training.val_every=2 training.log_every=1"; PAD_EXTRA="policy.width=32 policy.depth=1"; COMPILE=""
    N_IMG=3; W_IMG=1; IMG_STEPS=6; KEEP=2; TOK_STEPS=4; TOK_S=200; IMG_EVAL=2; IMG_EVAL_S=120; IMG_W_EVAL=1
else
    ROOT=""
    DEV=cuda; N_MT=500; N_VIDEO=200; W_MT=11; W_VIDEO=4; VAE_STEPS=6000; PAD_STEPS=8000; BATCH=128; WORKERS=4; REPEATS=50
    N_EVAL=200; W_EVAL=5; EVAL_S=150; PROBE_WINDOWS=512
    EXTRA=""; PAD_EXTRA=""; COMPILE="--compile"
    N_IMG=200; W_IMG=14; IMG_STEPS=10000; KEEP=1000; TOK_STEPS=3000; TOK_S=150; IMG_EVAL=50; IMG_EVAL_S=170
    IMG_W_EVAL=14
fi
STORES=${ROOT}stores RUNS=${ROOT}runs REC=${ROOT}runs/gpu_session_records LOGS=${ROOT}logs
mkdir -p "$LOGS"
MT="task=metaworld_mt store=$STORES/metaworld_mt.zarr device=$DEV training.batch_size=$BATCH"

# a training stopped at the deadline keeps its last checkpoint (SIGTERM saves one); the run's log says where it stopped
train() {  # train <seconds> <log> <overrides...>
    local limit=$1 logf=$2; shift 2
    # `timeout 0` would mean no limit at all: a training whose turn comes after the deadline does not start
    (( limit > 0 )) || { say "$(basename "$logf" .log): no time left, not started"; return; }
    timeout --signal=TERM --kill-after=30 "$limit" "$PY" -m vmp.policies.train "$@" > "$logf" 2>&1
    say "$(basename "$logf" .log): exit $? ($(grep -o 'done: [0-9]* steps' "$logf" || grep -o 'interrupted at step [0-9]*' "$logf" || echo failed))"
}

pack() {  # records first; then acting checkpoints (cat acting.tar.* > acting.tar), as many as 8 files / 60 MiB hold
    tar czf "$OUT/records.tar.gz" --ignore-failed-read $LOGS/gpu_*.log "$REC" "$RUNS"/*-gpu/metrics.csv \
        "$RUNS"/metaworld_mt-pad*/metrics.csv "$RUNS"/metaworld_mt-pad*/eval/metrics.json 2>/dev/null
    local bytes=$(stat -c %s "$OUT/records.tar.gz") kept=()
    for ckpt in "$@"; do  # in order of value: the first that would overflow stays behind, and those after it
        [ -f "$ckpt" ] || continue
        (( bytes + $(stat -c %s "$ckpt") > 60000000 )) && { say "$ckpt and those after it stay behind (no room)"; break; }
        kept+=("$ckpt"); bytes=$(( bytes + $(stat -c %s "$ckpt") ))
    done
    if (( ${#kept[@]} )); then
        tar cf "$OUT/acting.tar" "${kept[@]}" && split -b 15M -d -a 1 "$OUT/acting.tar" "$OUT/acting.tar." \
            && rm "$OUT/acting.tar"
    fi
    ls -la "$OUT"
}

acting() {  # acting <checkpoint> <dst>: the EMA weights alone, what an evaluation on the CPU needs
    [ -f "$1" ] && "$PY" -m vmp.policies.checkpoint "$1" "$2" > /dev/null && echo "$2"
}

install
case $phase in
image)  # robomimic Can or Square from two 84 px cameras (bench/recipes.py robomimic_image_gpu), until the deadline
    case $TASK in can|square) ;; *) echo "image: task must be can or square, not $TASK"; exit 2 ;; esac
    for head in $HEADS; do
        case $head in beso|carp|ddpm) ;; *) echo "image: heads are beso, carp, ddpm; not $head"; exit 2 ;; esac
    done
    if [ "${LATENCY:-1}" = 1 ]; then  # LATENCY=0: skip them (measured once already), more minutes for training
        timeout 75 "$PY" -m vmp.bench.cli latency --device "$DEV" --heads pad divla navdp --repeats "$REPEATS" \
            --out-dir "$REC" > $LOGS/gpu_latency.log 2>&1; say "latency pad/divla/navdp: exit $?"
    fi
    "$PY" -m vmp.sim.collect task=${TASK}_image n_episodes=$N_IMG action_noise=0.1 steps_after_success=10 \
        n_workers=$W_IMG out=$STORES/${TASK}_image_dart.zarr append=true > $LOGS/gpu_collect_$TASK.log 2>&1
    say "collected: $(tail -n 1 $LOGS/gpu_collect_$TASK.log | cut -c1-160)"
    DATA="task=${TASK}_image store=$STORES/${TASK}_image_dart.zarr device=$DEV training.num_workers=$WORKERS"
    DATA="$DATA resume=true $EXTRA"
    POLICY="$DATA encoder=compact_cnn training.batch_size=$BATCH training.steps=$IMG_STEPS training.keep_every=$KEEP"
    end=$(( start + DEADLINE_S - IMG_EVAL_S - 30 ))  # then the acting checkpoints, evaluations, bundle
    say "$HEADS (CARP's tokenizer first) until +$(( end - start ))s"
    for head in $HEADS; do
        run=$RUNS/${TASK}_image-$head-gpu
        if [ $head = carp ]; then
            (train $TOK_S $LOGS/gpu_${TASK}_carp_tokenizer.log $DATA policy=carp_tokenizer training.steps=$TOK_STEPS \
                 training.lr=1e-3 training.warmup_steps=200 run_dir=$RUNS/${TASK}_image-carp_tokenizer-gpu
             train $(( end - $(date +%s) )) $LOGS/gpu_${TASK}_carp.log $POLICY policy=carp \
                 policy.tokenizer_checkpoint=$RUNS/${TASK}_image-carp_tokenizer-gpu/checkpoints/latest.pt \
                 run_dir=$run) &
        else
            train $(( end - $(date +%s) )) $LOGS/gpu_${TASK}_$head.log $POLICY policy=$head run_dir=$run &
        fi
    done
    wait
    mkdir -p $RUNS/acting
    ordered=()  # what comes back for CPU evaluations: the newest checkpoint of each head, then the one before, ...
    for rank in 1 2 3; do
        for head in $HEADS; do
            ckpt=$(ls $RUNS/${TASK}_image-$head-gpu/checkpoints/step_*.pt 2>/dev/null | sort -r | sed -n ${rank}p)
            [ -n "$ckpt" ] && ordered+=("$(acting "$ckpt" "$RUNS/acting/${TASK}_image-$head-gpu-$(basename "$ckpt")")")
        done
    done
    # the newest kept checkpoint of each head, 50 episodes on the CPU cores here (the recipe's variants); the others
    # are evaluated on the CPU at home (six evaluations at once did not finish in 150 s)
    n_heads=$(wc -w <<< "$HEADS"); workers=$(( (IMG_W_EVAL + n_heads - 1) / n_heads ))  # the cores, shared
    for head in $HEADS; do
        ckpt=$(ls $RUNS/${TASK}_image-$head-gpu/checkpoints/step_*.pt 2>/dev/null | sort -r | head -n 1)
        [ -n "$ckpt" ] || continue
        step=$(basename "$ckpt" .pt | sed 's/step_0*//')
        setting=$("$PY" -c "from vmp.bench.recipes import IMAGE_SETTINGS; print(IMAGE_SETTINGS['$head'])")
        OMP_NUM_THREADS=1 timeout $(( start + DEADLINE_S - 25 - $(date +%s) )) "$PY" -m vmp.sim.evaluate \
            checkpoint=$ckpt n_episodes=$IMG_EVAL n_workers=$workers n_videos=0 device=cpu \
            out_dir=$RUNS/${TASK}_image-$head-gpu/eval_step$step \
            "variant=\"$setting; compact CNN, 2 x 84 px cameras (GPU); seed 0, step $step of $IMG_STEPS\"" \
            results_json=$REC/success_${TASK}_image_${head}_gpu_seed0_step$step.json \
            > $LOGS/gpu_eval_${TASK}_${head}_$step.log 2>&1 &
    done
    wait; say "evaluated: $(grep -ho 'success [0-9.]*' $LOGS/gpu_eval_${TASK}_*.log | tr '\n' ' ')"
    pack "${ordered[@]}"
    say "done"; exit 0
    ;;
data)
    say "latency rows"
    "$PY" -m vmp.bench.cli latency --device "$DEV" --engine $COMPILE --heads carp --repeats "$REPEATS" --out-dir "$REC" \
        > $LOGS/gpu_latency_compile.log 2>&1; say "carp --compile: exit $?"
    "$PY" -m vmp.bench.cli latency --device "$DEV" --heads pad divla navdp --repeats "$REPEATS" --out-dir "$REC" \
        > $LOGS/gpu_latency.log 2>&1; say "pad/divla/navdp: exit $?"
    "$PY" -m vmp.bench.cli latency --device "$DEV" --engine --heads pad divla navdp --repeats "$REPEATS" \
        --out-dir "$REC" \
        > $LOGS/gpu_latency_engine.log 2>&1; say "pad/divla/navdp engine: exit $?"
    say "collecting (${N_MT} + ${N_VIDEO} episodes)"
    "$PY" -m vmp.sim.collect task=metaworld_mt n_episodes=$N_MT action_noise=0.1 n_workers=$W_MT \
        out=$STORES/metaworld_mt.zarr append=true > $LOGS/gpu_collect_mt.log 2>&1 &
    "$PY" -m vmp.sim.collect task=metaworld_video n_episodes=$N_VIDEO action_free=true n_workers=$W_VIDEO \
        out=$STORES/metaworld_video.zarr append=true > $LOGS/gpu_collect_video.log 2>&1 &
    wait; say "collected: $(tail -n 1 $LOGS/gpu_collect_mt.log | cut -c1-160)"
    train $(( $(left) - 20 )) $LOGS/gpu_pad_vae.log $MT policy=pad_vae training.steps=$VAE_STEPS training.lr=5e-4 \
        training.num_workers=$WORKERS run_dir=$RUNS/metaworld_mt-pad_vae resume=true $EXTRA
    ;;
train)
    [ -f $RUNS/metaworld_mt-pad_vae/checkpoints/latest.pt ] || { echo "no autoencoder: run the data phase first"; exit 2; }
    PAD="$MT policy=pad policy.vae=$RUNS/metaworld_mt-pad_vae training.steps=$PAD_STEPS training.num_workers=$WORKERS resume=true $EXTRA $PAD_EXTRA"
    limit=$(( $(left) - EVAL_S - 90 ))  # then the evaluations, the probes, the acting checkpoints and the bundle
    say "three PAD runs, ${limit}s at most"
    train $limit $LOGS/gpu_pad.log $PAD run_dir=$RUNS/metaworld_mt-pad \
        "mix=[{store: $STORES/metaworld_video.zarr, weight: 0.5}]" &
    train $limit $LOGS/gpu_pad_novideo.log $PAD run_dir=$RUNS/metaworld_mt-pad-novideo &
    train $limit $LOGS/gpu_pad_nofuture.log $PAD policy.predict_future=false run_dir=$RUNS/metaworld_mt-pad-nofuture &
    wait
    # evaluated here while the GPU is held (the records come back whatever the checkpoints' size), 5 workers each
    for run in pad pad-novideo pad-nofuture; do
        [ -f $RUNS/metaworld_mt-$run/checkpoints/latest.pt ] || continue
        steps=$(grep -o 'done: [0-9]*\|interrupted at step [0-9]*' $LOGS/gpu_${run//-/_}.log | grep -o '[0-9]*$')
        timeout $(( $(left) - 50 )) "$PY" -m vmp.sim.evaluate checkpoint=$RUNS/metaworld_mt-$run n_episodes=$N_EVAL \
            n_workers=$W_EVAL n_videos=0 device=$DEV out_dir=$RUNS/metaworld_mt-$run/eval \
            "variant=\"10-step DDIM; $run, ${steps} of $PAD_STEPS steps ($DEV)\"" \
            results_json=$REC/success_metaworld_mt_image_${run//-/_}_cuda.json > $LOGS/gpu_eval_$run.log 2>&1 &
    done
    wait; say "evaluated: $(grep -ho 'success [0-9.]*' $LOGS/gpu_eval_*.log | tr '\n' ' ')"
    # whether the actions use the predicted future (vmp-bench pad-probe, held-out windows): a few seconds each here
    probe_s=$(( $(left) - 40 ))
    for run in pad pad-novideo pad-nofuture; do
        [ -f $RUNS/metaworld_mt-$run/checkpoints/latest.pt ] && (( probe_s > 0 )) || continue
        timeout $probe_s "$PY" -m vmp.bench.cli pad-probe --checkpoint $RUNS/metaworld_mt-$run \
            --store $STORES/metaworld_mt.zarr --windows $PROBE_WINDOWS --device $DEV --out-dir $REC \
            > $LOGS/gpu_probe_$run.log 2>&1 &
    done
    wait; say "probed: $(grep -ho 'action MSE own [0-9.]*, real_future [0-9.]*' $LOGS/gpu_probe_*.log | tr '\n' ' ')"
    for run in pad pad-novideo pad-nofuture; do
        [ -f $RUNS/metaworld_mt-$run/checkpoints/latest.pt ] && \
            "$PY" -m vmp.policies.checkpoint $RUNS/metaworld_mt-$run "$RUNS/$run-acting.pt"
    done
    ;;
*) echo "unknown phase $phase: image, data or train"; exit 2 ;;
esac
pack $RUNS/{pad,pad-nofuture,pad-novideo}-acting.pt
say "done"
