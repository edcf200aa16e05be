# shellcheck shell=bash
# A scratch redis-server for the bench scripts: on a free loopback port, no persistence,
# its data in a temporary directory. Source this file, set `trap scratch_redis_stop EXIT`
# (before starting, so an interrupted start is cleaned up too), then call
# scratch_redis_start (sets SCRATCH_REDIS_PORT and SCRATCH_REDIS_PID): the server this
# started is always stopped and its directory removed, whatever the script's exit.

scratch_redis_start() {
    SCRATCH_REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-redis.XXXXXX")
    local port attempt
    for attempt in $(seq 1 20); do
        port=$((20000 + RANDOM % 30000))
        # A port something already answers on is taken.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$SCRATCH_REDIS_DIR" --logfile "$SCRATCH_REDIS_DIR/redis.log" &
        SCRATCH_REDIS_PID=$!
        local tries
        for tries in $(seq 1 100); do
            if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
                SCRATCH_REDIS_PORT=$port
                export SCRATCH_REDIS_PORT SCRATCH_REDIS_PID
                return 0
            fi
            kill -0 "$SCRATCH_REDIS_PID" 2>/dev/null || break
            sleep 0.05
        done
        # Lost the port to another process, or the server did not come up: try another.
        kill "$SCRATCH_REDIS_PID" 2>/dev/null || true
        wait "$SCRATCH_REDIS_PID" 2>/dev/null || true
        unset SCRATCH_REDIS_PID
    done
    echo "scratch redis-server did not start; its log:" >&2
    tail -n 20 "$SCRATCH_REDIS_DIR/redis.log" >&2 2>/dev/null || true
    rm -rf "$SCRATCH_REDIS_DIR"
    unset SCRATCH_REDIS_DIR
    return 1
}

scratch_redis_stop() {
    if [[ -n "${SCRATCH_REDIS_PID:-}" ]]; then
        kill "$SCRATCH_REDIS_PID" 2>/dev/null || true
        wait "$SCRATCH_REDIS_PID" 2>/dev/null || true
        unset SCRATCH_REDIS_PID
    fi
    if [[ -n "${SCRATCH_REDIS_DIR:-}" ]]; then
        rm -rf "$SCRATCH_REDIS_DIR"
        unset SCRATCH_REDIS_DIR
    fi
}

# The load average (1, 5, 15 min) from /proc/loadavg, which needs no procps.
load_average() {
    local one five fifteen _
    read -r one five fifteen _ </proc/loadavg
    echo "load average: $one, $five, $fifteen"
}

# bench_child_run OUT CMD…: runs CMD in the background with stdout to OUT, recording
# its pid in BENCH_CHILD_PID so a trap can stop it (`bench_child_stop`), and returns
# its exit status. A signal to the script interrupts the wait and runs its traps.
bench_child_run() {
    local out=$1 status=0
    shift
    "$@" >"$out" &
    BENCH_CHILD_PID=$!
    wait "$BENCH_CHILD_PID" || status=$?
    unset BENCH_CHILD_PID
    return "$status"
}

# Stops the command bench_child_run is running, if any (SIGTERM, then waits for it:
# `sluice bench` stops its workers before it exits).
bench_child_stop() {
    if [[ -n "${BENCH_CHILD_PID:-}" ]]; then
        kill -TERM "$BENCH_CHILD_PID" 2>/dev/null || true
        wait "$BENCH_CHILD_PID" 2>/dev/null || true
        unset BENCH_CHILD_PID
    fi
}
