#!/usr/bin/env bash
# A site base image for the Dockerfile's PYTHON_IMAGE, made from Debian's packages only (no image registry):
# Debian bookworm's Python 3.11 with venv and pip, plus the site's own CA certificates, for a hospital whose
# traffic to PyPI or its mirror goes through a TLS-inspecting proxy. Prints the image's tag (last line of stdout).
#
#   deploy/docker/site-base-image.sh                       # the CAs in /usr/local/share/ca-certificates
#   COVIDSEG_SITE_CA="/etc/pki/site-root.crt" deploy/docker/site-base-image.sh
#   docker build --build-arg PYTHON_IMAGE="$(deploy/docker/site-base-image.sh)" -t covidseg:cpu .
#
# The tag names a hash of this script and of the CA files, so an unchanged site reuses the image it made before.
# Needs root, mmdebstrap and a Docker engine; the packages come from the host's apt mirror (MMDEBSTRAP_MIRROR to
# choose another).
set -euo pipefail
suite=bookworm
# the site's CA certificates (PEM, one file each): by default those the host itself trusts beyond Debian's set
host_cas="$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | sort | tr '\n' ' ')"
read -r -a cas <<<"${COVIDSEG_SITE_CA:-$host_cas}"
hash=$(cat "$0" "${cas[@]}" /dev/null | sha256sum | cut -c1-12)
tag="${COVIDSEG_SITE_BASE_TAG:-covidseg-site-base}:$suite-$hash"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
hooks=()
for ca in "${cas[@]}"; do
    hooks+=(--customize-hook="copy-in $ca /usr/local/share/ca-certificates/")
done
echo "building $tag from Debian $suite (site CAs: ${cas[*]:-none})" >&2
# --variant=apt: essential packages, apt and what --include names; no docs or caches kept in the image
mmdebstrap --quiet --variant=apt --include=python3,python3-venv,python3-pip,ca-certificates,python-is-python3 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "${hooks[@]}" \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" - ${MMDEBSTRAP_MIRROR:-} \
    | docker import \
        --change 'ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' \
        --message "covidseg site base: Debian $suite python3 + site CAs" - "$tag" >&2
echo "$tag"
