#!/usr/bin/env bash
# Generate SuperNode authentication key pairs (one per community).
#
# Each SuperNode signs its requests with a private elliptic-curve key (NIST P-384, OpenSSH
# format, as `flower-supernode --auth-supernode-private-key` expects). The SuperLink only
# accepts SuperNodes whose public key was registered with `flwr supernode register`
# (deploy/register_supernodes.sh does that for a directory of keys).
#
# Usage: generate_node_keys.sh [--out DIR] NAME...
#   writes DIR/NAME (private key, mode 600) and DIR/NAME.pub (public key) for each NAME;
#   existing pairs are kept. DIR defaults to deploy/keys next to this script.
#   Example: generate_node_keys.sh supernode-1 supernode-2 supernode-3
#
# A community on another machine runs this script there and sends only NAME.pub to the
# operator of the SuperLink; the private key never leaves the community's machine.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="${script_dir}/keys"
names=()

die() {
    echo "generate_node_keys.sh: error: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out_dir="${2:?--out needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1'" ;;
        *) names+=("$1"); shift ;;
    esac
done
[[ ${#names[@]} -gt 0 ]] || die "no key names given; usage: $(basename "$0") [--out DIR] NAME..."
for name in "${names[@]}"; do
    [[ "${name}" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
        || die "key name '${name}': allowed: letters, digits, '.', '_' and '-' (no '/')"
done

mkdir -p "${out_dir}"
umask 077
for name in "${names[@]}"; do
    key="${out_dir}/${name}"
    if [[ -f "${key}" && -f "${key}.pub" ]]; then
        echo "Keeping existing key pair ${key}{,.pub}"
        continue
    fi
    rm -f "${key}" "${key}.pub"
    if command -v ssh-keygen >/dev/null; then
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "${name}" -f "${key}"
    else
        # Same format without OpenSSH installed: the `cryptography` package ships with flwr.
        python3 - "${key}" "${name}" <<'EOF'
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

path, comment = Path(sys.argv[1]), sys.argv[2]
key = ec.generate_private_key(ec.SECP384R1())
path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()))
pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                    serialization.PublicFormat.OpenSSH)
Path(f"{path}.pub").write_bytes(pub + b" " + comment.encode() + b"\n")
EOF
    fi
    chmod 600 "${key}"
    chmod 644 "${key}.pub"
    echo "Wrote ${key} (private, keep on the community's machine) and ${key}.pub"
done
