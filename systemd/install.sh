#!/usr/bin/env bash
# Install cctv-optimizer as a systemd service: system user, virtualenv, unit, /etc files, API token.
#
# Usage: install.sh [--root DIR] [--prefix DIR] [--etc DIR] [--unit-dir DIR] [--source DIR|WHEEL]
#                   [--python PYTHON] [--pip-args "ARGS"] [--no-user] [--no-systemctl]
# Run it as root. It is idempotent: a second run upgrades the package and changes nothing else; the env
# file and the API token are never overwritten. --root DIR stages the whole install inside DIR (the paths
# above become DIR/opt/..., DIR/etc/...) and touches nothing else on the host: no user, no systemctl, no
# chown; it needs no root. The virtualenv's scripts name their DIR paths, so a staged root is for checking
# an install (check-config, the tests) rather than for copying elsewhere.
set -euo pipefail

readonly SERVICE=cctv-optimizer
readonly DEFAULT_PREFIX=/opt/cctv-optimizer
readonly DEFAULT_ETC=/etc/cctv-optimizer

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=""
prefix=$DEFAULT_PREFIX
etc=$DEFAULT_ETC
unit_dir=/etc/systemd/system
source=$(dirname -- "$script_dir")
python=python3
pip_args=""
create_user=1
run_systemctl=1

usage() {
    cat <<EOF
Usage: $0 [options]

Installs cctv-optimizer into its own virtualenv and registers the systemd unit.

  --root DIR         stage everything inside DIR, touching nothing else on the host (implies
                     --no-user --no-systemctl; --prefix, --etc and --unit-dir are then inside DIR)
  --prefix DIR       install root; the virtualenv goes to DIR/venv      (default: $DEFAULT_PREFIX)
  --etc DIR          configuration directory: env file and api-token   (default: $DEFAULT_ETC)
  --unit-dir DIR     where the unit file goes                          (default: /etc/systemd/system)
  --source PATH      project directory or built wheel to install       (default: $source)
  --python PYTHON    interpreter (>= 3.11) that creates the virtualenv (default: python3)
  --pip-args "ARGS"  extra arguments for pip install, split on spaces (e.g. "--no-index --find-links DIR")
  --no-user          do not create the system user $SERVICE
  --no-systemctl     do not run systemctl daemon-reload
  -h, --help         show this help
EOF
}

log() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

# Fail unless option $1 has a non-empty value ($2 is the number of arguments left, $3 the next one).
need_value() {
    if (($2 < 2)) || [[ -z ${3-} ]]; then
        die "$1 needs a value"
    fi
}

while (($# > 0)); do
    case $1 in
        --root=*) root=${1#*=} ;;
        --prefix=*) prefix=${1#*=} ;;
        --etc=*) etc=${1#*=} ;;
        --unit-dir=*) unit_dir=${1#*=} ;;
        --source=*) source=${1#*=} ;;
        --python=*) python=${1#*=} ;;
        --pip-args=*) pip_args=${1#*=} ;;
        --root)
            need_value "$1" $# "${2-}"
            root=$2
            shift
            ;;
        --prefix)
            need_value "$1" $# "${2-}"
            prefix=$2
            shift
            ;;
        --etc)
            need_value "$1" $# "${2-}"
            etc=$2
            shift
            ;;
        --unit-dir)
            need_value "$1" $# "${2-}"
            unit_dir=$2
            shift
            ;;
        --source)
            need_value "$1" $# "${2-}"
            source=$2
            shift
            ;;
        --python)
            need_value "$1" $# "${2-}"
            python=$2
            shift
            ;;
        --pip-args)
            (($# >= 2)) || die "--pip-args needs a value"
            pip_args=$2
            shift
            ;;
        --no-user) create_user=0 ;;
        --no-systemctl) run_systemctl=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
    shift
done

# A staged install: every path inside the root, and nothing done to the host itself.
if [[ -n $root ]]; then
    [[ $root =~ ^/[A-Za-z0-9._/@+-]*$ ]] || die "--root must be an absolute path without spaces or special characters: '$root'"
    root=${root%/}
    prefix=$root$prefix
    etc=$root$etc
    unit_dir=$root$unit_dir
    create_user=0
    run_systemctl=0
fi

# These paths end up in unit directives and sed replacements: keep them to characters that need no quoting.
for path_var in prefix etc unit_dir; do
    value=${!path_var}
    value=${value%/}
    [[ $value =~ ^/[A-Za-z0-9._/@+-]*$ ]] || die "--${path_var//_/-} must be an absolute path without spaces or special characters: '${!path_var}'"
    printf -v "$path_var" '%s' "$value"
done

if [[ -d $source ]]; then
    source=$(cd -- "$source" && pwd)
    [[ -f $source/pyproject.toml ]] || die "--source $source has no pyproject.toml"
elif [[ -f $source && $source == *.whl ]]; then
    source=$(cd -- "$(dirname -- "$source")" && pwd)/$(basename -- "$source")
else
    die "--source must be the project directory or a .whl file: '$source'"
fi

unit_template=$script_dir/$SERVICE.service
env_template=$script_dir/$SERVICE.env.example
[[ -f $unit_template && -f $env_template ]] || die "unit or env template missing next to $0"

if ((create_user || run_systemctl)) && ((EUID != 0)); then
    die "run as root (a staging install without root needs --no-user --no-systemctl)"
fi

command -v "$python" >/dev/null 2>&1 || die "python interpreter not found: $python"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$python is older than Python 3.11"

# The service user must be able to read the virtualenv whatever umask the operator's shell has.
umask 022
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

# Replace DEST with SRC (mode MODE) only when the content differs, atomically, so a repeated run leaves
# files and their timestamps alone.
install_if_changed() {
    local src=$1 dest=$2 mode=$3 tmp
    if [[ -f $dest ]] && cmp -s -- "$src" "$dest"; then
        log "unchanged: $dest"
        return 0
    fi
    tmp=$(mktemp "$(dirname -- "$dest")/.$(basename -- "$dest").XXXXXX")
    cat -- "$src" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f -- "$tmp" "$dest"
    log "installed: $dest"
}

# 1. The system user and group that the unit runs as.
if ((create_user)); then
    if getent passwd "$SERVICE" >/dev/null; then
        log "user $SERVICE exists"
    else
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --user-group --home-dir "/var/lib/$SERVICE" --no-create-home \
            --shell "$nologin" --comment "cctv-optimizer daemon" "$SERVICE"
        log "created system user $SERVICE"
    fi
fi

# 2. The virtualenv and the package.
venv=$prefix/venv
install -d -m 0755 -- "$prefix"
if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    log "virtualenv exists: $venv"
else
    # --clear: a virtualenv whose interpreter vanished (a Python upgrade) is rebuilt rather than patched.
    "$python" -m venv --clear -- "$venv"
    log "created virtualenv: $venv"
fi
read -r -a pip_extra <<<"$pip_args"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input "${pip_extra[@]}" -- "$source"
[[ -x $venv/bin/$SERVICE ]] || die "pip did not install the console script $venv/bin/$SERVICE"
log "installed package into $venv"

# 3. The unit, pointed at this prefix and configuration directory.
install -d -m 0755 -- "$unit_dir"
sed -e "s|^ExecStart=.*|ExecStart=$venv/bin/$SERVICE run|" \
    -e "s|^EnvironmentFile=-$DEFAULT_ETC/env\$|EnvironmentFile=-$etc/env|" \
    -e "s|^LoadCredential=api-token:$DEFAULT_ETC/api-token\$|LoadCredential=api-token:$etc/api-token|" \
    -- "$unit_template" >"$work/$SERVICE.service"
install_if_changed "$work/$SERVICE.service" "$unit_dir/$SERVICE.service" 0644

# 4. Configuration: the example is refreshed on every run; the live env file and the token never are.
install -d -m 0755 -- "$etc"
install_if_changed "$env_template" "$etc/env.example" 0644
if [[ -e $etc/env ]]; then
    log "kept existing $etc/env"
else
    install_if_changed "$env_template" "$etc/env" 0640
fi

token=$etc/api-token
if [[ -e $token ]]; then
    log "kept existing $token"
    if [[ $(stat -c '%a' -- "$token") =~ [1-7]$ ]]; then
        log "warning: $token is readable by everyone; chmod 0640 it"
    fi
else
    tmp=$(mktemp "$etc/.api-token.XXXXXX")
    # 32 random bytes as hex, no trailing newline, so a reader that does not strip still gets the token.
    "$venv/bin/python" -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' >"$tmp"
    chmod 0640 "$tmp"
    if [[ -n $root ]]; then
        log "staged install: $token keeps group $(id -gn) (chgrp $SERVICE it on the real host)"
    elif getent group "$SERVICE" >/dev/null; then
        chown "root:$SERVICE" "$tmp"
    else
        log "group $SERVICE does not exist; $token keeps group $(id -gn)"
    fi
    mv -f -- "$tmp" "$token"
    log "generated API token: $token"
fi

# 5. The record of where things went: the installed command finds its env file, unit and token through it.
cat >"$work/install-record" <<EOF
# Written by install.sh: where cctv-optimizer was installed (read by check-config and the CLI).
ROOT=$root
PREFIX=$prefix
ETC=$etc
UNIT_DIR=$unit_dir
EOF
install_if_changed "$work/install-record" "$venv/$SERVICE.install" 0644

# 6. Tell systemd about the (possibly changed) unit.
if ((run_systemctl)); then
    if [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
        log "systemctl daemon-reload done"
    else
        log "systemd is not running here; skipped daemon-reload"
    fi
fi

if [[ -n $root ]]; then
    cat <<EOF

cctv-optimizer is staged in $root (nothing outside it was touched: no user, no systemctl).
Check the staged configuration as the service would run it:
  $venv/bin/$SERVICE check-config --user nobody
EOF
    exit 0
fi

cat <<EOF

cctv-optimizer is installed. Next steps:
  1. Review $etc/env (every setting and its default is listed there), in particular
     CCTV_OPTIMIZER_BACKEND__DATABASE and the backend admin login.
  2. Let the daemon reach the backend's files: add $SERVICE to the group shared by the backend and MediaMTX
     (usermod -aG GROUP $SERVICE), make the data and HLS directories group-writable and setgid (chmod g+ws,
     so new files keep the group), the database group-writable, and run MediaMTX under UMask=0002. If they
     are not /opt/rafnet-cctv/backend/data and /dev/shm/mediamtx-live, override ReadWritePaths= with
     'systemctl edit $SERVICE'. A backend under /root or /home is hidden by the unit's ProtectHome=yes.
     The README's "File access" section and docs/SAFETY.md have the commands.
  3. Check what the service will run with (the env file, the unit's user, every file it names):
     $venv/bin/$SERVICE check-config
  4. Start it:  systemctl enable --now $SERVICE    (already running: systemctl restart $SERVICE)
  5. Verify:    systemctl status $SERVICE; $venv/bin/$SERVICE status
     The CLI finds the token in $token (readable by root and the $SERVICE group).
EOF
