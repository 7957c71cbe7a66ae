#!/usr/bin/env bash
# Generate the TLS material of a fedcascade deployment with openssl.
#
# Creates, in OUT_DIR (default: deploy/certs next to this script):
#   ca.crt / ca.key              a private certificate authority (keep ca.key offline)
#   superlink.pem / .key         the SuperLink's certificate (Fleet, Control and Runtime API,
#                                which Flower 1.42 serves on one HTTPS port)
#   supernode.pem / .key         the certificate of each SuperNode's Runtime API, which its
#                                ClientApp SuperExec connects to
# Every certificate is signed by ca.crt, so SuperNodes, SuperExecs and `flwr` only need
# ca.crt (never a private key) to verify the server they talk to.
#
# Subject alternative names (SANs) cover the docker-compose hostnames (superlink, supernode and
# supernode-1..N), localhost, 127.0.0.1 and ::1. Add the public name or
# address SuperNodes on other machines use to reach the SuperLink with --san.
#
# Existing files are kept (the script is idempotent) unless --force is given.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="${script_dir}/certs"
days=365
num_supernodes=3
extra_sans=()
force=0
owner=""

usage() {
    cat <<EOF
Usage: $(basename "$0") [--out DIR] [--supernodes N] [--san SAN]... [--days D] [--owner UID[:GID]] [--force]

  --out DIR         where to write the files (default: ${script_dir}/certs)
  --supernodes N    SANs for supernode-1 .. supernode-N in the SuperNode certificate (default: 3)
  --san SAN         extra SAN for the SuperLink certificate, e.g. DNS:fl.example.org or
                    IP:203.0.113.7 (repeatable); needed when SuperNodes on other machines
                    connect to the SuperLink by that name or address
  --days D          validity in days (default: 365)
  --owner UID:GID   chown the files (the Flower images run as uid 49999; needs root)
  --force           overwrite existing files (all certificates are re-issued)
EOF
}

die() {
    echo "generate_certs.sh: error: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out_dir="${2:?--out needs a directory}"; shift 2 ;;
        --supernodes) num_supernodes="${2:?--supernodes needs a number}"; shift 2 ;;
        --san) extra_sans+=("${2:?--san needs a value such as DNS:host or IP:1.2.3.4}"); shift 2 ;;
        --days) days="${2:?--days needs a number}"; shift 2 ;;
        --owner) owner="${2:?--owner needs UID[:GID]}"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
done

[[ "${num_supernodes}" =~ ^[0-9]+$ ]] || die "--supernodes: got '${num_supernodes}'; allowed: a whole number >= 0"
[[ "${days}" =~ ^[1-9][0-9]*$ ]] || die "--days: got '${days}'; allowed: a whole number >= 1"
for san in "${extra_sans[@]+"${extra_sans[@]}"}"; do
    [[ "${san}" =~ ^(DNS|IP):[^,[:space:]]+$ ]] \
        || die "--san: got '${san}'; allowed: DNS:<name> or IP:<address> (one per --san)"
done
command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"

mkdir -p "${out_dir}"
if [[ -f "${out_dir}/ca.crt" && "${force}" -eq 0 ]]; then
    echo "Certificates already exist in ${out_dir}; keeping them (use --force to re-issue)."
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
# Private keys are created readable by the owner only.
umask 077

# Elliptic-curve keys (P-256): quick to generate and supported by every TLS stack Flower uses.
new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# 1. Certificate authority.
new_key "${out_dir}/ca.key"
openssl req -x509 -new -key "${out_dir}/ca.key" -sha256 -days "${days}" \
    -subj "/O=fedcascade/CN=fedcascade deployment CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "${out_dir}/ca.crt"

# 2. A server certificate signed by the CA: issue NAME CN SAN_LIST.
issue() {
    local name="$1" cn="$2" sans="$3"
    new_key "${out_dir}/${name}.key"
    openssl req -new -key "${out_dir}/${name}.key" -subj "/O=fedcascade/CN=${cn}" \
        -out "${work}/${name}.csr"
    cat >"${work}/${name}.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=${sans}
EOF
    openssl x509 -req -in "${work}/${name}.csr" -CA "${out_dir}/ca.crt" \
        -CAkey "${out_dir}/ca.key" -CAcreateserial -CAserial "${work}/ca.srl" \
        -days "${days}" -sha256 -extfile "${work}/${name}.ext" \
        -out "${out_dir}/${name}.pem" 2>/dev/null
}

local_sans="DNS:localhost,IP:127.0.0.1,IP:::1"
superlink_sans="DNS:superlink,${local_sans}"
for san in "${extra_sans[@]+"${extra_sans[@]}"}"; do
    superlink_sans="${superlink_sans},${san}"
done
issue superlink superlink "${superlink_sans}"

supernode_sans="DNS:supernode,${local_sans}"
for ((i = 1; i <= num_supernodes; i++)); do
    supernode_sans="${supernode_sans},DNS:supernode-${i}"
done
issue supernode supernode "${supernode_sans}"

# Certificates are public; keys stay private to the owner.
chmod 644 "${out_dir}/ca.crt" "${out_dir}/superlink.pem" "${out_dir}/supernode.pem"
chmod 600 "${out_dir}/ca.key" "${out_dir}/superlink.key" "${out_dir}/supernode.key"
if [[ -n "${owner}" ]]; then
    chown "${owner}" "${out_dir}"/ca.crt "${out_dir}"/superlink.* "${out_dir}"/supernode.* \
        || die "could not chown to '${owner}' (run as root, or omit --owner)"
fi

openssl verify -CAfile "${out_dir}/ca.crt" "${out_dir}/superlink.pem" "${out_dir}/supernode.pem" >/dev/null \
    || die "the new certificates do not verify against ca.crt"
echo "Wrote CA, SuperLink and SuperNode certificates to ${out_dir}"
echo "  SuperLink SANs: ${superlink_sans}"
echo "  SuperNode SANs: ${supernode_sans}"
