#!/usr/bin/env bash
# Run brevitas-apq in its Docker image (docker/Dockerfile), in the spirit of upstream FINN's
# run-docker.sh: the image is built when missing, this checkout is mounted at its own path, the
# Xilinx tools are mounted read-only from the host, and the command runs as the calling user.
#
# Usage:
#   docker/run.sh                          an interactive shell
#   docker/run.sh test [PYTEST_ARGS...]    the whole test suite: python -m pytest --runslow, which
#                                          includes the 'vivado' tests (cppsim, rtlsim) when the
#                                          Xilinx tools are mounted (they set XILINX_VIVADO)
#   docker/run.sh build MODEL --board B [--out OUT] [ARGS...]
#                                          the full flow to bitfile and deployment package:
#                                          apq build MODEL --board B ... (MODEL: a QONNX file
#                                          or a run directory; paths outside the checkout are
#                                          mounted, relative ones made absolute)
#   docker/run.sh CMD [ARGS...]            any other command, as given
#
# Environment:
#   FINN_XILINX_PATH, FINN_XILINX_VERSION  the host's Xilinx install (e.g. /tools/Xilinx, 2024.2)
#   FINN_HOST_BUILD_DIR    FINN's build folder, mounted at the same path (default
#                          /tmp/finn_dev_<user>; keeps finn_xsi and FINN's temporary files)
#   APQ_DOCKER_TAG         image tag (default: brevitas-apq-finn:<hash of the image's inputs>)
#   APQ_DOCKER_PREBUILT=1  never build; use APQ_DOCKER_TAG as it is
#   APQ_TORCH_INDEX        index of the torch CPU wheel (default PyTorch's CPU index)
#   APQ_DOCKER_BUILD_EXTRA, APQ_DOCKER_EXTRA   extra words for docker build / docker run
#   APQ_DOCKER_RUN_AS_ROOT=1   run as root instead of the calling user
#   DOCKER                 the docker command (default: docker)
set -euo pipefail

die() {
    printf 'docker/run.sh: error: %s\n' "$*" >&2
    exit 2
}
note() { printf 'docker/run.sh: %s\n' "$*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
docker_bin=${DOCKER:-docker}

# --- a Docker engine, or a clear message ------------------------------------------------------
if ! command -v "$docker_bin" >/dev/null 2>&1; then
    die "the '$docker_bin' command was not found. Install Docker (engine and CLI) to use this" \
        "script; nothing was built or run."
fi
if ! info_err=$("$docker_bin" info 2>&1 >/dev/null); then
    first_line=$(printf '%s\n' "$info_err" | grep -m1 . || true)
    die "cannot reach a Docker engine ('$docker_bin info' failed: ${first_line:-no output})." \
        "A Docker CLI alone is not enough: start the Docker daemon or use a machine that has" \
        "one. Nothing was built or run."
fi

# --- the image ----------------------------------------------------------------------------------
# The tag hashes everything the image is built from except the sources (which are mounted), so
# a change of the environment (pyproject, constraints, Dockerfile...) builds a new image.
image_inputs=(docker/Dockerfile docker/Dockerfile.dockerignore docker/entrypoint.sh
    docker/fetch_finn_deps.py pyproject.toml constraints.txt scripts/setup-env.sh)
if [ -z "${APQ_DOCKER_TAG:-}" ]; then
    inputs_hash=$(cd "$repo" && cat "${image_inputs[@]}" | sha256sum | cut -c1-12)
    APQ_DOCKER_TAG="brevitas-apq-finn:$inputs_hash"
fi
read -r -a build_extra <<<"${APQ_DOCKER_BUILD_EXTRA:-}"
read -r -a run_extra <<<"${APQ_DOCKER_EXTRA:-}"

if [ "${APQ_DOCKER_PREBUILT:-0}" != "1" ] &&
    ! "$docker_bin" image inspect "$APQ_DOCKER_TAG" >/dev/null 2>&1; then
    note "building image $APQ_DOCKER_TAG (first use or changed environment; takes a while)"
    DOCKER_BUILDKIT=1 "$docker_bin" build \
        -f "$repo/docker/Dockerfile" \
        --build-arg "APQ_TORCH_INDEX=${APQ_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
        -t "$APQ_DOCKER_TAG" \
        "${build_extra[@]}" \
        "$repo"
fi

# --- the container ------------------------------------------------------------------------------
user_name=$(id -un 2>/dev/null || id -u)
host_build_dir=${FINN_HOST_BUILD_DIR:-/tmp/finn_dev_$user_name}
mkdir -p "$host_build_dir"
host_build_dir=$(cd "$host_build_dir" && pwd)
workdir=$repo
case "$PWD/" in "$repo"/*) workdir=$PWD ;; esac

# --init: Vivado can hang without an init process in the container (upstream FINN does this too).
run_args=(run --rm --init --hostname brevitas-apq-finn
    -v "$repo:$repo" -w "$workdir"
    -v "$host_build_dir:$host_build_dir"
    -e "FINN_BUILD_DIR=$host_build_dir"
    -e "HOME=$host_build_dir/home"
    -e "USER=$user_name"
    -e "PYTHONPATH=$repo"
    -e "SHELL=/bin/bash")
if [ -t 0 ] && [ -t 1 ]; then
    run_args+=(-it)
fi
if [ "${APQ_DOCKER_RUN_AS_ROOT:-0}" != "1" ] && [ "$(id -u)" != "0" ]; then
    run_args+=(--user "$(id -u):$(id -g)"
        -v /etc/passwd:/etc/passwd:ro -v /etc/group:/etc/group:ro)
fi

if [ -n "${FINN_XILINX_PATH:-}" ]; then
    [ -d "$FINN_XILINX_PATH" ] || die "FINN_XILINX_PATH=$FINN_XILINX_PATH is not a directory"
    [ -n "${FINN_XILINX_VERSION:-}" ] ||
        die "FINN_XILINX_PATH is set but FINN_XILINX_VERSION is not (e.g. 2024.2)"
    note "mounting Xilinx tools $FINN_XILINX_PATH (read-only), version $FINN_XILINX_VERSION"
    run_args+=(-v "$FINN_XILINX_PATH:$FINN_XILINX_PATH:ro"
        -e "FINN_XILINX_PATH=$FINN_XILINX_PATH"
        -e "FINN_XILINX_VERSION=$FINN_XILINX_VERSION"
        # FlexLM license checks in a container (the same workaround as upstream FINN's).
        -e "LD_PRELOAD=/lib/x86_64-linux-gnu/libudev.so.1")
    if [ -n "${XILINXD_LICENSE_FILE:-}" ]; then
        run_args+=(-e "XILINXD_LICENSE_FILE=$XILINXD_LICENSE_FILE")
    fi
else
    note "FINN_XILINX_PATH is not set: no Xilinx tools in the container (the 'vivado' tests" \
        "are skipped and FINN flows stop after code generation)"
fi

# mount_outside PATH MODE: mount PATH's folder (PATH itself for a folder) when it is outside the
# repository, which is mounted already.
mount_outside() {
    local path=$1 mode=$2 dir
    if [ -d "$path" ]; then dir=$(cd "$path" && pwd); else dir=$(cd "$(dirname "$path")" && pwd); fi
    case "$dir/" in "$repo"/*) return 0 ;; esac
    run_args+=(-v "$dir:$dir:$mode")
}

# absolute PATH: PATH made absolute (and canonical when its folder exists; PATH need not).
absolute() {
    local path=$1
    case "$path" in /*) ;; *) path="$PWD/$path" ;; esac
    if [ -d "$(dirname "$path")" ]; then
        path="$(cd "$(dirname "$path")" && pwd)/$(basename "$path")"
    fi
    printf '%s\n' "$path"
}

cmd=("$@")
case "${1:-}" in
    "")
        cmd=(bash)
        ;;
    test)
        shift
        cmd=(python -m pytest --runslow "$@")
        ;;
    build)
        shift
        [ "$#" -ge 1 ] || die "usage: docker/run.sh build MODEL [--board BOARD] [apq build options]"
        model=$(absolute "$1")
        shift
        [ -e "$model" ] || die "model $model does not exist"
        # rw: apq build writes next to a run directory (RUN_DIR/finn) or a model (MODEL_finn)
        # unless --out is given.
        mount_outside "$model" rw
        # Copy the options with the paths made absolute (the container's working directory is
        # the repository's, which need not be the caller's) and mounted when outside it.
        board="apq's default" out="apq's default, next to the model" args=()
        while [ "$#" -gt 0 ]; do
            arg=$1
            shift
            case "$arg" in
                --board | -b | --out | -o | --run | --folding)
                    [ "$#" -ge 1 ] || die "$arg needs a value"
                    value=$1
                    shift
                    ;;
                --board=* | --out=* | --run=* | --folding=*)
                    value=${arg#*=}
                    arg=${arg%%=*}
                    ;;
                *)
                    args+=("$arg")
                    continue
                    ;;
            esac
            case "$arg" in
                --board | -b)
                    board=$value
                    args+=(--board "$value")
                    ;;
                --out | -o)
                    out=$(absolute "$value")
                    mkdir -p "$out"
                    mount_outside "$out" rw
                    args+=(--out "$out")
                    ;;
                *)
                    value=$(absolute "$value")
                    [ -e "$value" ] || die "$arg $value does not exist"
                    mount_outside "$value" rw
                    args+=("$arg" "$value")
                    ;;
            esac
        done
        note "apq build $model (board: $board; output: $out)"
        cmd=(apq build "$model" "${args[@]}")
        ;;
esac

exec "$docker_bin" "${run_args[@]}" "${run_extra[@]}" "$APQ_DOCKER_TAG" "${cmd[@]}"
