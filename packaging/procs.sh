# shellcheck shell=bash
# Sourced by packaging/check.sh and packaging/check-rpms.sh: what both need to start a program
# and wait for it. Uses $python when the caller set it.

# A free TCP port on 127.0.0.1.
port() { "${python:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_health URL PID [TRIES]: until URL answers (printed), every 0.1 s, TRIES times (100);
# fails at once when PID has exited.
wait_health() {
  for _ in $(seq "${3:-100}"); do
    if curl -fsS "$1" 2>/dev/null; then echo; return 0; fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
