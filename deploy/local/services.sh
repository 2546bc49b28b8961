#!/usr/bin/env bash
# services.sh: the local PostgreSQL and Redis that nxcloud development, `make test` and `make run` use.
#
#   deploy/local/services.sh up                  start (or reuse) PostgreSQL and Redis, write $NXCLOUD_DATA_DIR/env
#   deploy/local/services.sh down [what...]      stop what runs from the data dir: nxcloud, postgres, redis (default: all)
#   deploy/local/services.sh status              print what runs
#   deploy/local/services.sh restart-redis       stop and start the local Redis (make chaos-metering)
#   deploy/local/services.sh env                 print the env file (export lines, for `source`)
#
# Environment:
#   NXCLOUD_DATA_DIR           data dir (default: <repo>/.data, git-ignored)
#   NXCLOUD_DATABASE_URL       use this PostgreSQL instead of starting one (checked, never started or stopped)
#   NXCLOUD_TEST_DATABASE_URL  test database (default: the local nxcloud_test, or NXCLOUD_DATABASE_URL when that is set)
#   NXCLOUD_REDIS_URL          use this Redis instead of starting one
#   NXCLOUD_TEST_REDIS_URL     test Redis (default: local db 1, or NXCLOUD_REDIS_URL when that is set)
#   NXCLOUD_PG_PORT            local PostgreSQL port (default 55432)
#   NXCLOUD_REDIS_PORT         local Redis port (default 56379)
#
# PostgreSQL refuses to run as root: as root, the cluster runs as the owner of its data dir, else as the `postgres`
# user, else as a system user `nxcloud` created on demand. When that user cannot reach the data dir (a repo under
# /root), the cluster lives under /var/lib/nxcloud/<hash of the data dir path>/pg and .data/pg is a symlink to it.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd -P)
DATA_DIR=${NXCLOUD_DATA_DIR:-$REPO_ROOT/.data}
case $DATA_DIR in /*) ;; *) DATA_DIR=$PWD/$DATA_DIR ;; esac
DATA_DIR=${DATA_DIR%/}

HOST=127.0.0.1
PG_PORT=${NXCLOUD_PG_PORT:-55432}
REDIS_PORT=${NXCLOUD_REDIS_PORT:-56379}
PG_SUPERUSER=nxcloud
DB_NAME=nxcloud
TEST_DB_NAME=nxcloud_test

LOCAL_DB_URL="postgres://$PG_SUPERUSER@$HOST:$PG_PORT/$DB_NAME?sslmode=disable"
LOCAL_TEST_DB_URL="postgres://$PG_SUPERUSER@$HOST:$PG_PORT/$TEST_DB_NAME?sslmode=disable"
LOCAL_REDIS_URL="redis://$HOST:$REDIS_PORT/0"
LOCAL_TEST_REDIS_URL="redis://$HOST:$REDIS_PORT/1"

ENV_FILE=$DATA_DIR/env
STARTED_FILE=$DATA_DIR/started
LOCK_FILE=$DATA_DIR/.lock
NXCLOUD_PID_FILE=$DATA_DIR/nxcloud.pid
PG_LINK=$DATA_DIR/pg # the cluster itself, or a symlink to it
REDIS_DIR=$DATA_DIR/redis
REDIS_CONF=$REDIS_DIR/redis.conf
REDIS_PIDFILE=$REDIS_DIR/redis.pid
REDIS_LOG=$REDIS_DIR/redis.log

# Set by pg_locate.
PGDATA_DIR='' PG_HOME='' PG_LOG='' PG_OS_USER='' PG_BINDIR='' PG_VER=''

# Exported so that psql and pg_isready do not pick up a user's PG* settings for our local server.
export PGCONNECT_TIMEOUT=5

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }

# rel prints a path relative to the repo root when it lies under it.
rel() {
	case $1 in
	"$REPO_ROOT"/*) printf '%s' "${1#"$REPO_ROOT"/}" ;;
	*) printf '%s' "$1" ;;
	esac
}

# pid_alive tells whether a process runs with that pid (a zombie, common in containers, does not count).
pid_alive() {
	local stat
	[ -n "${1:-}" ] && stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[ "${stat:0:1}" != Z ] && [ "${stat:0:1}" != X ]
}
pid_comm() {
	local c=''
	read -r c 2>/dev/null <"/proc/$1/comm" || true
	printf '%s' "$c"
}

# spawn runs a command with only stdin, stdout and stderr open, so that daemons it starts do not inherit our lock
# or a caller's pipes (a CI runner would otherwise wait for them forever).
spawn() {
	(
		for fd in "/proc/$BASHPID/fd/"*; do
			fd=${fd##*/}
			case $fd in 0 | 1 | 2 | 255) ;; *) eval "exec $fd>&-" 2>/dev/null || true ;; esac
		done
		exec "$@"
	)
}

# as_pg runs a command as the PostgreSQL OS user (from /, so it never needs to reach the caller's directory).
as_pg() {
	if is_root; then
		(cd / && spawn runuser -u "$PG_OS_USER" -- "$@")
	else
		(cd / && spawn "$@")
	fi
}

lock() {
	mkdir -p "$DATA_DIR"
	exec 9>>"$LOCK_FILE"
	if ! flock -w 900 9; then
		die "another services.sh holds $(rel "$LOCK_FILE") for more than 15 minutes"
	fi
}

tail_file() { # file [lines]
	[ -s "$1" ] || return 0
	printf -- '----- last lines of %s -----\n' "$1" >&2
	tail -n "${2:-25}" "$1" >&2 || true
	printf -- '-----\n' >&2
}

# ---------------------------------------------------------------------------------------------------------------
# Packages

POLICY_RC_CREATED=
cleanup_policy_rc() { if [ -n "$POLICY_RC_CREATED" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup_policy_rc EXIT

# apt_install installs Debian packages when running as root, or says what to install and exits.
apt_install() {
	if ! is_root || ! have apt-get; then
		log "error: missing package(s): $*"
		log "install them with:  sudo apt-get update && sudo apt-get install -y $*"
		log "or point nxcloud at existing servers with NXCLOUD_DATABASE_URL / NXCLOUD_REDIS_URL"
		exit 1
	fi
	log "installing $* with apt-get…"
	# Keep the packages' init scripts from starting their own default servers (5432, 6379) while installing.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		POLICY_RC_CREATED=1
	fi
	local rc=0
	{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } >&2 || rc=$?
	cleanup_policy_rc
	POLICY_RC_CREATED=
	[ "$rc" -eq 0 ] || die "apt-get install $* failed (exit $rc)"
}

ensure_pg_client() {
	have psql && have pg_isready && return 0
	apt_install postgresql-client
}

ensure_redis_cli() {
	have redis-cli && return 0
	apt_install redis-tools
}

ensure_redis_server() {
	have redis-server && return 0
	apt_install redis-server
}

# find_pg_bindir sets PG_BINDIR and PG_VER: the binaries of the existing cluster's version, else the newest installed.
find_pg_bindir() {
	local want='' d
	if [ -f "$PGDATA_DIR/PG_VERSION" ]; then
		want=$(<"$PGDATA_DIR/PG_VERSION")
	fi
	PG_BINDIR=
	if [ -n "$want" ]; then
		[ -x "/usr/lib/postgresql/$want/bin/initdb" ] && PG_BINDIR=/usr/lib/postgresql/$want/bin
	else
		for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
			[ -x "$d/initdb" ] && PG_BINDIR=$d
		done
	fi
	if [ -z "$PG_BINDIR" ] && have pg_ctl && have initdb; then
		d=$(dirname "$(command -v pg_ctl)")
		if [ -z "$want" ] || "$d/pg_ctl" --version | grep -q " ${want}[. ]"; then PG_BINDIR=$d; fi
	fi
	[ -n "$PG_BINDIR" ] || return 1
	PG_VER=$("$PG_BINDIR/pg_ctl" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')
}

ensure_pg_server() {
	find_pg_bindir && return 0
	if [ -f "$PGDATA_DIR/PG_VERSION" ]; then
		apt_install "postgresql-$(<"$PGDATA_DIR/PG_VERSION")"
	else
		apt_install postgresql-15
	fi
	find_pg_bindir || die "PostgreSQL server binaries (initdb, pg_ctl) still not found under /usr/lib/postgresql/*/bin"
}

# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL

# choose_pg_os_user sets PG_OS_USER (root: an unprivileged user; otherwise: ourselves); with "create" it may
# create the system user nxcloud.
choose_pg_os_user() {
	if ! is_root; then
		PG_OS_USER=$(id -un)
		return
	fi
	local owner
	if [ -e "$PGDATA_DIR" ]; then
		owner=$(stat -c %U "$PGDATA_DIR")
		if [ "$owner" != root ] && [ "$owner" != UNKNOWN ]; then
			PG_OS_USER=$owner
			return
		fi
	fi
	if id -u postgres >/dev/null 2>&1; then
		PG_OS_USER=postgres
		return
	fi
	if [ "${1:-}" = create ] && ! id -u nxcloud >/dev/null 2>&1; then
		log "creating system user nxcloud to run PostgreSQL (it refuses to run as root)"
		useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nxcloud
	fi
	PG_OS_USER=nxcloud
}

# pg_locate sets PGDATA_DIR, PG_HOME and PG_LOG from what exists; with "create" it also decides where a new
# cluster goes (under .data, or under /var/lib/nxcloud when the PostgreSQL user cannot reach .data).
pg_locate() {
	if [ -L "$PG_LINK" ]; then
		PGDATA_DIR=$(readlink "$PG_LINK")
	else
		PGDATA_DIR=$PG_LINK
	fi
	if [ "${1:-}" = create ] && [ ! -e "$PGDATA_DIR" ]; then
		choose_pg_os_user create
		if is_root && ! (cd / && runuser -u "$PG_OS_USER" -- test -x "$DATA_DIR") 2>/dev/null; then
			local hash home
			hash=$(printf '%s' "$DATA_DIR" | sha256sum | cut -c1-16)
			home=/var/lib/nxcloud/$hash
			mkdir -p "$home"
			chmod 755 /var/lib/nxcloud
			chown "$PG_OS_USER:" "$home"
			chmod 700 "$home"
			printf '%s\n' "$DATA_DIR" >"$home/OWNER"
			PGDATA_DIR=$home/pg
			ln -sfn "$PGDATA_DIR" "$PG_LINK"
			log "user $PG_OS_USER cannot reach $DATA_DIR: the PostgreSQL cluster goes to $PGDATA_DIR (linked as $(rel "$PG_LINK"))"
		fi
	fi
	PG_HOME=$(dirname "$PGDATA_DIR")
	PG_LOG=$PG_HOME/pg.log
	if [ "$PG_HOME" != "$DATA_DIR" ] && [ "${1:-}" = create ]; then
		ln -sfn "$PG_LOG" "$DATA_DIR/pg.log"
	fi
	if [ -z "$PG_OS_USER" ]; then choose_pg_os_user; fi
}

pg_socket_dir() {
	local dir=$PGDATA_DIR/socket
	# A Unix socket path must fit in 107 bytes.
	if [ $((${#dir} + 20)) -gt 107 ]; then
		dir=/tmp/nxcloud-pg-$(printf '%s' "$PGDATA_DIR" | sha256sum | cut -c1-12)
	fi
	printf '%s' "$dir"
}

# postmaster_pid prints the pid recorded in postmaster.pid (empty when there is none).
postmaster_pid() { head -n 1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true; }
postmaster_port() { sed -n 4p "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true; }

# is_our_postgres tells whether pid is a postgres process working in our data dir.
is_our_postgres() {
	pid_alive "$1" || return 1
	[ "$(pid_comm "$1")" = postgres ] || return 1
	local cwd
	if ! cwd=$(readlink "/proc/$1/cwd" 2>/dev/null); then
		is_root && return 1 # root reads every cwd: the process is gone
		return 0            # another user's process: cannot tell, trust comm
	fi
	[ "$cwd" = "$(readlink -f "$PGDATA_DIR")" ]
}

pg_running_here() { is_our_postgres "$(postmaster_pid)"; }

pg_isready_bin() {
	if [ -n "$PG_BINDIR" ] && [ -x "$PG_BINDIR/pg_isready" ]; then echo "$PG_BINDIR/pg_isready"; else echo pg_isready; fi
}
psql_bin() {
	if [ -n "$PG_BINDIR" ] && [ -x "$PG_BINDIR/psql" ]; then echo "$PG_BINDIR/psql"; else echo psql; fi
}

pg_answers() { # 0 = accepting connections
	have "$(pg_isready_bin)" || return 2
	"$(pg_isready_bin)" -q -h "$HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres -t 3 >/dev/null 2>&1
}

pg_local_psql() { # db args...
	local db=$1
	shift
	PGSSLMODE=disable "$(psql_bin)" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" -d "$db" "$@"
}

pg_log_tail() {
	tail_file "$PG_LOG" 20
	local latest
	latest=$(ls -t "$PGDATA_DIR"/log/*.log 2>/dev/null | head -n 1 || true)
	[ -n "$latest" ] && tail_file "$latest" 30
	return 0
}

pg_fail() {
	log "error: $*"
	pg_log_tail
	log "next: read the logs above ($(rel "$PG_LOG"), $(rel "$PGDATA_DIR")/log/); 'deploy/local/services.sh down' then 'up' again;"
	log "      a port clash: set NXCLOUD_PG_PORT; a broken cluster: move $(rel "$PGDATA_DIR") away (it is only local dev data)"
	exit 1
}

# pg_wait_ready waits until the local server accepts connections (crash recovery can take a while).
pg_wait_ready() {
	local i
	for ((i = 0; i < ${1:-300}; i++)); do
		pg_answers && return 0
		sleep 1
	done
	return 1
}

pg_initdb() {
	log "initialising a PostgreSQL $PG_VER cluster in $(rel "$PGDATA_DIR") (superuser $PG_SUPERUSER, trust auth on loopback)…"
	mkdir -p "$PGDATA_DIR"
	if is_root; then chown "$PG_OS_USER:" "$PGDATA_DIR"; fi
	chmod 700 "$PGDATA_DIR"
	local initlog=$DATA_DIR/pg-initdb.log
	if ! as_pg "$PG_BINDIR/initdb" -D "$PGDATA_DIR" -U "$PG_SUPERUSER" --auth=trust -E UTF8 --no-locale >"$initlog" 2>&1; then
		tail_file "$initlog" 30
		die "initdb failed (log: $(rel "$initlog")); fix the cause, then run 'deploy/local/services.sh up' again"
	fi
}

# pg_write_conf rewrites nxcloud's block at the end of postgresql.conf (the last setting wins).
pg_write_conf() {
	local conf=$PGDATA_DIR/postgresql.conf sockdir walcomp=on preload='' body
	sockdir=$(pg_socket_dir)
	body=$(sed '/^# >>> nxcloud/,/^# <<< nxcloud/d' "$conf")
	printf '%s\n' "$body" >"$conf" # in place: keeps the file's owner
	if as_pg "$PG_BINDIR/postgres" -D "$PGDATA_DIR" -C wal_compression -c wal_compression=lz4 >/dev/null 2>&1; then
		walcomp=lz4
	fi
	if [ -f "$("$PG_BINDIR/pg_config" --pkglibdir 2>/dev/null || echo "/usr/lib/postgresql/$PG_VER/lib")/timescaledb.so" ]; then
		preload=timescaledb
	fi
	# 2GB of shared buffers cannot be mapped on a small machine without swap: there, a quarter of the memory.
	local mem_mb shared=2GB cache=8GB shm_mb
	mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo 2>/dev/null || echo 0)
	if [ "${mem_mb:-0}" -gt 0 ] && [ "$mem_mb" -lt 8192 ]; then
		shared=$((mem_mb / 4))MB
		cache=$((mem_mb / 2))MB
		log "note: only ${mem_mb}MB of memory: shared_buffers=$shared instead of 2GB"
	fi
	# Docker's default 64MB /dev/shm is too small for parallel queries' dynamic shared memory.
	shm_mb=$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 {print $2}' || true)
	cat >>"$conf" <<EOF
# >>> nxcloud: written by deploy/local/services.sh on every start; edit there >>>
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$sockdir'
max_connections = 200
# Ingest throughput, durability unchanged: fsync and synchronous_commit stay on.
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = $shared
effective_cache_size = $cache
maintenance_work_mem = 512MB
work_mem = 16MB
wal_buffers = 64MB
wal_compression = $walcomp
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
logging_collector = on
log_directory = 'log'
log_filename = 'postgresql-%a.log'
log_truncate_on_rotation = on
log_rotation_age = 1d
log_rotation_size = 0
log_line_prefix = '%m [%p] %q%u@%d '
log_checkpoints = on
EOF
	if [ -z "$shm_mb" ] || [ "$shm_mb" -lt 512 ]; then
		printf 'dynamic_shared_memory_type = mmap # /dev/shm is only %sMB\n' "${shm_mb:-0}" >>"$conf"
	fi
	if [ -n "$preload" ]; then
		printf "shared_preload_libraries = '%s'\ntimescaledb.telemetry_level = off\n" "$preload" >>"$conf"
	fi
	printf '# <<< nxcloud <<<\n' >>"$conf"
}

# pg_clear_stale handles what a crash or kill -9 leaves behind. Orphaned backends still attached to the old shared
# memory are waited for (then killed). A lock file (postmaster.pid, the socket's .lock) whose pid is gone is left to
# PostgreSQL, which checks the old shared memory and removes it; one whose pid is a zombie (dead but not reaped, as
# happens in containers whose init does not reap) or now belongs to another program would block the start forever
# and is removed here.
pg_clear_stale() {
	local pid i orphans p real f
	pid=$(postmaster_pid)
	if is_our_postgres "$pid"; then
		return 0 # a live postmaster: nothing is stale
	fi
	real=$(readlink -f "$PGDATA_DIR")
	for ((i = 0; i < 15; i++)); do
		orphans=()
		for p in /proc/[0-9]*; do
			p=${p#/proc/}
			[ "$(pid_comm "$p")" = postgres ] || continue
			pid_alive "$p" || continue
			[ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$real" ] && orphans+=("$p")
		done
		[ ${#orphans[@]} -eq 0 ] && break
		[ "$i" -eq 0 ] && log "waiting for ${#orphans[@]} orphaned postgres process(es) of the dead postmaster to exit…"
		sleep 1
	done
	if [ ${#orphans[@]} -gt 0 ]; then
		log "killing orphaned postgres processes ${orphans[*]} (their postmaster is gone; recovery will replay the WAL)"
		kill -KILL "${orphans[@]}" 2>/dev/null || true
		sleep 1
	fi
	for f in "$PGDATA_DIR/postmaster.pid" "$(pg_socket_dir)"/.s.PGSQL.*.lock; do
		[ -f "$f" ] || continue
		pid=$(head -n 1 "$f" 2>/dev/null || true)
		pid=${pid#-}
		[[ $pid =~ ^[0-9]+$ ]] || continue
		[ -e "/proc/$pid" ] || continue # gone: PostgreSQL removes it itself
		if is_our_postgres "$pid"; then
			continue
		elif pid_alive "$pid"; then
			log "removing stale $(rel "$f") (pid $pid now belongs to '$(pid_comm "$pid")', not PostgreSQL)"
		else
			log "removing stale $(rel "$f") (pid $pid is a zombie: dead, not yet reaped)"
		fi
		rm -f "$f"
	done
}

pg_start() {
	local sockdir
	sockdir=$(pg_socket_dir)
	mkdir -p "$sockdir"
	touch "$PG_LOG"
	if is_root; then chown "$PG_OS_USER:" "$sockdir" "$PG_LOG"; fi
	chmod 700 "$sockdir"
	log "starting PostgreSQL $PG_VER on $HOST:$PG_PORT (data: $(rel "$PGDATA_DIR"))…"
	if ! as_pg "$PG_BINDIR/pg_ctl" start -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 600 -s >&2; then
		pg_running_here || pg_fail "PostgreSQL did not start"
		log "PostgreSQL is still starting (crash recovery?); waiting…"
	fi
	pg_wait_ready 600 || pg_fail "PostgreSQL started but does not accept connections on $HOST:$PG_PORT"
}

pg_ensure_databases() {
	local db exists
	for db in "$DB_NAME" "$TEST_DB_NAME"; do
		if ! exists=$(pg_local_psql postgres -Atc "select 1 from pg_database where datname = '$db'" 2>&1); then
			log "error: cannot query the PostgreSQL on $HOST:$PG_PORT as $PG_SUPERUSER: $exists"
			log "next: stop whatever listens on $HOST:$PG_PORT, set NXCLOUD_PG_PORT, or set NXCLOUD_DATABASE_URL"
			exit 1
		fi
		if [ "$exists" != 1 ]; then
			log "creating database $db"
			pg_local_psql postgres -c "create database $db" >&2 || die "could not create database $db"
		fi
	done
}

# pg_up makes a local PostgreSQL answer on $HOST:$PG_PORT; prints "started" when this call started it.
pg_up() {
	pg_locate
	ensure_pg_server # before choosing the OS user: installing postgresql creates the postgres user
	pg_locate create
	if pg_answers; then
		if pg_running_here; then
			log "PostgreSQL already running (pid $(postmaster_pid), $HOST:$PG_PORT, data: $(rel "$PGDATA_DIR"))"
		else
			log "reusing the PostgreSQL that answers on $HOST:$PG_PORT (not started from $(rel "$DATA_DIR"))"
		fi
		pg_ensure_databases
		return 0
	fi
	if pg_running_here; then
		local port
		port=$(postmaster_port)
		if [ -n "$port" ] && [ "$port" != "$PG_PORT" ]; then
			die "the PostgreSQL of $(rel "$PGDATA_DIR") runs on port $port, not $PG_PORT: run 'deploy/local/services.sh down' first"
		fi
		log "PostgreSQL (pid $(postmaster_pid)) is running but not yet accepting connections; waiting…"
		pg_wait_ready 600 || pg_fail "PostgreSQL (pid $(postmaster_pid)) does not accept connections"
		pg_ensure_databases
		return 0
	fi
	if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
		pg_initdb
	fi
	pg_write_conf
	pg_clear_stale
	pg_start
	mark_started postgres
	pg_ensure_databases
}

pg_stop() {
	pg_locate
	if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
		log "PostgreSQL: no cluster in $(rel "$PGDATA_DIR")"
		return 0
	fi
	local pid
	pid=$(postmaster_pid)
	if ! is_our_postgres "$pid"; then
		log "PostgreSQL: not running from $(rel "$PGDATA_DIR")"
		return 0
	fi
	find_pg_bindir || die "cannot find pg_ctl for PostgreSQL $(<"$PGDATA_DIR/PG_VERSION"); stop pid $pid with: kill -INT $pid"
	log "stopping PostgreSQL (pid $pid, data: $(rel "$PGDATA_DIR"))…"
	if ! as_pg "$PG_BINDIR/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t 300 -s >&2; then
		log "fast shutdown did not finish; using immediate shutdown (recovery on next start)"
		as_pg "$PG_BINDIR/pg_ctl" stop -D "$PGDATA_DIR" -m immediate -w -t 60 -s >&2 || pg_fail "could not stop PostgreSQL pid $pid"
	fi
}

# ---------------------------------------------------------------------------------------------------------------
# Redis

# redis_ping prints Redis's reply to PING on host:port (empty when nothing answers); needs no redis-cli.
redis_ping() {
	local line=''
	line=$( (exec 3<>"/dev/tcp/$1/$2" && printf 'PING\r\n' >&3 && IFS= read -r -t 3 line <&3 && printf '%s' "$line") 2>/dev/null) || true
	printf '%s' "${line%$'\r'}"
}

redis_pid() { head -n 1 "$REDIS_PIDFILE" 2>/dev/null || true; }
redis_running_here() {
	local pid
	pid=$(redis_pid)
	pid_alive "$pid" && [ "$(pid_comm "$pid")" = redis-server ]
}

redis_fail() {
	log "error: $*"
	tail_file "$REDIS_LOG" 25
	log "next: read $(rel "$REDIS_LOG"); a port clash: set NXCLOUD_REDIS_PORT or NXCLOUD_REDIS_URL; then run 'up' again"
	exit 1
}

redis_write_conf() {
	cat >"$REDIS_CONF" <<EOF
# Written by deploy/local/services.sh on every start; edit there.
bind $HOST
port $REDIS_PORT
protected-mode yes
daemonize yes
supervised no
dir "$REDIS_DIR"
pidfile "$REDIS_PIDFILE"
logfile "$REDIS_LOG"
appendonly yes
appendfsync everysec
save ""
EOF
}

redis_up() {
	local reply i ours=''
	reply=$(redis_ping "$HOST" "$REDIS_PORT")
	case $reply in
	+PONG)
		if redis_running_here; then
			log "Redis already running (pid $(redis_pid), $HOST:$REDIS_PORT, dir: $(rel "$REDIS_DIR"))"
		else
			log "reusing the Redis that answers on $HOST:$REDIS_PORT (not started from $(rel "$DATA_DIR"))"
		fi
		return 0
		;;
	-LOADING*)
		log "Redis on $HOST:$REDIS_PORT is loading its data; waiting…"
		;;
	"") ;;
	*)
		die "something on $HOST:$REDIS_PORT answers PING with '$reply'; stop it, set NXCLOUD_REDIS_PORT, or set NXCLOUD_REDIS_URL"
		;;
	esac
	if ! redis_running_here; then
		ensure_redis_server
		mkdir -p "$REDIS_DIR"
		redis_write_conf
		log "starting Redis on $HOST:$REDIS_PORT (dir: $(rel "$REDIS_DIR"))…"
		spawn redis-server "$REDIS_CONF" >&2 || redis_fail "redis-server did not start"
		mark_started redis
		ours=1
	fi
	for ((i = 0; i < 600; i++)); do
		[ "$(redis_ping "$HOST" "$REDIS_PORT")" = +PONG ] && return 0
		if [ -n "$ours" ] && [ "$i" -ge 5 ] && ! redis_running_here; then
			redis_fail "redis-server exited"
		fi
		sleep 0.5
	done
	redis_fail "Redis does not answer on $HOST:$REDIS_PORT"
}

redis_stop() {
	local pid i
	pid=$(redis_pid)
	if ! redis_running_here; then
		log "Redis: not running from $(rel "$REDIS_DIR")"
		return 0
	fi
	log "stopping Redis (pid $pid, dir: $(rel "$REDIS_DIR"))…"
	if have redis-cli && [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" --raw config get dir 2>/dev/null | sed -n 2p)" = "$REDIS_DIR" ]; then
		redis-cli -h "$HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
	else
		kill -TERM "$pid" 2>/dev/null || true
	fi
	for ((i = 0; i < 60; i++)); do
		pid_alive "$pid" || return 0
		sleep 0.5
	done
	log "Redis (pid $pid) did not stop in 30 s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------------------------
# nxcloud (started by deploy/local/run.sh)

nxcloud_pid() { head -n 1 "$NXCLOUD_PID_FILE" 2>/dev/null || true; }
nxcloud_running() {
	local pid
	pid=$(nxcloud_pid)
	pid_alive "$pid" && { [ "$(pid_comm "$pid")" = nxcloud ] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q nxcloud; }
}

nxcloud_stop() {
	local pid i
	pid=$(nxcloud_pid)
	if ! nxcloud_running; then
		rm -f "$NXCLOUD_PID_FILE"
		return 0
	fi
	log "stopping nxcloud (pid $pid)…"
	kill -TERM "$pid" 2>/dev/null || true
	# nxcloud flushes ingest on SIGTERM for up to --shutdown-timeout (30 s).
	for ((i = 0; i < 70; i++)); do
		pid_alive "$pid" || break
		sleep 0.5
	done
	if pid_alive "$pid"; then
		log "nxcloud (pid $pid) did not stop within 35 s of SIGTERM; killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$NXCLOUD_PID_FILE"
}

# ---------------------------------------------------------------------------------------------------------------
# Commands

# mark_started records a service this invocation started in .data/started and, for run.sh, in the file named by
# NXCLOUD_UP_RECORD (private to its caller, so a stale or concurrent record is never mistaken for its own).
mark_started() {
	grep -qx "$1" "$STARTED_FILE" 2>/dev/null || printf '%s\n' "$1" >>"$STARTED_FILE"
	if [ -n "${NXCLOUD_UP_RECORD:-}" ]; then printf '%s\n' "$1" >>"$NXCLOUD_UP_RECORD"; fi
}

# user_url prints the value of variable $1 unless it is unset or the URL this script itself writes (so that a
# shell which sourced .data/env still gets local servers managed for it).
user_url() {
	local v=${!1:-}
	[ "$v" = "$2" ] && v=
	printf '%s' "$v"
}

sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

cmd_up() {
	lock
	: >"$STARTED_FILE" # what THIS invocation starts; appended as it goes
	local db_url test_db_url redis_url test_redis_url
	db_url=$(user_url NXCLOUD_DATABASE_URL "$LOCAL_DB_URL")
	test_db_url=$(user_url NXCLOUD_TEST_DATABASE_URL "$LOCAL_TEST_DB_URL")
	redis_url=$(user_url NXCLOUD_REDIS_URL "$LOCAL_REDIS_URL")
	test_redis_url=$(user_url NXCLOUD_TEST_REDIS_URL "$LOCAL_TEST_REDIS_URL")

	if [ -n "$db_url" ]; then
		ensure_pg_client
		log "using the PostgreSQL of NXCLOUD_DATABASE_URL (not starting one)"
		pg_isready -q -d "$db_url" -t 10 >/dev/null 2>&1 || die "NXCLOUD_DATABASE_URL does not answer (pg_isready); start that server or unset the variable"
		psql -X -q -Atc 'select 1' "$db_url" >/dev/null || die "cannot run a query through NXCLOUD_DATABASE_URL (see the psql error above)"
		test_db_url=${test_db_url:-$db_url}
	else
		pg_up
		db_url=$LOCAL_DB_URL
		test_db_url=${test_db_url:-$LOCAL_TEST_DB_URL}
	fi

	if [ -n "$redis_url" ]; then
		ensure_redis_cli
		log "using the Redis of NXCLOUD_REDIS_URL (not starting one)"
		[ "$(redis-cli -u "$redis_url" ping 2>/dev/null)" = PONG ] || die "NXCLOUD_REDIS_URL does not answer PING; start that server or unset the variable"
		test_redis_url=${test_redis_url:-$redis_url}
	else
		redis_up
		redis_url=$LOCAL_REDIS_URL
		test_redis_url=${test_redis_url:-$LOCAL_TEST_REDIS_URL}
	fi

	local tmp
	tmp=$(mktemp "$DATA_DIR/.env.XXXXXX")
	{
		echo "# Written by deploy/local/services.sh up; source it: . $(rel "$ENV_FILE")"
		echo "export NXCLOUD_DATABASE_URL=$(sq "$db_url")"
		echo "export NXCLOUD_TEST_DATABASE_URL=$(sq "$test_db_url")"
		echo "export NXCLOUD_REDIS_URL=$(sq "$redis_url")"
		echo "export NXCLOUD_TEST_REDIS_URL=$(sq "$test_redis_url")"
	} >"$tmp"
	chmod 600 "$tmp" # user-supplied URLs may carry passwords
	mv -f "$tmp" "$ENV_FILE"
	local started
	started=$(tr '\n' ' ' <"$STARTED_FILE")
	log "ready (${started:+started: ${started% }; }env: $(rel "$ENV_FILE"))"
}

cmd_down() {
	local what=("$@") w
	[ ${#what[@]} -gt 0 ] || what=(nxcloud postgres redis)
	for w in "${what[@]}"; do
		case $w in nxcloud | postgres | redis) ;; *) die "down: unknown service '$w' (want nxcloud, postgres, redis)" ;; esac
	done
	if [ ! -d "$DATA_DIR" ]; then
		log "nothing to stop: $(rel "$DATA_DIR") does not exist"
		return 0
	fi
	lock
	for w in nxcloud postgres redis; do
		printf '%s\n' "${what[@]}" | grep -qx "$w" || continue
		case $w in
		nxcloud) nxcloud_stop ;;
		postgres) pg_stop ;;
		redis) redis_stop ;;
		esac
		if [ -f "$STARTED_FILE" ]; then
			grep -vx "$w" "$STARTED_FILE" >"$STARTED_FILE.tmp" || true
			mv -f "$STARTED_FILE.tmp" "$STARTED_FILE"
		fi
	done
}

cmd_status() {
	local pid
	echo "data dir:   $DATA_DIR"
	pg_locate
	find_pg_bindir || true
	pid=$(postmaster_pid)
	if pg_running_here; then
		if pg_answers; then
			echo "PostgreSQL: running, accepting connections (pid $pid, $HOST:$PG_PORT, data: $PGDATA_DIR, user: $PG_OS_USER)"
		else
			echo "PostgreSQL: running, NOT accepting connections on $HOST:$PG_PORT (pid $pid, data: $PGDATA_DIR)"
		fi
	elif pg_answers; then
		echo "PostgreSQL: not running from the data dir; another server answers on $HOST:$PG_PORT"
	elif [ -f "$PGDATA_DIR/PG_VERSION" ]; then
		echo "PostgreSQL: stopped (cluster: $PGDATA_DIR${pid:+, stale postmaster.pid: $pid})"
	else
		echo "PostgreSQL: stopped (no cluster yet)"
	fi
	local reply
	reply=$(redis_ping "$HOST" "$REDIS_PORT")
	if redis_running_here; then
		echo "Redis:      running (pid $(redis_pid), $HOST:$REDIS_PORT, dir: $REDIS_DIR, PING: ${reply:-no reply})"
	elif [ -n "$reply" ]; then
		echo "Redis:      not running from the data dir; another server answers on $HOST:$REDIS_PORT ($reply)"
	else
		echo "Redis:      stopped"
	fi
	if nxcloud_running; then
		echo "nxcloud:    running (pid $(nxcloud_pid))"
	else
		echo "nxcloud:    not running"
	fi
	if [ -s "$STARTED_FILE" ]; then
		echo "started by the last 'up': $(tr '\n' ' ' <"$STARTED_FILE")"
	fi
	if [ -f "$ENV_FILE" ]; then
		echo "env file:   $ENV_FILE"
		sed -n 's/^export /  /p' "$ENV_FILE"
	else
		echo "env file:   none (run: deploy/local/services.sh up)"
	fi
}

cmd_env() {
	[ -f "$ENV_FILE" ] || die "$(rel "$ENV_FILE") does not exist; run: deploy/local/services.sh up"
	cat "$ENV_FILE"
}

usage() {
	sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

main() {
	local cmd=${1:-}
	[ $# -gt 0 ] && shift
	case $cmd in
	up) cmd_up "$@" ;;
	down | stop) cmd_down "$@" ;;
	status) cmd_status "$@" ;;
	restart-redis)
		lock
		redis_stop
		redis_up
		;;
	env) cmd_env "$@" ;;
	-h | --help | help)
		usage
		;;
	*)
		usage
		exit 2
		;;
	esac
}

main "$@"
