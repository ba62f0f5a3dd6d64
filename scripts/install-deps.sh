#!/usr/bin/env bash
# Installs the Debian packages mixtral.cpp needs, skipping those already present.
# Idempotent; run as root (or with sudo available). Nothing is downloaded but Debian packages.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config     # toolchain
  libgtest-dev                         # unit tests
  libcli11-dev                         # command line
  nlohmann-json3-dev                   # config.json, safetensors headers, test fixtures
  libcpp-httplib-dev                   # mixtral serve
  nodejs                               # the official openai client in the server tests
  libsentencepiece-dev                 # the tokenizer trainer of mixtral train
  python3 python3-numpy                # ../shared/fixtures generators (tests only)
  python3-torch                        # the independent PyTorch reference of the training tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
