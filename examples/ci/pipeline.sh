#!/usr/bin/env bash
# The image pipeline of examples/ci/ — run by the GitHub Actions workflow
# (github-actions.yml), the GitLab CI file (gitlab-ci.yml) and, on your machine,
# `cargo xtask ci-example`: the same steps everywhere.
#
#   examples/ci/pipeline.sh [RECIPE]        (default recipes/echo-microvm.toml)
#
# 1. installs the Debian packages a microvm build and smoke need (as root; else says
#    which are missing),
# 2. builds beambake (unless BEAMBAKE names a binary; without libvirt support, which an
#    image pipeline does not use, so libvirt-dev is not needed),
# 3. builds the image (`beambake build --json` -> build.json),
# 4. boots it and runs its checks (`beambake smoke DIR --junit junit.xml --json`
#    -> smoke.json),
# 5. leaves in $BEAMBAKE_CI_OUT (default ci-artifacts/): the image directory (kernel,
#    initramfs, boot.json, manifest.json with the sha256 of every artefact and input),
#    build.json, smoke.json and junit.xml — what the CI files keep as artefacts.
#
# Exits with beambake's exit code (see README.md, "Exit codes and CI output").
set -euo pipefail
cd "$(dirname "$0")/../.."

RECIPE=${1:-recipes/echo-microvm.toml}
OUT=${BEAMBAKE_CI_OUT:-ci-artifacts}
PACKAGES=(erlang-nox erlang-dev rebar3 gcc qemu-system-x86)

say() { echo "pipeline: $*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        say "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)"
        exit 6
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

if [ -z "${BEAMBAKE:-}" ]; then
    say "building beambake"
    cargo build --release -q -p beambake --no-default-features
    BEAMBAKE=$PWD/target/release/beambake
fi

rm -rf "$OUT"
mkdir -p "$OUT/images"
say "building $RECIPE"
"$BEAMBAKE" build "$RECIPE" --out "$OUT/images" --json >"$OUT/build.json"
dir=$(find "$OUT/images" -mindepth 2 -maxdepth 2 -name boot.json -printf '%h\n' | head -1)
[ -n "$dir" ] || { say "no image directory under $OUT/images"; exit 3; }
say "smoke-testing $dir"
status=0
"$BEAMBAKE" smoke "$dir" --junit "$OUT/junit.xml" --json >"$OUT/smoke.json" || status=$?
say "done (exit $status): artefacts in $OUT"
exit "$status"
