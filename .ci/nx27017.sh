# Sourced by .ci/run: installs nx-27017 (a MongoDB wire-protocol server on
# SQLite, from PyPI) into a virtual environment, starts it on a free loopback
# port with its data in a temporary folder, and exports what the MongoDB
# integration tests read:
#   KVS_TEST_MONGODB_URI  the server's URI
#   KVS_TEST_NX27017      the nx-27017 program (the down-then-up test starts its own)
# The server is stopped when the sourcing shell exits. Any failure exits
# non-zero: CI must not run without the MongoDB tests.

NX27017_VERSION="0.8.1"
NX27017_VENV="${NX27017_VENV:-target/ci-venv}"

start_nx27017() {
    if ! "$NX27017_VENV/bin/nx-27017" --help >/dev/null 2>&1; then
        echo "installing nx-27017 $NX27017_VERSION into $NX27017_VENV"
        python3 -m venv "$NX27017_VENV"
        "$NX27017_VENV/bin/pip" install --quiet --disable-pip-version-check "nx-27017==$NX27017_VERSION"
    fi
    NX27017_DIR="$(mktemp -d -t kvs-ci-nx27017-XXXXXX)"
    local port
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # --data-dir: one SQLite file per database. With a single --db file every
    # database would share one namespace, and the nodes would see each other's keys.
    "$NX27017_VENV/bin/nx-27017" --host 127.0.0.1 -p "$port" --data-dir "$NX27017_DIR/data" \
        --log-file "$NX27017_DIR/server.log" --pid-file "$NX27017_DIR/server.pid" \
        >"$NX27017_DIR/output.log" 2>&1 &
    NX27017_PID=$!
    trap stop_nx27017 EXIT
    local waited=0
    until python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do
        if ! kill -0 "$NX27017_PID" 2>/dev/null || [ "$waited" -ge 300 ]; then
            echo "nx-27017 did not start listening on 127.0.0.1:$port within 30 s:" >&2
            cat "$NX27017_DIR/output.log" >&2 || true
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    export KVS_TEST_MONGODB_URI="mongodb://127.0.0.1:$port"
    KVS_TEST_NX27017="$(cd "$NX27017_VENV/bin" && pwd)/nx-27017"
    export KVS_TEST_NX27017
    echo "nx-27017 $NX27017_VERSION listens at $KVS_TEST_MONGODB_URI (pid $NX27017_PID, data in $NX27017_DIR)"
}

stop_nx27017() {
    if [ -n "${NX27017_PID:-}" ]; then
        kill "$NX27017_PID" 2>/dev/null || true
        wait "$NX27017_PID" 2>/dev/null || true
    fi
    if [ -n "${NX27017_DIR:-}" ]; then
        rm -rf "$NX27017_DIR"
    fi
}
