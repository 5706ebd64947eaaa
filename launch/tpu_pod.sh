#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create (or reuse) it, copy the code, install, and run the
# same `signflax train` command on every worker.
#
#   launch/tpu_pod.sh [--dry-run] [--relaunch] NAME ZONE ACCELERATOR [signflax train args...]
#   launch/tpu_pod.sh my-pod us-central2-b v4-32 --config lm/llama_100m --workdir gs://my-bucket/runs/l100m
#
# --workdir gs://BUCKET/PATH: checkpoints, metrics and TensorBoard events go straight to Cloud
# Storage (the workers use the VM's service account; no mount to set up). The bucket is
# checked before anything compiles. Without --workdir, BUCKET=my-bucket gives
# --workdir gs://my-bucket/runs/${RUN_NAME:-NAME}.
# --relaunch: keep going after preemption: when the run ends without success, wait until
# the slice is READY again (recreating a deleted/preempted one) and start the same command;
# the trainer resumes from the latest checkpoint in --workdir (a gs:// workdir, or a path every
# worker shares that outlives the VMs). A clean exit counts as finished
# only if the slice is still READY 90 s later (a preempted worker checkpoints on SIGTERM and
# exits 0 as well).
# --dry-run prints every command instead of running it.
# Environment: RUNTIME_VERSION (default tpu-ubuntu2204-base), SPOT=1 for spot capacity,
# PROJECT (default: gcloud's configured project), MAX_RELAUNCHES (default 100),
# BUCKET and RUN_NAME (default NAME) for the default workdir.
set -euo pipefail

DRY_RUN=0; RELAUNCH=0
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --relaunch) RELAUNCH=1 ;;
    *) echo "$0: unknown option $1; allowed: --dry-run, --relaunch" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 3 ]]; then
  echo "usage: $0 [--dry-run] [--relaunch] NAME ZONE ACCELERATOR [signflax train args...]" >&2
  exit 2
fi
NAME=$1; ZONE=$2; ACCEL=$3; shift 3
workdir=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --workdir) workdir="${args[i+1]:-}" ;;
    --workdir=*) workdir="${args[i]#--workdir=}" ;;
  esac
done
if [[ -z "$workdir" && -n "${BUCKET:-}" ]]; then
  workdir="gs://${BUCKET#gs://}/runs/${RUN_NAME:-$NAME}"
  set -- "$@" --workdir "$workdir"
fi
if [[ -z "$workdir" ]]; then
  echo "$0: --workdir: required (e.g. gs://my-bucket/runs/$NAME, or set BUCKET)" >&2; exit 2
fi
if [[ "$workdir" != gs://* ]]; then
  echo "$0: warning: --workdir $workdir is not gs://: it must be shared by every worker and" \
       "outlive the VMs (a preempted slice loses its local disks)" >&2
fi
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
MAX_RELAUNCHES=${MAX_RELAUNCHES:-100}
project=()
[[ -n "${PROJECT:-}" ]] && project=(--project "$PROJECT")
spot=()
[[ "${SPOT:-0}" == 1 ]] && spot=(--spot)

run() {  # print or execute one command
  if ((DRY_RUN)); then printf '%q ' "$@"; echo; else "$@"; fi
}
tpu=(gcloud compute tpus tpu-vm)
ssh_all() { run "${tpu[@]}" ssh "$NAME" --zone "$ZONE" "${project[@]}" --worker=all --command "$1"; }

slice_ready() {
  "${tpu[@]}" describe "$NAME" --zone "$ZONE" "${project[@]}" --format='value(state)' \
      2>/dev/null | grep -q READY
}

ensure_slice() {
  if ((DRY_RUN)) || ! slice_ready; then
    ((DRY_RUN)) || "${tpu[@]}" delete "$NAME" --zone "$ZONE" "${project[@]}" --quiet 2>/dev/null || true
    run "${tpu[@]}" create "$NAME" --zone "$ZONE" "${project[@]}" \
        --accelerator-type "$ACCEL" --version "$RUNTIME_VERSION" "${spot[@]}"
  fi
}

deploy() {
  local archive=/tmp/signflax-src.tar.gz
  run git archive --format=tar.gz -o "$archive" HEAD
  run "${tpu[@]}" scp "$archive" "$NAME:~/signflax-src.tar.gz" --zone "$ZONE" "${project[@]}" --worker=all
  ssh_all "mkdir -p ~/signflax && tar xzf ~/signflax-src.tar.gz -C ~/signflax && cd ~/signflax && \
python3 -m venv .venv && .venv/bin/pip install -q -e '.[gcs]' 'jax[tpu]'"
}

train_cmd="cd ~/signflax && .venv/bin/signflax train $(printf '%q ' "$@")"

attempt=0
while :; do
  ensure_slice
  deploy
  if ssh_all "$train_cmd"; then
    ((RELAUNCH && !DRY_RUN)) || exit 0
    # A preempted run exits 0 too (SIGTERM -> checkpoint): a slice still READY means done.
    sleep 90
    if slice_ready; then exit 0; fi
  fi
  attempt=$((attempt + 1))
  if ((!RELAUNCH || DRY_RUN)) || ((attempt >= MAX_RELAUNCHES)); then
    ((DRY_RUN)) && exit 0
    echo "$0: training failed (attempt $attempt)" >&2; exit 1
  fi
  echo "$0: run ended without success (attempt $attempt); relaunching after the slice is READY" >&2
  sleep 60
done
