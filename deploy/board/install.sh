#!/usr/bin/env bash
# Install the qverify board agent (qverify-agent) on a Linux board.
#
# What it does, and all it touches:
#   * the system user `qverify` (home /var/lib/qverify), unless it exists or --no-user;
#   * a virtual environment PREFIX/venv (default /opt/qverify/venv) holding qverify,
#     installed with --no-deps, and only the agent's own dependencies (grpcio, its health
#     and reflection services, protobuf, numpy): a board never gets onnx, onnxruntime,
#     paramiko or typer;
#   * when systemd is present (and not --no-systemd): the unit
#     /etc/systemd/system/qverify-agent.service and /etc/qverify/agent.env.example.
# Running it again upgrades qverify in place and leaves everything else as it is.
# Run `install.sh --help` for the options.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The agent's runtime dependencies: the board-side subset of pyproject.toml's
# dependencies, with the same floors (tests/test_deploy.py checks that they agree).
DEFAULT_REQUIREMENTS="grpcio>=1.85.1 grpcio-health-checking>=1.85.1 grpcio-reflection>=1.85.1 protobuf>=7.35.1 numpy>=1.24"
AGENT_USER=qverify
AGENT_HOME=/var/lib/qverify
UNIT_NAME=qverify-agent.service

PREFIX=/opt/qverify
PYTHON=python3
REQUIREMENTS=$DEFAULT_REQUIREMENTS
FIND_LINKS=""
SYSTEMD=auto
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/qverify
SYSTEMD_SRC=$SCRIPT_DIR/../systemd
CREATE_USER=1
USER_SHELL=/bin/sh
ENABLE=0
DRY_RUN=0
PACKAGE=""

usage() {
    cat <<EOF
Usage: $PROG [options] PACKAGE

Install qverify-agent on this board. PACKAGE is a qverify wheel (qverify-*.whl,
recommended) or a qverify source directory (holding pyproject.toml).

Options:
  --prefix DIR         install root; the virtual environment is DIR/venv
                       (default: /opt/qverify)
  --python PY          interpreter that creates the venv, 3.10 or newer (default: python3)
  --requirements LIST  the agent's dependencies, space separated pip requirement
                       specifiers; "" installs none
                       (default: $DEFAULT_REQUIREMENTS)
  --find-links DIR     install offline, from the wheels in DIR only
                       (pip --no-index --find-links DIR): no access to PyPI needed
  --no-user            do not create the system user '$AGENT_USER' (containers, tests)
  --nologin            give a newly created '$AGENT_USER' the shell /usr/sbin/nologin
                       (default: $USER_SHELL, which SSH/SFTP model pushes as '$AGENT_USER' need)
  --no-systemd         do not install the systemd unit and the environment file example
  --systemd            install them even where systemd is not detected (an image build)
  --unit-dir DIR       where the unit goes (default: $UNIT_DIR)
  --conf-dir DIR       where agent.env.example goes (default: $CONF_DIR)
  --systemd-src DIR    folder holding qverify-agent.service and agent.env.example
                       (default: deploy/systemd beside this script)
  --enable             enable the service and (re)start it
  --dry-run            print what would be done, change nothing
  -h, --help           show this help

Offline install (no PyPI on the board): on a host of the board's architecture and Python
version, or with pip download's --platform/--python-version/--only-binary=:all: options,
  pip wheel --no-deps -w wheels .                     # in the qverify source tree
  pip download -d wheels $DEFAULT_REQUIREMENTS
then copy wheels/ and deploy/ to the board and run
  sudo deploy/board/install.sh --find-links wheels wheels/qverify-*.whl
Installing a source directory offline also needs setuptools and wheel wheels in DIR.

After installing: put settings in $CONF_DIR/agent.env (see agent.env.example), then
  systemctl enable --now qverify-agent
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }

# One shell word, quoted only when needed: the printed commands can be pasted into a shell.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

show() {
    local out="+" arg
    for arg in "$@"; do
        out+=" $(quote "$arg")"
    done
    printf '%s\n' "$out"
}

# Print a command, and run it unless --dry-run.
run() {
    show "$@"
    if [[ $DRY_RUN == 0 ]]; then
        "$@"
    fi
}

need_value() {
    [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --requirements) need_value "$@"; REQUIREMENTS=$2; shift 2 ;;
        --requirements=*) REQUIREMENTS=${1#*=}; shift ;;
        --find-links) need_value "$@"; FIND_LINKS=$2; shift 2 ;;
        --find-links=*) FIND_LINKS=${1#*=}; shift ;;
        --unit-dir) need_value "$@"; UNIT_DIR=$2; shift 2 ;;
        --unit-dir=*) UNIT_DIR=${1#*=}; shift ;;
        --conf-dir) need_value "$@"; CONF_DIR=$2; shift 2 ;;
        --conf-dir=*) CONF_DIR=${1#*=}; shift ;;
        --systemd-src) need_value "$@"; SYSTEMD_SRC=$2; shift 2 ;;
        --systemd-src=*) SYSTEMD_SRC=${1#*=}; shift ;;
        --no-user) CREATE_USER=0; shift ;;
        --nologin) USER_SHELL=/usr/sbin/nologin; shift ;;
        --no-systemd) SYSTEMD=no; shift ;;
        --systemd) SYSTEMD=yes; shift ;;
        --enable) ENABLE=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *)
            [[ -z $PACKAGE ]] || die "one PACKAGE only (got '$PACKAGE' and '$1')"
            PACKAGE=$1; shift ;;
    esac
done
if [[ $# -gt 0 ]]; then
    [[ -z $PACKAGE && $# -eq 1 ]] || die "one PACKAGE only (see --help)"
    PACKAGE=$1
fi

# ------------------------------------------------------------------ checks (change nothing)
[[ -n $PACKAGE ]] || die "no PACKAGE: give a qverify wheel or source directory (see --help)"
if [[ -d $PACKAGE ]]; then
    [[ -f $PACKAGE/pyproject.toml || -f $PACKAGE/setup.py ]] \
        || die "$PACKAGE is a directory without pyproject.toml: give the qverify source tree or a wheel"
elif [[ -f $PACKAGE ]]; then
    [[ $PACKAGE == *.whl ]] || die "$PACKAGE is not a wheel (*.whl) nor a source directory"
else
    die "$PACKAGE does not exist: give a qverify wheel or source directory"
fi
PACKAGE=$(cd "$(dirname "$PACKAGE")" && pwd)/$(basename "$PACKAGE")
PACKAGE=${PACKAGE%/.}

[[ $PREFIX == /* ]] || PREFIX=$PWD/$PREFIX
PREFIX=${PREFIX%/}
VENV=$PREFIX/venv

PIP_OPTS=(--disable-pip-version-check --no-input --no-cache-dir)
if [[ -n $FIND_LINKS ]]; then
    [[ -d $FIND_LINKS ]] || die "--find-links $FIND_LINKS is not a directory"
    FIND_LINKS=$(cd "$FIND_LINKS" && pwd)
    PIP_OPTS+=(--no-index --find-links "$FIND_LINKS")
fi

read -r -a REQS <<<"$REQUIREMENTS" || true

if [[ $SYSTEMD == auto ]]; then
    if [[ -d /run/systemd/system ]] || command -v systemctl >/dev/null 2>&1; then
        SYSTEMD=yes
    else
        SYSTEMD=no
        say "systemd not found: not installing the unit (start the agent yourself: $VENV/bin/qverify-agent serve)"
    fi
fi
if [[ $SYSTEMD == yes ]]; then
    for f in "$SYSTEMD_SRC/qverify-agent.service" "$SYSTEMD_SRC/agent.env.example"; do
        [[ -f $f ]] || die "$f is missing: copy the whole deploy/ folder to the board, pass --systemd-src DIR, or --no-systemd"
    done
fi

if [[ $DRY_RUN == 0 && $EUID -ne 0 ]]; then
    if [[ $CREATE_USER == 1 ]]; then
        die "creating the user '$AGENT_USER' needs root: run with sudo, or pass --no-user"
    fi
    if [[ $SYSTEMD == yes && ! -w $UNIT_DIR ]]; then
        die "installing the unit into $UNIT_DIR needs root: run with sudo, or pass --no-systemd"
    fi
fi

if [[ -x $VENV/bin/python ]]; then
    NEW_VENV=0
    VENV_PYTHON_CHECK=$VENV/bin/python
else
    NEW_VENV=1
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.10 or newer, or pass --python PY"
    VENV_PYTHON_CHECK=$PYTHON
fi
"$VENV_PYTHON_CHECK" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$VENV_PYTHON_CHECK is older than Python 3.10, which qverify needs: pass --python PY"

if [[ $DRY_RUN == 1 ]]; then
    say "dry run: nothing is changed"
fi

# ------------------------------------------------------------------------------ the user
if [[ $CREATE_USER == 1 ]]; then
    if id -u "$AGENT_USER" >/dev/null 2>&1; then
        say "user '$AGENT_USER' exists"
    elif command -v useradd >/dev/null 2>&1; then
        run useradd --system --user-group --home-dir "$AGENT_HOME" --no-create-home \
            --shell "$USER_SHELL" --comment "qverify board agent" "$AGENT_USER"
        run install -d -m 0750 -o "$AGENT_USER" -g "$AGENT_USER" "$AGENT_HOME"
    elif command -v adduser >/dev/null 2>&1; then  # BusyBox boards
        run addgroup -S "$AGENT_USER"
        run adduser -S -D -H -h "$AGENT_HOME" -s "$USER_SHELL" -G "$AGENT_USER" -g "qverify board agent" "$AGENT_USER"
        run install -d -m 0750 -o "$AGENT_USER" -g "$AGENT_USER" "$AGENT_HOME"
    else
        die "neither useradd nor adduser found: create the user '$AGENT_USER' yourself, then pass --no-user"
    fi
fi

# ---------------------------------------------------------------- virtual environment
if [[ $NEW_VENV == 1 ]]; then
    run install -d -m 0755 "$PREFIX"
    if ! run "$PYTHON" -m venv "$VENV"; then
        die "could not create the venv $VENV (Debian/Ubuntu: apt-get install python3-venv)"
    fi
else
    say "reusing the virtual environment $VENV"
fi

PIP=("$VENV/bin/python" -m pip install "${PIP_OPTS[@]}")
if [[ ${#REQS[@]} -gt 0 ]]; then
    run "${PIP[@]}" "${REQS[@]}"
fi
# --no-deps: qverify's own dependency list is the host's (onnx, onnxruntime, typer...).
# --force-reinstall: a rebuilt wheel of the same version still replaces the old one.
run "${PIP[@]}" --no-deps --force-reinstall "$PACKAGE"
# -I: isolated, so a qverify/ folder in the current directory cannot stand in for it.
if ! run "$VENV/bin/python" -I -c 'import qverify.agent' \
    || [[ $DRY_RUN == 0 && ! -x $VENV/bin/qverify-agent ]]; then
    die "qverify-agent is not installed in $VENV: is $PACKAGE qverify (0.1 or newer, with the agent)?"
fi

# ------------------------------------------------------------------------------ systemd
render_unit() {
    local venv_escaped=${VENV//\\/\\\\}
    venv_escaped=${venv_escaped//&/\\&}
    venv_escaped=${venv_escaped//|/\\|}
    sed "s|/opt/qverify/venv|$venv_escaped|g" "$SYSTEMD_SRC/qverify-agent.service"
}

# Write stdin to $1 with mode $2 unless it already holds exactly that; atomic.
put_file() {
    local dest=$1 mode=$2 content
    content=$(cat; printf x)
    content=${content%x}
    if [[ -f $dest ]] && [[ $(cat "$dest"; printf x) == "${content}x" ]]; then
        say "$dest is up to date"
        return 1
    fi
    if [[ $DRY_RUN == 1 ]]; then
        say "would write $dest (mode $mode)"
    else
        say "writing $dest (mode $mode)"
        printf '%s' "$content" >"$dest.new"
        chmod "$mode" "$dest.new"
        mv -f "$dest.new" "$dest"
    fi
}

if [[ $SYSTEMD == yes ]]; then
    run install -d -m 0755 "$UNIT_DIR"
    unit_changed=0
    if render_unit | put_file "$UNIT_DIR/$UNIT_NAME" 0644; then
        unit_changed=1
    fi
    if [[ $CREATE_USER == 1 ]]; then
        run install -d -m 0750 -g "$AGENT_USER" "$CONF_DIR"
    else
        run install -d -m 0750 "$CONF_DIR"
    fi
    put_file "$CONF_DIR/agent.env.example" 0644 <"$SYSTEMD_SRC/agent.env.example" || true
    if [[ -d /run/systemd/system ]]; then
        if [[ $unit_changed == 1 ]]; then
            run systemctl daemon-reload
        fi
        if [[ $ENABLE == 1 ]]; then
            run systemctl enable "$UNIT_NAME"
            run systemctl restart "$UNIT_NAME"
        elif systemctl is-active --quiet "$UNIT_NAME"; then
            say "qverify-agent is running the old code until: systemctl restart qverify-agent"
        fi
    fi
fi

if [[ $DRY_RUN == 1 ]]; then
    say "dry run done: nothing was changed"
else
    say "installed: $VENV/bin/qverify-agent"
    if [[ $SYSTEMD == yes && $ENABLE == 0 ]]; then
        say "next: settings in $CONF_DIR/agent.env (see agent.env.example), then: systemctl enable --now qverify-agent"
    fi
fi
