#!/usr/bin/env bash
# Start the chat server on 0.0.0.0:PORT in the foreground. Extra arguments go to Server.py
# (e.g. --student-id 12345678). exec: signals and KILL_SERVICE end the server itself.
set -eu
if [ $# -lt 1 ]; then
    echo "usage: $0 PORT [Server.py options]" >&2
    exit 2
fi
port=$1
shift
cd "$(dirname "$0")"
exec python3 Server.py 0.0.0.0 "$port" "$@"
