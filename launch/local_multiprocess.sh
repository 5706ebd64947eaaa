#!/usr/bin/env bash
# N processes of `signflax train` on this machine, joined by jax.distributed over 127.0.0.1.
#
#   launch/local_multiprocess.sh [--dry-run] N [signflax train args...]
#   launch/local_multiprocess.sh 2 --workdir runs/mp --config.mesh.data=-1
#
# Each process sees DEVICES_PER_PROCESS CPU devices (default 2) and uses gloo collectives,
# the way the tests prove the multi-host path without a cluster. Process 0 writes metrics.
# Output of process I is prefixed [pI].
# Exits with the first non-zero exit code (and stops the other processes). SIGTERM/SIGINT to
# this script are forwarded to every process: they agree on a step, checkpoint and exit 0.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [--dry-run] N [signflax train args...]  (N: number of processes >= 1)" >&2
  exit 2
fi
N=$1; shift
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
SIGNFLAX=${SIGNFLAX:-signflax}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

for ((i = 0; i < N; i++)); do
  cmd=(env JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
       "XLA_FLAGS=--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"
       $SIGNFLAX train "$@"
       "--config.distributed.coordinator_address=127.0.0.1:${PORT}"
       "--config.distributed.num_processes=${N}"
       "--config.distributed.process_id=${i}")
  if ((DRY_RUN)); then
    printf '%q ' "${cmd[@]}"; echo
  else
    # $! is the trainer itself (env execs it), so SIGTERM reaches it: it checkpoints and exits 0.
    "${cmd[@]}" > >(sed -u "s/^/[p${i}] /") 2>&1 &
    pids+=($!)
  fi
done
((DRY_RUN)) && exit 0

status=0
for pid in "${pids[@]}"; do
  while :; do
    rc=0; wait "$pid" || rc=$?
    # a trapped signal interrupts `wait` (rc > 128) while the process still runs: wait again
    ((rc > 128)) && kill -0 "$pid" 2>/dev/null && continue
    break
  done
  if ((rc != 0)); then
    ((status == 0)) && status=$rc
    cleanup
  fi
done
trap - EXIT
exit "$status"
