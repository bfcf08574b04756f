#!/usr/bin/env bash
# Entry point of the brevitas-apq Docker image (docker/Dockerfile); also runs outside Docker.
#
# 1. Xilinx tools, mounted from the host as upstream FINN does: sources
#    $FINN_XILINX_PATH/Vivado/$FINN_XILINX_VERSION/settings64.sh, then Vitis_HLS and Vitis of the
#    same version when present (the 2025.1+ layout $FINN_XILINX_PATH/$FINN_XILINX_VERSION/<Tool>
#    is found too), sets XILINX_VIVADO (and XILINX_HLS) accordingly and puts the Xilinx
#    simulation libraries on LD_LIBRARY_PATH (finn_xsi dlopens them in-process, so they must be
#    there when Python starts). Without the tools the command still runs, with a note.
# 2. finn-plus settings for its Python API: FINN_BUILD_DIR (created), FINN_SETTINGS (a private
#    file, so FINN never writes ~/.finn), FINN_RTLLIB / FINN_CUSTOM_HLS, FINN_DEPS is reported.
# 3. With Vivado present: builds finn-plus's XSI extension (python -m finn.xsi.setup; a no-op
#    when it is already built for this Vivado version) in a writable copy under FINN_BUILD_DIR
#    (FINN_XSI), so it works as a non-root user and is kept across runs when FINN_BUILD_DIR is
#    mounted from the host (docker/run.sh does).
# 4. exec "$@" (default: bash).
#
# Environment (all optional): FINN_XILINX_PATH, FINN_XILINX_VERSION, FINN_BUILD_DIR, FINN_DEPS,
# FINN_XSI (use this XSI folder as it is), APQ_SKIP_XSI_BUILD=1 (skip step 3),
# APQ_PYTHON (the Python to use, default python3), APQ_ENTRYPOINT_QUIET=1 (no notes).
set -euo pipefail

note() {
    if [ "${APQ_ENTRYPOINT_QUIET:-0}" != "1" ]; then
        printf '[apq-entrypoint] %s\n' "$*" >&2
    fi
}

xilinx_path=${FINN_XILINX_PATH:-}
xilinx_version=${FINN_XILINX_VERSION:-}
python_bin=${APQ_PYTHON:-python3}

# tool_dir TOOL: the folder of TOOL (Vivado, Vitis_HLS, Vitis) for FINN_XILINX_VERSION that has a
# settings64.sh, in the classic layout PATH/TOOL/VERSION or the 2025.1+ layout PATH/VERSION/TOOL.
tool_dir() {
    local dir
    [ -n "$xilinx_path" ] && [ -n "$xilinx_version" ] || return 1
    for dir in "$xilinx_path/$1/$xilinx_version" "$xilinx_path/$xilinx_version/$1"; do
        if [ -f "$dir/settings64.sh" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

# source_settings FILE: Xilinx's settings64.sh scripts are not written for `set -eu`.
source_settings() {
    set +eu
    # shellcheck source=/dev/null
    . "$1"
    set -eu
}

prepend_ld_path() {
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$1:"*) ;;
        *) export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
}

# --- 1. Xilinx tools -------------------------------------------------------------------------
vivado_dir=""
if [ -z "$xilinx_path" ] || [ -z "$xilinx_version" ]; then
    note "Xilinx tools: FINN_XILINX_PATH/FINN_XILINX_VERSION not set"
elif [ ! -d "$xilinx_path" ]; then
    note "Xilinx tools: FINN_XILINX_PATH=$xilinx_path does not exist (not mounted?)"
elif vivado_dir=$(tool_dir Vivado); then
    source_settings "$vivado_dir/settings64.sh"
    export XILINX_VIVADO="${XILINX_VIVADO:-$vivado_dir}"
    note "Vivado $xilinx_version: sourced $vivado_dir/settings64.sh (XILINX_VIVADO=$XILINX_VIVADO)"
else
    vivado_dir=""
    note "Vivado $xilinx_version: no settings64.sh under $xilinx_path/Vivado/$xilinx_version" \
        "or $xilinx_path/$xilinx_version/Vivado"
fi

if [ -n "$vivado_dir" ]; then
    if hls_dir=$(tool_dir Vitis_HLS); then
        source_settings "$hls_dir/settings64.sh"
        export XILINX_HLS="${XILINX_HLS:-$hls_dir}"
        note "Vitis HLS $xilinx_version: sourced $hls_dir/settings64.sh"
    fi
    if vitis_dir=$(tool_dir Vitis); then
        source_settings "$vitis_dir/settings64.sh"
        # From 2024.2 on Vitis HLS is part of Vitis (vitis-run); its settings set XILINX_HLS.
        export XILINX_VITIS="${XILINX_VITIS:-$vitis_dir}"
        note "Vitis $xilinx_version: sourced $vitis_dir/settings64.sh"
    fi
    if [ -z "${XILINX_HLS:-}" ]; then
        note "Vitis HLS: not found (XILINX_HLS unset): cppsim and HLS IP generation will fail"
    fi
    if command -v vivado >/dev/null 2>&1; then
        note "vivado: $(command -v vivado)"
    else
        note "vivado: not on PATH after sourcing the settings"
    fi
    # As finn-plus's CLI does (run_finn.xilinx_ld_library_paths), but before Python starts.
    if [ -n "${XILINX_HLS:-}" ]; then
        prepend_ld_path "$XILINX_HLS/lnx64/tools/fpo_v7_1"
    fi
    prepend_ld_path "$XILINX_VIVADO/lib/lnx64.o"
    prepend_ld_path /lib/x86_64-linux-gnu
else
    if [ -n "${XILINX_VIVADO:-}" ] && [ ! -d "$XILINX_VIVADO" ]; then
        note "XILINX_VIVADO=$XILINX_VIVADO does not exist: unsetting it"
        unset XILINX_VIVADO
    fi
    if [ -z "${XILINX_VIVADO:-}" ]; then
        note "Vivado is ABSENT: tests marked 'vivado' (cppsim, rtlsim, synthesis) are skipped" \
            "and FINN flows stop after HLS/RTL code generation"
    fi
fi

# --- 2. finn-plus settings -------------------------------------------------------------------
export FINN_BUILD_DIR="${FINN_BUILD_DIR:-/tmp/finn_dev_${USER:-$(id -u)}}"
mkdir -p "$FINN_BUILD_DIR"
export FINN_SETTINGS="${FINN_SETTINGS:-$FINN_BUILD_DIR/settings.yaml}"
if [ -n "${HOME:-}" ] && [ ! -d "$HOME" ]; then
    mkdir -p "$HOME" 2>/dev/null || note "HOME=$HOME does not exist and cannot be created"
fi
note "FINN_BUILD_DIR=$FINN_BUILD_DIR"

finn_dir=$("$python_bin" -c 'import importlib.util as u, os; s = u.find_spec("finn")
print(os.path.dirname(s.origin) if s and s.origin else "")' 2>/dev/null || true)
if [ -n "$finn_dir" ]; then
    export FINN_RTLLIB="${FINN_RTLLIB:-$finn_dir/finn-rtllib}"
    export FINN_CUSTOM_HLS="${FINN_CUSTOM_HLS:-$finn_dir/custom_hls}"
else
    note "finn-plus: not importable with $python_bin"
fi

if [ -n "${FINN_DEPS:-}" ]; then
    for dep in finn-hlslib attention-hlslib; do
        if [ -d "$FINN_DEPS/$dep" ]; then
            rev=$(git -C "$FINN_DEPS/$dep" rev-parse --short HEAD 2>/dev/null || echo "?")
            note "$dep: $FINN_DEPS/$dep @ $rev"
        else
            note "$dep: MISSING in FINN_DEPS=$FINN_DEPS (cppsim will fail)"
        fi
    done
else
    note "FINN_DEPS not set: finn-plus looks for finn-hlslib next to its package"
fi

# --- 3. finn-plus XSI (RTL simulation) -------------------------------------------------------
if [ -n "${XILINX_VIVADO:-}" ] && [ "${APQ_SKIP_XSI_BUILD:-0}" != "1" ]; then
    if [ -z "${FINN_XSI:-}" ]; then
        xsi_src=$("$python_bin" -c 'import importlib.util as u, os; s = u.find_spec("finn_xsi")
print(os.path.dirname(s.origin) if s and s.origin else "")' 2>/dev/null || true)
        if [ -n "$xsi_src" ]; then
            xsi_dir="$FINN_BUILD_DIR/finn_xsi"
            if [ "$(cat "$xsi_dir/.apq-source" 2>/dev/null || true)" != "$xsi_src" ]; then
                rm -rf "$xsi_dir"
                cp -R "$xsi_src" "$xsi_dir"
                printf '%s\n' "$xsi_src" >"$xsi_dir/.apq-source"
            fi
            export FINN_XSI="$xsi_dir"
        fi
    fi
    note "finn_xsi: building for Vivado $xilinx_version in ${FINN_XSI:-the finn_xsi package folder}"
    if "$python_bin" -m finn.xsi.setup --quiet >&2; then
        note "finn_xsi: ready"
    else
        note "finn_xsi: build FAILED (see above): rtlsim will not work in this container"
    fi
elif [ -n "${XILINX_VIVADO:-}" ]; then
    note "finn_xsi: build skipped (APQ_SKIP_XSI_BUILD=1)"
fi

# --- 4. the command --------------------------------------------------------------------------
if [ "$#" -eq 0 ]; then
    set -- bash
fi
exec "$@"
