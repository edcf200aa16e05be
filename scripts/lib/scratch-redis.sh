# shellcheck shell=bash
# A scratch redis-server for the bench scripts: on a free loopback port, no persistence,
# its data in a temporary directory. Source this file, call scratch_redis_start (sets
# SCRATCH_REDIS_PORT and SCRATCH_REDIS_PID) and `trap scratch_redis_stop EXIT`: the
# server this started is always stopped, whatever the script's exit.

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
    echo "scratch redis-server did not start (log: $SCRATCH_REDIS_DIR/redis.log)" >&2
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
