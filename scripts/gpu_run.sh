#!/usr/bin/env bash
# The GPU run of the pretrained pipeline, as the device machine runs it (docs/pretrained.md).
#
#   bash scripts/gpu_run.sh prepare # here, on the CPU: the carried folders, and their size
#   bash scripts/gpu_run.sh check   # there: CUDA test group + a 45 s cohort smoke run (<3 min)
#   bash scripts/gpu_run.sh train   # there: all six archs, time-boxed ($MINUTES, 7.5), into $OUT
#
# A 15-minute lease: machine start (1-2 min) + check (<3) + train (7.5 + ~0.5 transfer), then
# give_back at once.
#
# Arguments after the mode go to scripts/train_pretrained.py (a CPU rehearsal: `train --device
# cpu --width tiny --workers 2 --batch-size 8` with MINUTES=1).
# It runs from a copy of the working tree with PYTHONPATH=. (no install, no package index) and
# expects two carried, git-ignored folders: carry/photos (`deblur data pack carry/photos`) and
# .whl (pure-Python wheels of pytest and its dependencies, imported straight from the .whl).
# Results go to $OUT (what the device tool brings back: at most 8 files of 16 MiB).
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-7.5}
PY=${PY:-$(command -v python3 || command -v python)}
wheels=$(ls .whl/*.whl 2>/dev/null | tr '\n' ':')
export PYTHONPATH=".:${wheels}"
# Loader workers do their own parallel work; nested BLAS/OpenMP pools would only contend.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

mode=${1:-}
shift || true
case "$mode" in
prepare)
    # The photo pool (Debian packages and wheels), packed; pytest for the CUDA test group.
    "$PY" -m deblurcli data fetch && "$PY" -m deblurcli data prepare &&
        "$PY" -m deblurcli data pack carry/photos || exit 1
    "$PY" -m pip download -q --no-deps -d .whl pytest pluggy iniconfig pygments packaging || exit 1
    tree=$(git ls-files -co --exclude-standard -z | xargs -0 cat | wc -c)
    carried=$(cat carry/photos/*/* .whl/*.whl | wc -c)
    echo "working tree $((tree / 1048576)) MiB + carried $((carried / 1048576)) MiB" \
        "= $(((tree + carried) / 1048576)) MiB (limit 64 MiB); carry: [\"carry\", \".whl\"]"
    [ $((tree + carried)) -le $((64 * 1048576)) ]
    ;;
check)
    OUT=${OUT:?set OUT to the folder that comes back}
    "$PY" -c 'import torch, deblurcli; print("torch", torch.__version__, "cuda",
        torch.cuda.is_available() and torch.cuda.get_device_name(), "deblurcli", deblurcli.__file__)'
    timeout 110 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_cuda.py 2>&1 \
        | tee "$OUT/cuda_tests.txt" | tail -40
    # The real cohort for at most 45 s: GPU rounds/s, loader-wait share and patches/s per model.
    timeout 75 "$PY" scripts/train_pretrained.py --minutes 0.75 --max-rounds 200 --device cuda \
        --photos carry/photos --checkpoint-minutes 0.3 --out /tmp/smoke --runs /tmp/smoke_runs \
        "$@" >/dev/null 2>&1
    echo "smoke run exit $?"
    cp /tmp/smoke/train.log "$OUT/smoke_train.log" 2>/dev/null && tail -12 "$OUT/smoke_train.log"
    ;;
train)
    OUT=${OUT:?set OUT to the folder that comes back}
    "$PY" scripts/train_pretrained.py --minutes "$MINUTES" --device cuda \
        --photos carry/photos --runs /tmp/runs --out "$OUT" "$@" 2>&1 | tail -40
    ;;
*)
    echo "usage: bash scripts/gpu_run.sh prepare | OUT=DIR bash scripts/gpu_run.sh check|train" >&2
    exit 2
    ;;
esac
