#!/usr/bin/env bash
# run.sh: the one-command demo. Starts (or reuses) the local PostgreSQL and Redis, builds bin/nxcloud and runs
# `bin/nxcloud demo "$@"` in the foreground. Ctrl-C or SIGTERM stops nxcloud, then the services that THIS run
# started (servers that were already running stay up). Exits with nxcloud's status.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd -P)
SERVICES=$SCRIPT_DIR/services.sh
DATA_DIR=${NXCLOUD_DATA_DIR:-$REPO_ROOT/.data}
case $DATA_DIR in /*) ;; *) DATA_DIR=$PWD/$DATA_DIR ;; esac
export NXCLOUD_DATA_DIR=$DATA_DIR
PID_FILE=$DATA_DIR/nxcloud.pid

log() { printf 'run: %s\n' "$*" >&2; }

started=()
started_known=
nxcloud_pid=      # while nxcloud may still run
launched_pid=     # what we wrote to the pid file

# services.sh up appends each service it starts to this file as it goes, so it is right even when up fails
# half-way or is interrupted.
mkdir -p "$DATA_DIR"
UP_RECORD=$(mktemp "$DATA_DIR/.run-started.XXXXXX")
export NXCLOUD_UP_RECORD=$UP_RECORD

read_started() {
	[ -n "$started_known" ] && return 0
	started_known=1
	local s
	while IFS= read -r s; do
		case $s in postgres | redis) started+=("$s") ;; esac
	done <"$UP_RECORD" 2>/dev/null || true
	rm -f "$UP_RECORD"
}

# shellcheck disable=SC2317 # runs from the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$nxcloud_pid" ] && kill -0 "$nxcloud_pid" 2>/dev/null; then
		kill -TERM "$nxcloud_pid" 2>/dev/null || true
		wait "$nxcloud_pid" 2>/dev/null || true
	fi
	if [ -n "$launched_pid" ] && [ "$(head -n 1 "$PID_FILE" 2>/dev/null || true)" = "$launched_pid" ]; then
		rm -f "$PID_FILE"
	fi
	read_started
	if [ ${#started[@]} -gt 0 ]; then
		log "stopping what this run started: ${started[*]}"
		"$SERVICES" down "${started[@]}" || true
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$REPO_ROOT"
"$SERVICES" up
unset NXCLOUD_UP_RECORD
read_started

# shellcheck source=/dev/null
source "$DATA_DIR/env"

log "building bin/nxcloud…"
go build -o bin/nxcloud ./cmd/nxcloud

# nxcloud gets its own session so that a terminal's Ctrl-C reaches only this script, which forwards one SIGTERM
# (and stops the services afterwards) instead of nxcloud seeing SIGINT and SIGTERM at once.
if command -v setsid >/dev/null 2>&1; then
	setsid bin/nxcloud demo "$@" &
else
	bin/nxcloud demo "$@" &
fi
nxcloud_pid=$!
launched_pid=$nxcloud_pid
printf '%s\n' "$nxcloud_pid" >"$PID_FILE"

signals=0
# shellcheck disable=SC2317 # runs from the INT/TERM trap
forward() {
	signals=$((signals + 1))
	if [ "$signals" -eq 1 ]; then
		log "stopping nxcloud (pid $nxcloud_pid)… (again to kill it)"
		kill -TERM "$nxcloud_pid" 2>/dev/null || true
	else
		log "killing nxcloud (pid $nxcloud_pid)"
		kill -KILL "$nxcloud_pid" 2>/dev/null || true
	fi
}
trap forward INT TERM

# wait returns early (status > 128) when a trapped signal arrives; keep waiting until nxcloud has exited, then
# ask bash once more for its exit status, which it keeps for reaped children.
status=
while [ -z "$status" ]; do
	rc=0
	wait "$nxcloud_pid" || rc=$?
	if kill -0 "$nxcloud_pid" 2>/dev/null; then
		continue
	fi
	again=0
	wait "$nxcloud_pid" 2>/dev/null || again=$?
	if [ "$again" -eq 127 ]; then status=$rc; else status=$again; fi
done
log "nxcloud exited with status $status"
trap - INT TERM
nxcloud_pid=
exit "$status"
