#!/usr/bin/env bash
# Register SuperNode public keys with a SuperLink that runs with --enable-supernode-auth.
#
# Usage: register_supernodes.sh [--superlink HOST:PORT] [--ca CA.crt] [--connection NAME]
#                               [--wait SECONDS] [--connection-only] [KEY.pub | DIR]...
#   --superlink   address of the SuperLink (default 127.0.0.1:8000, the port docker-compose
#                 publishes on the host)
#   --ca          CA certificate that signed the SuperLink certificate
#                 (default: deploy/certs/ca.crt next to this script)
#   --connection  name of the SuperLink connection written to $FLWR_HOME/config.toml
#                 (default: fedcascade-deploy; `flwr run . fedcascade-deploy` then uses it)
#   --wait        seconds to wait for the SuperLink to accept connections (default 60)
#   --connection-only  only write the connection (docker-compose registers the keys itself)
#   KEY.pub/DIR   public keys to register; a directory means all its *.pub files
#                 (default: deploy/keys)
#
# Registering a key that is already registered is not an error, so the script can run at
# every start (docker-compose runs it as the one-shot service `register-supernodes`).
# It uses `flwr supernode register KEY.pub CONNECTION --name NAME`, NAME being the file name.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
superlink="127.0.0.1:8000"
ca="${script_dir}/certs/ca.crt"
connection="fedcascade-deploy"
wait_s=60
inputs=()
connection_only=0
python="${PYTHON:-$(command -v python3 || command -v python)}"

die() {
    echo "register_supernodes.sh: error: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --superlink) superlink="${2:?--superlink needs HOST:PORT}"; shift 2 ;;
        --ca) ca="${2:?--ca needs a file}"; shift 2 ;;
        --connection) connection="${2:?--connection needs a name}"; shift 2 ;;
        --wait) wait_s="${2:?--wait needs seconds}"; shift 2 ;;
        --connection-only) connection_only=1; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1'" ;;
        *) inputs+=("$1"); shift ;;
    esac
done
[[ ${#inputs[@]} -gt 0 ]] || inputs=("${script_dir}/keys")
[[ "${superlink}" =~ ^(\[[0-9a-fA-F:]+\]|[^:/[:space:]]+):[0-9]{1,5}$ ]] \
    || die "--superlink: got '${superlink}'; allowed: host:port, e.g. 127.0.0.1:8000"
[[ "${connection}" =~ ^[A-Za-z0-9_-]+$ ]] \
    || die "--connection: got '${connection}'; allowed: letters, digits, '_' and '-'"
[[ "${wait_s}" =~ ^[0-9]+$ ]] || die "--wait: got '${wait_s}'; allowed: whole seconds >= 0"
[[ -f "${ca}" ]] || die "--ca: got '${ca}'; the file does not exist (run deploy/generate_certs.sh)"
ca="$(cd "$(dirname "${ca}")" && pwd)/$(basename "${ca}")"  # flwr wants an absolute path

keys=()
[[ "${connection_only}" -eq 1 ]] && inputs=()
for input in "${inputs[@]}"; do
    if [[ -d "${input}" ]]; then
        shopt -s nullglob
        found=("${input}"/*.pub)
        shopt -u nullglob
        [[ ${#found[@]} -gt 0 ]] || die "no *.pub files in '${input}' (run deploy/generate_node_keys.sh)"
        keys+=("${found[@]}")
    elif [[ -f "${input}" ]]; then
        keys+=("${input}")
    else
        die "public key '${input}' does not exist"
    fi
done

# Add (or update) the named SuperLink connection in $FLWR_HOME/config.toml, leaving the
# user's other connections alone. tomli and tomli_w are dependencies of flwr.
"${python}" - "${connection}" "${superlink}" "${ca}" <<'EOF'
import os, sys
from pathlib import Path
import tomli, tomli_w

name, address, ca = sys.argv[1:4]
home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
path = home / "config.toml"
config = tomli.loads(path.read_text()) if path.exists() else {}
links = config.setdefault("superlink", {})
links.setdefault("default", name)
links[name] = {"address": address, "root-certificates": ca}
home.mkdir(parents=True, exist_ok=True)
path.write_text(tomli_w.dumps(config))
print(f"SuperLink connection '{name}' -> {address} (CA {ca}) in {path}")
EOF
[[ "${connection_only}" -eq 1 ]] && exit 0

host="${superlink%:*}"
host="${host#[}"
host="${host%]}"
port="${superlink##*:}"
deadline=$((SECONDS + wait_s))
until "${python}" -c "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()" \
    "${host}" "${port}" 2>/dev/null; do
    ((SECONDS < deadline)) || die "the SuperLink at ${superlink} did not accept connections within ${wait_s} s"
    sleep 1
done

failed=0
for key in "${keys[@]}"; do
    name="$(basename "${key}" .pub)"
    if out="$(flwr supernode register "${key}" "${connection}" --name "${name}" 2>&1)"; then
        echo "registered ${name} (${key})"
    elif grep -q "already in use" <<<"${out}"; then
        echo "already registered: ${name} (${key})"
    else
        echo "${out}" >&2
        echo "register_supernodes.sh: error: could not register '${key}'" >&2
        failed=1
    fi
done
exit "${failed}"
