#!/usr/bin/env bash
# Local equivalents of Flower's official images, for hosts that cannot pull from Docker Hub:
# fedad-flower/{superlink,supernode,superexec}:<FLWR_VERSION>, from one local Python base,
# flwr pinned to the version this project resolves. Then
#   FLWR_IMAGES=fedad-flower docker compose up -d --build
# uses them (the app's image is built on fedad-flower/superexec).
#
#   deploy/build_flower_images.sh [--base IMAGE] [--version X.Y.Z] [--ca FILE]
#
# --base     a Python 3 image with venv (default: python:3.11-slim when it is present or can
#            be pulled, else a Debian bookworm base made here with debootstrap and imported
#            as fedad-base:bookworm; debootstrap needs root and reaches Debian's mirror)
# --version  flwr version (default: the one installed beside this checkout, `flwr --version`)
# --ca       a CA bundle the package downloads need (a build secret, in no layer); default:
#            $BUILD_CA_BUNDLE if set
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base="" version="" ca="${BUILD_CA_BUNDLE:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build_flower_images: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "build_flower_images: error: $*" >&2; exit 1; }
docker version >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running?)"
if [ -z "$version" ]; then
  version="$(python3 -c 'from importlib.metadata import version; print(version("flwr"))' 2>/dev/null)" \
    || die "flwr is not installed here; pass --version X.Y.Z"
fi
if [ -z "$base" ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 \
      || docker pull -q python:3.11-slim >/dev/null 2>&1; then
    base=python:3.11-slim
  else
    base=fedad-base:bookworm
    if ! docker image inspect "$base" >/dev/null 2>&1; then
      command -v debootstrap >/dev/null || die "python:3.11-slim cannot be pulled and debootstrap is missing (apt-get install debootstrap), or pass --base IMAGE"
      rootfs="$(mktemp -d)"
      trap 'rm -rf "$rootfs"' EXIT
      echo "build_flower_images: making $base with debootstrap (about a minute)"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 \
        || die "debootstrap failed; see $rootfs.log"
      tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
    fi
  fi
fi
secret=()
if [ -n "$ca" ]; then
  [ -f "$ca" ] || die "CA bundle $ca not found"
  secret=(--secret "id=ca,src=$ca")
fi
for target in superlink supernode superexec; do
  echo "build_flower_images: fedad-flower/$target:$version on $base"
  DOCKER_BUILDKIT=1 docker build -q --target "$target" --build-arg "PYTHON_IMAGE=$base" \
    --build-arg "FLWR_VERSION=$version" "${secret[@]}" -t "fedad-flower/$target:$version" \
    "$here/flower" >/dev/null || die "building fedad-flower/$target:$version failed"
done
echo "build_flower_images: done; use them with FLWR_IMAGES=fedad-flower FLWR_VERSION=$version"
