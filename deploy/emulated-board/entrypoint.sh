#!/usr/bin/env bash
# Entrypoint of the emulated board container: an x86 "board" with SSH (for model pushes
# over SFTP) and qverify-agent on the `sim` backend.
#
#   1. SSH host keys: generated once if missing (keep them in a volume to keep them).
#   2. The host's public key for the user `qverify`, from $QVERIFY_AUTHORIZED_KEY and/or
#      the file $QVERIFY_AUTHORIZED_KEY_FILE (mounted), written to its authorized_keys.
#   3. The agent's token, from $QVERIFY_AGENT_TOKEN, written to a 0600 file (or an
#      existing token file, e.g. a mounted secret, at $QVERIFY_AGENT_TOKEN_FILE). A
#      non-loopback listen address needs a token, or QVERIFY_AGENT_INSECURE=1.
#   4. sshd -D in the background (unless SSHD_ENABLE=0), then
#      qverify-agent serve --listen 0.0.0.0:$AGENT_PORT --model-dir ... --token-file ...
#      $QVERIFY_AGENT_EXTRA_ARGS "$@".
#   5. SIGTERM/SIGINT: forwarded to the agent (which drains running calls for its
#      --grace period) and to sshd; SIGKILL for whatever is still running after
#      $STOP_TIMEOUT seconds. The exit status is the agent's. If sshd dies, the agent is
#      stopped too, so a restart policy brings the whole board back.
#   With SSHD_ENABLE=0 the script execs the agent, which then gets signals directly.
#
# Every path is overridable, so the script also runs outside a container (tests do):
#   QVERIFY_ROOT                 prefix of every default path below (default: empty)
#   QVERIFY_USER                 login user for SSH pushes (default: qverify)
#   QVERIFY_HOME                 its home (default: $QVERIFY_ROOT/var/lib/qverify)
#   SSH_HOST_KEY_DIR             host keys (default: $QVERIFY_ROOT/etc/ssh)
#   SSH_HOST_KEY_TYPES           key types to generate (default: "ed25519 ecdsa rsa")
#   AUTHORIZED_KEYS_FILE         (default: $QVERIFY_HOME/.ssh/authorized_keys)
#   QVERIFY_AUTHORIZED_KEY       public key line(s) to authorize
#   QVERIFY_AUTHORIZED_KEY_FILE  file of public keys to authorize
#                                (default: $QVERIFY_ROOT/etc/qverify/authorized_keys)
#   QVERIFY_RUN_DIR              sshd config and pid file (default: $QVERIFY_ROOT/run/qverify)
#   QVERIFY_AGENT_MODEL_DIR      model store (default: $QVERIFY_HOME/models)
#   QVERIFY_AGENT_TOKEN          the token clients must send (unset from the agent's env)
#   QVERIFY_AGENT_TOKEN_FILE     (default: $QVERIFY_RUN_DIR/token)
#   QVERIFY_AGENT_INSECURE=1     allow a network listen address without a token
#   QVERIFY_AGENT_LISTEN         (default: $AGENT_HOST:$AGENT_PORT, i.e. 0.0.0.0:7060)
#   QVERIFY_AGENT_EXTRA_ARGS     more `serve` options, split on spaces
#   AGENT_BIN                    the agent executable (default: qverify-agent)
#   AGENT_USER                   run the agent as this user (needs root; default: none,
#                                the image sets qverify)
#   SSHD_ENABLE                  0 to run no sshd (default: 1)
#   SSHD_BIN                     absolute path of sshd (default: /usr/sbin/sshd)
#   SSHD_PORT, SSHD_LISTEN       (default: 22, 0.0.0.0)
#   SSHD_EXTRA_CONFIG            sshd_config lines placed before the defaults (so they win)
#   SSHD_PRIVSEP_DIR             sshd's compiled-in privilege separation folder (default: /run/sshd)
#   SSH_KEYGEN_BIN               (default: ssh-keygen)
#   STOP_TIMEOUT                 seconds between SIGTERM and SIGKILL (default: 40, above
#                                the agent's 30 s grace; give `docker stop -t` more)
# The agent itself also reads QVERIFY_AGENT_TARGET, QVERIFY_AGENT_BACKEND,
# QVERIFY_AGENT_BOARD_ID, QVERIFY_AGENT_STORE_CAPACITY and QVERIFY_AGENT_LOG_LEVEL.
set -euo pipefail

log() { printf 'qverify-board: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

QVERIFY_ROOT=${QVERIFY_ROOT:-}
QVERIFY_ROOT=${QVERIFY_ROOT%/}
QVERIFY_USER=${QVERIFY_USER:-qverify}
QVERIFY_HOME=${QVERIFY_HOME:-$QVERIFY_ROOT/var/lib/qverify}
SSH_HOST_KEY_DIR=${SSH_HOST_KEY_DIR:-$QVERIFY_ROOT/etc/ssh}
SSH_HOST_KEY_TYPES=${SSH_HOST_KEY_TYPES:-ed25519 ecdsa rsa}
AUTHORIZED_KEYS_FILE=${AUTHORIZED_KEYS_FILE:-$QVERIFY_HOME/.ssh/authorized_keys}
QVERIFY_AUTHORIZED_KEY=${QVERIFY_AUTHORIZED_KEY:-}
QVERIFY_AUTHORIZED_KEY_FILE=${QVERIFY_AUTHORIZED_KEY_FILE:-$QVERIFY_ROOT/etc/qverify/authorized_keys}
QVERIFY_RUN_DIR=${QVERIFY_RUN_DIR:-$QVERIFY_ROOT/run/qverify}
MODEL_DIR=${QVERIFY_AGENT_MODEL_DIR:-$QVERIFY_HOME/models}
TOKEN=${QVERIFY_AGENT_TOKEN:-}
TOKEN_FILE=${QVERIFY_AGENT_TOKEN_FILE:-$QVERIFY_RUN_DIR/token}
INSECURE=${QVERIFY_AGENT_INSECURE:-0}
LISTEN=${QVERIFY_AGENT_LISTEN:-${AGENT_HOST:-0.0.0.0}:${AGENT_PORT:-7060}}
EXTRA_ARGS=${QVERIFY_AGENT_EXTRA_ARGS:-}
AGENT_BIN=${AGENT_BIN:-qverify-agent}
AGENT_USER=${AGENT_USER:-}
SSHD_ENABLE=${SSHD_ENABLE:-1}
SSHD_BIN=${SSHD_BIN:-/usr/sbin/sshd}
SSHD_PORT=${SSHD_PORT:-22}
SSHD_LISTEN=${SSHD_LISTEN:-0.0.0.0}
SSHD_PRIVSEP_DIR=${SSHD_PRIVSEP_DIR:-/run/sshd}
SSHD_EXTRA_CONFIG=${SSHD_EXTRA_CONFIG:-}
SSH_KEYGEN_BIN=${SSH_KEYGEN_BIN:-ssh-keygen}
STOP_TIMEOUT=${STOP_TIMEOUT:-40}
# The token travels in a file only: not in the agent's environment (/proc/PID/environ).
unset QVERIFY_AGENT_TOKEN

[[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] || die "STOP_TIMEOUT=$STOP_TIMEOUT is not a number of seconds"
[[ $SSHD_PORT =~ ^[0-9]+$ ]] || die "SSHD_PORT=$SSHD_PORT is not a port number"
[[ $SSHD_ENABLE == 0 || $SSHD_ENABLE == 1 ]] || die "SSHD_ENABLE=$SSHD_ENABLE: use 1 (default) or 0"

am_root() { [[ $(id -u) == 0 ]]; }

# chown to the login user when we can (root, and the user exists); no-op otherwise.
own() {
    if am_root && id -u "$QVERIFY_USER" >/dev/null 2>&1; then
        chown "$QVERIFY_USER:$(id -gn "$QVERIFY_USER")" "$@"
    fi
}

# --------------------------------------------------------------------- home, model store
mkdir -p "$QVERIFY_HOME" "$MODEL_DIR" "$QVERIFY_RUN_DIR"
chmod 0750 "$QVERIFY_HOME"
chmod 0750 "$MODEL_DIR"
own "$QVERIFY_HOME" "$MODEL_DIR"

# ------------------------------------------------------------------------ SSH host keys
if [[ $SSHD_ENABLE == 1 ]]; then
    command -v "$SSH_KEYGEN_BIN" >/dev/null 2>&1 || die "$SSH_KEYGEN_BIN not found (install openssh-client, or set SSH_KEYGEN_BIN)"
    mkdir -p "$SSH_HOST_KEY_DIR"
    HOST_KEYS=()
    for type in $SSH_HOST_KEY_TYPES; do
        key=$SSH_HOST_KEY_DIR/ssh_host_${type}_key
        if [[ ! -s $key ]]; then
            log "generating SSH host key $key"
            rm -f "$key" "$key.pub"
            "$SSH_KEYGEN_BIN" -q -t "$type" -N "" -C "qverify-emulated-board" -f "$key" </dev/null \
                || die "could not generate the $type host key $key"
        fi
        chmod 0600 "$key"
        HOST_KEYS+=("$key")
    done
    [[ ${#HOST_KEYS[@]} -gt 0 ]] || die "SSH_HOST_KEY_TYPES is empty"
fi

# ---------------------------------------------------------------------- authorized keys
keys=""
if [[ -n $QVERIFY_AUTHORIZED_KEY ]]; then
    keys+=$QVERIFY_AUTHORIZED_KEY$'\n'
fi
if [[ -f $QVERIFY_AUTHORIZED_KEY_FILE ]]; then
    keys+=$(cat "$QVERIFY_AUTHORIZED_KEY_FILE")$'\n'
fi
if [[ -n ${keys//[[:space:]]/} ]]; then
    ssh_dir=$(dirname "$AUTHORIZED_KEYS_FILE")
    mkdir -p "$ssh_dir"
    chmod 0700 "$ssh_dir"
    (umask 077 && printf '%s' "$keys" >"$AUTHORIZED_KEYS_FILE.new")
    if command -v "$SSH_KEYGEN_BIN" >/dev/null 2>&1 \
        && ! "$SSH_KEYGEN_BIN" -l -f "$AUTHORIZED_KEYS_FILE.new" >/dev/null 2>&1; then
        rm -f "$AUTHORIZED_KEYS_FILE.new"
        die "QVERIFY_AUTHORIZED_KEY / $QVERIFY_AUTHORIZED_KEY_FILE hold no valid public key (expected lines like 'ssh-ed25519 AAAA... comment')"
    fi
    chmod 0600 "$AUTHORIZED_KEYS_FILE.new"
    mv -f "$AUTHORIZED_KEYS_FILE.new" "$AUTHORIZED_KEYS_FILE"
    own "$ssh_dir" "$AUTHORIZED_KEYS_FILE"
    log "authorized keys for $QVERIFY_USER: $AUTHORIZED_KEYS_FILE"
elif [[ $SSHD_ENABLE == 1 && ! -s $AUTHORIZED_KEYS_FILE ]]; then
    log "warning: no QVERIFY_AUTHORIZED_KEY and no $QVERIFY_AUTHORIZED_KEY_FILE: nobody can log in over SSH" \
        "(models can still be pushed over gRPC)"
fi

# --------------------------------------------------------------------------- agent token
AGENT_ARGS=(serve --listen "$LISTEN" --model-dir "$MODEL_DIR")
if [[ -n $TOKEN ]]; then
    [[ $TOKEN != *[[:space:]]* ]] || die "QVERIFY_AGENT_TOKEN contains white space"
    mkdir -p "$(dirname "$TOKEN_FILE")"
    (umask 077 && printf '%s' "$TOKEN" >"$TOKEN_FILE.new")
    chmod 0600 "$TOKEN_FILE.new"
    mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
    if [[ -n $AGENT_USER ]] && am_root; then
        chown "$AGENT_USER" "$TOKEN_FILE"
    fi
    AGENT_ARGS+=(--token-file "$TOKEN_FILE")
elif [[ -s $TOKEN_FILE ]]; then
    AGENT_ARGS+=(--token-file "$TOKEN_FILE")
else
    host=${LISTEN%:*}
    host=${host#[}
    host=${host%]}
    case $host in
        127.* | localhost | ::1) ;;
        *)
            if [[ $INSECURE == 1 ]]; then
                log "warning: QVERIFY_AGENT_INSECURE=1: the agent on $LISTEN accepts calls from anyone who can reach it"
                AGENT_ARGS+=(--insecure)
            else
                die "the agent listens on $LISTEN, a network address: set QVERIFY_AGENT_TOKEN (clients then pass it)," \
                    "mount a token file at $TOKEN_FILE, or set QVERIFY_AGENT_INSECURE=1 on a trusted network"
            fi
            ;;
    esac
fi
read -r -a extra <<<"$EXTRA_ARGS" || true
if [[ ${#extra[@]} -gt 0 ]]; then
    AGENT_ARGS+=("${extra[@]}")
fi
AGENT_ARGS+=("$@")

command -v "$AGENT_BIN" >/dev/null 2>&1 || die "AGENT_BIN=$AGENT_BIN not found"
AGENT_CMD=("$AGENT_BIN" "${AGENT_ARGS[@]}")
if [[ -n $AGENT_USER ]] && am_root; then
    id -u "$AGENT_USER" >/dev/null 2>&1 || die "AGENT_USER=$AGENT_USER does not exist"
    export HOME=$QVERIFY_HOME USER=$AGENT_USER LOGNAME=$AGENT_USER
    AGENT_CMD=(setpriv --reuid="$AGENT_USER" --regid="$(id -g "$AGENT_USER")" --init-groups -- "${AGENT_CMD[@]}")
fi

if [[ $SSHD_ENABLE == 0 ]]; then
    log "starting the agent (no sshd): ${AGENT_CMD[*]}"
    exec "${AGENT_CMD[@]}"
fi

# --------------------------------------------------------------------------------- sshd
[[ $SSHD_BIN == /* ]] || SSHD_BIN=$(command -v "$SSHD_BIN" || true)
[[ -x $SSHD_BIN ]] || die "sshd not found at '${SSHD_BIN}' (install openssh-server, set SSHD_BIN, or SSHD_ENABLE=0)"
mkdir -p "$SSHD_PRIVSEP_DIR"
chmod 0755 "$SSHD_PRIVSEP_DIR"
SSHD_CONFIG=$QVERIFY_RUN_DIR/sshd_config
{
    printf '# written by the qverify emulated-board entrypoint at each start\n'
    # First: sshd keeps the first value it reads for a keyword, so these win.
    if [[ -n $SSHD_EXTRA_CONFIG ]]; then
        printf '%s\n' "$SSHD_EXTRA_CONFIG"
    fi
    printf 'Port %s\nListenAddress %s\n' "$SSHD_PORT" "$SSHD_LISTEN"
    printf 'HostKey %s\n' "${HOST_KEYS[@]}"
    printf 'PidFile %s\n' "$QVERIFY_RUN_DIR/sshd.pid"
    printf 'AuthorizedKeysFile %s\n' "$AUTHORIZED_KEYS_FILE"
    printf 'AllowUsers %s\n' "$QVERIFY_USER"
    printf '%s\n' \
        "PermitRootLogin no" \
        "PubkeyAuthentication yes" \
        "PasswordAuthentication no" \
        "KbdInteractiveAuthentication no" \
        "UsePAM no" \
        "X11Forwarding no" \
        "AllowAgentForwarding no" \
        "PrintMotd no" \
        "LogLevel INFO" \
        "Subsystem sftp internal-sftp"
} >"$SSHD_CONFIG"
"$SSHD_BIN" -t -f "$SSHD_CONFIG" || die "sshd refuses its configuration $SSHD_CONFIG (see above)"

agent_pid=""
sshd_pid=""
stopping=0

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# Each child gets one TERM: a second one could land while it is already exiting (after its own
# handler ran) and kill it with status 143 instead of the status it was exiting with.
termed=""
stop_children() {
    stopping=1
    local pid
    for pid in "$agent_pid" "$sshd_pid"; do
        if alive "$pid" && [[ " $termed " != *" $pid "* ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            termed="$termed $pid"
        fi
    done
}

# shellcheck disable=SC2317  # invoked by the traps below
on_signal() {
    log "$1: stopping the agent and sshd"
    stop_children
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

log "starting sshd on $SSHD_LISTEN:$SSHD_PORT"
"$SSHD_BIN" -D -e -f "$SSHD_CONFIG" &
sshd_pid=$!
log "starting the agent: ${AGENT_CMD[*]}"
"${AGENT_CMD[@]}" &
agent_pid=$!

set +e
# Wake when a child exits or a signal arrives (the trap runs, then wait returns).
while [[ $stopping == 0 ]] && alive "$agent_pid"; do
    if ! alive "$sshd_pid"; then
        log "sshd exited: stopping the agent"
        break
    fi
    wait -n
done

# Stopping (a signal, the agent exited, or sshd did): TERM what is left, bounded wait.
stop_children
deadline=$((SECONDS + STOP_TIMEOUT))
while { alive "$agent_pid" || alive "$sshd_pid"; } && ((SECONDS < deadline)); do
    sleep 0.1
done
for pid in "$agent_pid" "$sshd_pid"; do
    if alive "$pid"; then
        log "pid $pid still running after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
done
wait "$sshd_pid" 2>/dev/null
wait "$agent_pid"
status=$?
log "agent exited with status $status"
exit "$status"
