# Sourced by benchmarks/gpu_reproduce.sh, gpu_recipe.sh and gpu_ablate.sh (set NAME first): the machine's own python3
# with torchclr from src/, $OUT and $WORK, one-line reports of failed steps, a deadline that keeps every script
# inside one 10-minute GPU call, the DATA check, and the toy subset of SMOKE=1.
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/$NAME}
SMOKE=${SMOKE:-0}
DEADLINE_S=${DEADLINE_S:-$([ "$SMOKE" = 1 ] && echo 3000 || echo 570)}  # toy runs on a busy CPU may take long
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d "/tmp/$NAME.XXXXXX")}
mkdir -p "$WORK"
LOG="$OUT/$NAME.log"
: >"$LOG"
HELPER=(benchmarks/gpu_reproduce.py)
steps=()

say() { echo "$NAME: $*" | tee -a "$LOG"; }

# run_step NAME SECONDS CMD...: the command's output goes to the screen and the log; a failure is one line with the
# exit code and the command's last line (for a GPU out of memory: torch's OutOfMemoryError line).
run_step() {
    local name=$1 limit=$2; shift 2
    local step_log="$WORK/$name.log"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee "$step_log" | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    steps+=("$name=$rc")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        say "$name stopped at the deadline after ${limit} s (exit $rc)"
    elif [ "$rc" != 0 ]; then
        say "$name failed (exit $rc): $(grep -v '^\s*$' "$step_log" | tail -n 1)"
    fi
    return "$rc"
}

seconds_left() { local left=$((DEADLINE_S - SECONDS)); echo $((left > 10 ? left : 10)); }

# check_data: one line and a failed 'data' step when DATA is unset or names nothing; else 0.
check_data() {
    if [ -z "${DATA:-}" ]; then
        say "DATA is not set: give the CIFAR-10 zip, e.g. DATA=.data/cifar10-jpeg.zip (docs/gpu.md); nothing to train"
    elif [ "$DATA" != sample ] && [ ! -f "$DATA" ] && [ ! -d "$DATA" ]; then
        say "DATA=$DATA is not a file or folder: nothing to train (docs/gpu.md: copy the zip into a git-ignored folder and carry it)"
    else
        return 0
    fi
    steps+=("data=2")
    return 2
}

# smoke_subset: with SMOKE=1, sets train_data to a folder of 100 training and 50 test images of DATA; else to DATA.
smoke_subset() {
    train_data=$DATA
    if [ "$SMOKE" = 1 ]; then
        run_step subset "$(seconds_left)" "$PYTHON" "${HELPER[@]}" subset "$DATA" "$WORK/subset" --train 100 --test 50 \
            || return 1
        train_data=$(tail -n 1 "$WORK/subset.log")  # the subset's folder
    fi
}

# finish: the exit status, 1 when any step failed.
finish() {
    local failed
    failed=$(printf '%s\n' "${steps[@]}" | grep -cv '=0$')
    say "done in $SECONDS s, $failed step(s) failed; results in $OUT"
    [ "$failed" = 0 ]
}
