#!/usr/bin/env bash
# The GPU checks of issues 8 and 9, prepared for a lent GPU machine that has no network, so that
# its few minutes go to measuring. Four modes of this script:
#
#   here, once:  bash benchmarks/gpu_session.sh fetch [UTKFACE_DIR]
#       wheels of what the GPU image lacks (hydra-core, omegaconf, antlr4, diffusers,
#       importlib_metadata) -> .whl/; with UTKFACE_DIR, a copy of those faces -> .gpu_data/utkface
#       (both git-ignored: UTKFace is never committed; it must stay under the 64 MiB a call carries)
#   there, with the device tool's run (carry [".whl", ".gpu_data"]), one after the other:
#       OUT=$OUT/bench BUDGET=240 bash benchmarks/gpu_session.sh bench
#           issue 8's GPU rows: every network interleaved; where a step's time goes
#           (benchmarks/profile_step.py); torch.compile, plain and with CUDA graphs; unet_attn
#           and the peer at a GPU-sized batch (share of peak, memory, sampling)
#       OUT=$OUT/cpu BUDGET=200 bash benchmarks/gpu_session.sh cpu
#           the machine's host CPU on 2 threads (the H100's has AMX): precision auto's choice there,
#           fp32 against bf16 autocast for unet_attn, the peer and unet at CPU_BATCH
#       OUT=$OUT/train BUDGET=330 bash benchmarks/gpu_session.sh train auto|STEPS
#           utkface64 (16-mixed, compiled with CUDA graphs: ~100 s of compiling first, then
#           18.95 steps/s on an H100, run 24) for STEPS steps (auto: from the bench's eager rate,
#           on the safe side) on the carried faces (the demo data without them), evaluate.py and
#           sample.py's gallery on its last checkpoint, and its EMA weights in fp16 as <=16 MB parts (ema_fp16.ckpt.partNN,
#           `cat` them together) for figures on a machine without a GPU
#
# Results land in $OUT (the device tool's folder; outputs/gpu_session elsewhere) as one
# results.tar.gz plus summary.md per mode, because a device call brings back at most 8 files.
# Each step runs under `timeout` so that the whole mode ends within BUDGET seconds and packs what
# it measured even when a step is cut short; training stopped by its timeout saves last.ckpt
# first (the Preemption callback's SIGTERM handling), so evaluate.py still runs.
# Every size is an environment variable (below), so the script can be tried on a CPU first:
#   SIZE=32 BATCH=4 BIG_BATCH=4 MEM_BATCH=4 REPS=1 WARMUP=0 PRECISIONS=fp32 PEAK_N=256 \
#     MODELS=unet_tiny,unet BIG_MODELS=unet_tiny VARIANTS=channels_last COMPILE=0 \
#     bash benchmarks/gpu_session.sh bench
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:?"usage: gpu_session.sh fetch [UTKFACE_DIR] | bench | cpu | train auto|STEPS"}
OUT=${OUT:-outputs/gpu_session}
WORK=outputs/gpu_session_work/$MODE
PY=${PY:-python3}
SIZE=${SIZE:-64}
BATCH=${BATCH:-32}          # the interleaved run of all four networks (original's 64x64 attention
BIG_BATCH=${BIG_BATCH:-256} # needs the memory); BIG_BATCH: unet_attn and the peer, for the peak share
MEM_BATCH=${MEM_BATCH:-32}
PEAK_N=${PEAK_N:-8192}      # matmul side for the measured peak (2048 is launch-bound on a GPU)
REPS=${REPS:-5}
WARMUP=${WARMUP:-2}
PRECISIONS=${PRECISIONS:-bf16,fp16}
MODELS=${MODELS:-unet_attn,diffusers_unet2d,original,unet}
BIG_MODELS=${BIG_MODELS:-unet_attn,diffusers_unet2d} # the first one also gets the switches
VARIANTS=${VARIANTS:-none}  # channels_last cost 20% on the H100 (run 15)
COMPILE=${COMPILE:-1}       # 1: the first big model plain, compiled and compiled with CUDA graphs
COMPILE_MODELS=${COMPILE_MODELS:-${BIG_MODELS%%,*}} # e.g. unet_attn,diffusers_unet2d: both compiled
COMPILE_VARIANTS=${COMPILE_VARIANTS:-compile,compile_graphs}
CPU_THREADS=${CPU_THREADS:-2} CPU_BATCH=${CPU_BATCH:-8} CPU_REPS=${CPU_REPS:-3}
CPU_MODELS=${CPU_MODELS:-unet_attn,diffusers_unet2d,unet}
TRAIN_OVERRIDES=${TRAIN_OVERRIDES:-} # extra Hydra overrides for `train`, e.g. trainer=cpu
EVAL_N=${EVAL_N:-300}                 # evaluate.py's samples per group after `train`
EVAL_RESERVE=${EVAL_RESERVE:-120}     # seconds of BUDGET kept for evaluate.py and packing
TRAIN_MODEL=${TRAIN_MODEL:-unet_attn} # the bench row that `train auto` plans the steps from
TRAIN_BATCH=${TRAIN_BATCH:-64}        # utkface64's batch
BUDGET=${BUDGET:-540}                 # seconds for the whole mode; steps get what is left

install_wheels() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/facediff_site .whl/*.whl
        export PYTHONPATH="/tmp/facediff_site:${PYTHONPATH:-}"
    fi
    export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
}

describe_machine() {
    {
        commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
        echo "# facediff GPU session: $MODE $(date -u +%FT%TZ), commit $commit"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null ||
            echo "no nvidia-smi"
        "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning',
lightning.__version__, 'cuda', torch.cuda.is_available())"
    } | tee "$WORK/summary.md"
}

pack() { # on every exit, a failed step included: what was measured still comes back
    mkdir -p "$OUT"
    cp "$WORK/summary.md" "$OUT/summary.md" 2>/dev/null || true
    tar -czf "$OUT/results.tar.gz" --exclude=samples.pt --exclude=ema.ckpt -C "$WORK" .
    echo "results: $OUT/results.tar.gz ($(du -h "$OUT/results.tar.gz" | cut -f1))"
}

start() {
    rm -rf "$WORK" && mkdir -p "$WORK"
    trap pack EXIT
    trap 'exit 143' TERM INT # runs the EXIT trap: what was measured is packed
    install_wheels
    describe_machine
}

left() { # seconds of BUDGET still free for the next step (at least 1)
    local rest=$((BUDGET - SECONDS))
    echo $((rest > 1 ? rest : 1))
}

case "$MODE" in
fetch)
    rm -rf .whl && mkdir -p .whl # one version of each package: two stop the install there
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl hydra-core==1.3.8 omegaconf==2.3.1 diffusers==0.42.1 \
        importlib_metadata==10.2.0 # the versions installed here
    "$PY" -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl # an sdist on PyPI
    if [ -n "${2:-}" ]; then
        mkdir -p .gpu_data && rm -rf .gpu_data/utkface && cp -r "$2" .gpu_data/utkface
    fi
    du -sh .whl
    if [ -d .gpu_data ]; then
        du -sh .gpu_data
        if (($(du -sm .gpu_data | cut -f1) > 56)); then
            echo "warning: .gpu_data is over 56 MiB; with the wheels and the code a call carries" \
                "at most 64 MiB: copy fewer faces" >&2
        fi
    fi
    ;;
bench)
    start
    # 1. every network in one interleaved run: the ratios of issue 8's targets
    timeout "$(left)" "$PY" -m benchmarks.bench --only peak,train --models "$MODELS" \
        --precisions "$PRECISIONS" --variants none --size "$SIZE" --batch "$BATCH" \
        --reps "$REPS" --warmup "$WARMUP" --peak-n "$PEAK_N" --json "$WORK/bench_all.json" 2>&1 |
        tee "$WORK/bench_all.md" || true
    FIRST=${BIG_MODELS%%,*}
    # 2. what bounds it: the step's time by kind of kernel, and the GPU's idle share
    timeout "$(left)" "$PY" -m benchmarks.profile_step --model "$FIRST" --size "$SIZE" \
        --batch "$BIG_BATCH" --precision "${PRECISIONS%%,*}" --json "$WORK/profile.json" 2>&1 |
        tee "$WORK/profile.md" || true
    # 3. torch.compile, plain and with CUDA graphs, at the interleaved run's batch, where the
    #    host bounded the step (run 15)
    if [ "$COMPILE" = 1 ]; then # two compiles: at most half of what is left, step 4 keeps the rest
        timeout "$(($(left) / 2 + 1))" "$PY" -m benchmarks.bench --only train \
            --models "$COMPILE_MODELS" --variant-models "$COMPILE_MODELS" \
            --precisions "${PRECISIONS%%,*}" --variants "$COMPILE_VARIANTS" --size "$SIZE" \
            --batch "$BATCH" --reps "$REPS" \
            --warmup "$WARMUP" --peak-n "$PEAK_N" --json "$WORK/bench_compile.json" 2>&1 |
            tee "$WORK/bench_compile.md" || true
    fi
    # 4. a GPU-sized batch: the share of peak, the switches, memory (in-process on CUDA), sampling
    timeout "$(left)" "$PY" -m benchmarks.bench --only peak,train,memory,sample \
        --models "$BIG_MODELS" --variant-models "$FIRST" --precisions "$PRECISIONS" \
        --variants "$VARIANTS" --size "$SIZE" --batch "$BIG_BATCH" --reps "$REPS" \
        --warmup "$WARMUP" --peak-n "$PEAK_N" --mem-model "$FIRST" --mem-batch "$MEM_BATCH" \
        --mem-precision "${PRECISIONS%%,*}" --sample-models "$FIRST" \
        --sample-batch "$BIG_BATCH" --json "$WORK/bench_big.json" 2>&1 |
        tee "$WORK/bench_big.md" || true
    for f in bench_all profile bench_compile bench_big; do # never summary.md: awk appends there
        if [ -f "$WORK/$f.md" ]; then
            awk '/^## /{p = /^## (Ratios|Training|Where|Peak memory|Sampling)/} p' "$WORK/$f.md" \
                >>"$WORK/summary.md"
        fi
    done
    ;;
cpu)
    start
    # the GPU machine's host CPU (on the H100 of run 15: a Xeon with AMX), on 2 threads like the
    # project's CPU target: what precision auto picks there, and fp32 against bf16 autocast
    "$PY" -c "from facediff.hardware import cpu_auto_precision, cpu_flags, cpu_model
print(cpu_model(), '-> precision auto:', *cpu_auto_precision(cpu_flags()))" 2>&1 |
        tee -a "$WORK/summary.md" || true
    timeout "$(left)" "$PY" -m benchmarks.bench --device cpu --threads "$CPU_THREADS" \
        --only peak,train --models "$CPU_MODELS" --precisions fp32,bf16 --variants none \
        --size "$SIZE" --batch "$CPU_BATCH" --reps "$CPU_REPS" --warmup 1 --peak-n 2048 \
        --json "$WORK/bench_cpu.json" 2>&1 | tee "$WORK/bench_cpu.md" || true
    if [ -f "$WORK/bench_cpu.md" ]; then
        awk '/^## /{p = /^## (Ratios|Training|Matmul)/} p' "$WORK/bench_cpu.md" >>"$WORK/summary.md"
    fi
    ;;
train)
    STEPS=${2:?"usage: gpu_session.sh train auto|STEPS"}
    if [ "$STEPS" != auto ] && { ! [[ "$STEPS" =~ ^[0-9]+$ ]] || ((STEPS < 2)); }; then
        echo "STEPS must be 'auto' or a whole number >= 2, got '$STEPS'" >&2
        exit 2
    fi
    start
    if [ -d .gpu_data/utkface ]; then DATA="data.root=.gpu_data/utkface"; else DATA="data=demo"; fi
    # utkface64 compiles its forward: first check that this torch compiles fp16 right here
    # (torch 2.14.1's CPU inductor gave NaN gradients, run 24); eager where it does not
    if ! timeout 120 "$PY" -m benchmarks.compile_check --dtype fp16 2>&1 | tail -1 |
        tee -a "$WORK/summary.md" | grep -q "agree"; then
        echo "training eager: torch.compile failed its check" | tee -a "$WORK/summary.md"
        TRAIN_OVERRIDES="$TRAIN_OVERRIDES module.compile=false"
    fi
    # what is left after the check is training's, less what evaluate.py and packing need
    TRAIN_SECONDS=$(($(left) - EVAL_RESERVE))
    if ((TRAIN_SECONDS < 60)); then
        echo "BUDGET leaves $TRAIN_SECONDS s for training after EVAL_RESERVE=$EVAL_RESERVE s:" \
            "give it at least EVAL_RESERVE + 60" >&2
        exit 2
    fi
    if [ "$STEPS" = auto ]; then # from the bench's rate (benchmarks/gpu_session.py)
        STEPS=$("$PY" -m benchmarks.gpu_session steps outputs/gpu_session_work/bench/bench_all.json \
            --model "${TRAIN_MODEL}" --seconds "$TRAIN_SECONDS" --batch "$TRAIN_BATCH")
    fi
    echo "training: $STEPS steps planned in $TRAIN_SECONDS s" | tee -a "$WORK/summary.md"
    RUN=outputs/utkface64/gpu_session
    rm -rf "$RUN"
    began=$SECONDS
    # SIGTERM at the limit: the Preemption callback saves last.ckpt at the batch end
    # shellcheck disable=SC2086  # TRAIN_OVERRIDES is a list of overrides
    timeout -k 30 "$TRAIN_SECONDS" "$PY" train.py experiment=utkface64 "$DATA" \
        run_name=gpu_session logger=csv trainer.max_steps="$STEPS" \
        trainer.val_check_interval=$((STEPS / 2)) $TRAIN_OVERRIDES 2>&1 | tee "$WORK/train.log" ||
        true
    echo "training: $((SECONDS - began)) s of wall time" | tee -a "$WORK/summary.md"
    timeout -k 10 "$(left)" "$PY" evaluate.py ckpt="$RUN/checkpoints/last.ckpt" \
        out="$WORK/evaluate" n_per_class="$EVAL_N" guidance=0.8 2>&1 |
        tee "$WORK/evaluate.log" || true
    # the README's gallery command, inside results.tar.gz (a call brings back at most 8 files:
    # 30 PNGs in $OUT would crowd out the rest, run 25)
    timeout -k 10 "$(left)" "$PY" sample.py ckpt="$RUN/checkpoints/last.ckpt" out="$WORK/gallery" \
        n_per_class=10 guidance=0.8 seed=1 2>&1 | tail -1 || true
    cp -r "$RUN/loss_curves.png" "$RUN/loss_curves.json" "$RUN/samples" "$RUN/metrics.csv" \
        "$WORK/" 2>/dev/null || true
    grep -h "steps/s" "$WORK/train.log" | tail -3 >>"$WORK/summary.md" || true
    cat "$WORK/evaluate/report.md" >>"$WORK/summary.md" 2>/dev/null || true
    # the EMA weights in fp16 (optimiser and raw weights left behind) in parts a call brings back
    if [ -f "$RUN/checkpoints/last.ckpt" ]; then
        timeout -k 10 "$(left)" "$PY" -m benchmarks.gpu_session slim \
            "$RUN/checkpoints/last.ckpt" "$WORK/ema.ckpt" &&
            mkdir -p "$OUT" && split -b 16000000 -d "$WORK/ema.ckpt" "$OUT/ema_fp16.ckpt.part" ||
            echo "no EMA parts: the slim checkpoint or its split failed" >&2
        rm -f "$WORK/ema.ckpt"
    fi
    ;;
*)
    echo "unknown mode $MODE: use fetch, bench, cpu or train" >&2
    exit 2
    ;;
esac
