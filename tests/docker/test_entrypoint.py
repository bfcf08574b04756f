"""The Docker entry point and docker/run.sh, tested without Docker.

``docker/entrypoint.sh`` runs directly against a fake Xilinx install in ``tmp_path``;
``docker/run.sh`` runs against a fake ``docker`` executable that records its arguments.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
RUN_SH = ROOT / "docker" / "run.sh"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
VERSION = "2024.2"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _write_exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _fake_tool(root: Path, tool: str, layout: str = "classic", body: str = "") -> Path:
    """``root/<Tool>/<version>`` (or ``root/<version>/<Tool>``) with a settings64.sh and a bin/."""
    tool_dir = root / tool / VERSION if layout == "classic" else root / VERSION / tool
    env_var = {"Vivado": "XILINX_VIVADO", "Vitis_HLS": "XILINX_HLS", "Vitis": "XILINX_VITIS"}[tool]
    # Like the real scripts: uses unset variables and a failing command, so the entry point
    # must source it outside `set -eu`.
    (tool_dir / "bin").mkdir(parents=True)
    (tool_dir / "settings64.sh").write_text(
        f'export {env_var}="{tool_dir}"\n'
        f'export PATH="{tool_dir}/bin:$PATH"\n'
        'echo "$SOME_UNSET_XILINX_VARIABLE" >/dev/null\n'
        "false\n" + body
    )
    _write_exe(tool_dir / "bin" / tool.lower(), "#!/bin/sh\necho fake\n")
    return tool_dir


def _base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XILINX", "FINN_", "APQ_")) and k != "LD_LIBRARY_PATH"
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        FINN_BUILD_DIR=str(tmp_path / "finn_build"),
        HOME=str(tmp_path / "home"),
        APQ_PYTHON=sys.executable,
    )
    env.update(extra)
    return env


def _run_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


PRINT_ENV = 'echo "XV=${XILINX_VIVADO:-<unset>}"; echo "HLS=${XILINX_HLS:-<unset>}"; ' + (
    'echo "LD=${LD_LIBRARY_PATH:-}"; echo "BUILD=$FINN_BUILD_DIR"; command -v vivado || true'
)


def _values(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def test_entrypoint_sources_vivado_settings(tmp_path):
    tools = tmp_path / "Xilinx"
    vivado = _fake_tool(tools, "Vivado")
    env = _base_env(
        tmp_path,
        FINN_XILINX_PATH=str(tools),
        FINN_XILINX_VERSION=VERSION,
        APQ_SKIP_XSI_BUILD="1",
    )
    proc = _run_entrypoint(env, "bash", "-c", PRINT_ENV)
    assert proc.returncode == 0, proc.stderr
    values = _values(proc.stdout)
    assert values["XV"] == str(vivado)
    assert proc.stdout.strip().endswith(str(vivado / "bin" / "vivado"))  # on PATH
    assert f"{vivado}/lib/lnx64.o" in values["LD"].split(":")
    assert (tmp_path / "finn_build").is_dir()
    assert f"sourced {vivado}/settings64.sh" in proc.stderr
    assert "build skipped (APQ_SKIP_XSI_BUILD=1)" in proc.stderr
    # No Vitis HLS in this install: said plainly.
    assert "Vitis HLS: not found" in proc.stderr


def test_entrypoint_sets_xilinx_vivado_when_settings_do_not(tmp_path):
    tools = tmp_path / "Xilinx"
    vivado = tools / "Vivado" / VERSION
    vivado.mkdir(parents=True)
    (vivado / "settings64.sh").write_text("true\n")
    env = _base_env(
        tmp_path, FINN_XILINX_PATH=str(tools), FINN_XILINX_VERSION=VERSION, APQ_SKIP_XSI_BUILD="1"
    )
    proc = _run_entrypoint(env, "bash", "-c", PRINT_ENV)
    assert proc.returncode == 0, proc.stderr
    assert _values(proc.stdout)["XV"] == str(vivado)


def test_entrypoint_sources_hls_and_vitis_and_new_layout(tmp_path):
    tools = tmp_path / "Xilinx"
    vivado = _fake_tool(tools, "Vivado", layout="2025")
    hls = _fake_tool(tools, "Vitis_HLS", layout="2025")
    vitis = _fake_tool(tools, "Vitis", layout="2025")
    env = _base_env(
        tmp_path, FINN_XILINX_PATH=str(tools), FINN_XILINX_VERSION=VERSION, APQ_SKIP_XSI_BUILD="1"
    )
    proc = _run_entrypoint(env, "bash", "-c", PRINT_ENV + '; echo "VITIS=$XILINX_VITIS"')
    assert proc.returncode == 0, proc.stderr
    values = _values(proc.stdout)
    assert values["XV"] == str(vivado)
    assert values["HLS"] == str(hls)
    assert values["VITIS"] == str(vitis)
    assert values["LD"].split(":")[:3] == [
        "/lib/x86_64-linux-gnu",
        f"{vivado}/lib/lnx64.o",
        f"{hls}/lnx64/tools/fpo_v7_1",
    ]


def test_entrypoint_without_tools_still_runs_the_command(tmp_path):
    env = _base_env(tmp_path, XILINX_VIVADO=str(tmp_path / "stale"))  # a stale value is dropped
    proc = _run_entrypoint(env, "bash", "-c", PRINT_ENV + "; exit 7")
    assert proc.returncode == 7  # the command's own exit status
    assert _values(proc.stdout)["XV"] == "<unset>"
    assert "FINN_XILINX_PATH/FINN_XILINX_VERSION not set" in proc.stderr
    assert "Vivado is ABSENT" in proc.stderr
    assert "finn_xsi" not in proc.stderr  # no XSI build without Vivado


def test_entrypoint_with_missing_version_folder(tmp_path):
    tools = tmp_path / "Xilinx"
    _fake_tool(tools, "Vivado")
    env = _base_env(tmp_path, FINN_XILINX_PATH=str(tools), FINN_XILINX_VERSION="2023.1")
    proc = _run_entrypoint(env, "bash", "-c", PRINT_ENV)
    assert proc.returncode == 0, proc.stderr
    assert _values(proc.stdout)["XV"] == "<unset>"
    assert "Vivado 2023.1: no settings64.sh" in proc.stderr
    assert "Vivado is ABSENT" in proc.stderr


def test_entrypoint_builds_xsi_in_a_writable_copy(tmp_path):
    """With Vivado, the XSI step copies finn_xsi under FINN_BUILD_DIR and runs its setup."""
    tools = tmp_path / "Xilinx"
    _fake_tool(tools, "Vivado")
    log = tmp_path / "python.log"
    xsi_src = tmp_path / "site" / "finn_xsi"
    (xsi_src / "src").mkdir(parents=True)
    (xsi_src / "xsi_bind.cpp").write_text("// fake\n")
    # A fake Python: answers the entry point's find_spec queries, logs everything else.
    fake_python = _write_exe(
        tmp_path / "bin" / "fake-python",
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{log}"\n'
        'case "$*" in\n'
        f'  *finn_xsi*) [ "$1" = -c ] && echo "{xsi_src}" ;;\n'
        '  *"\\"finn\\""*) [ "$1" = -c ] && echo "" ;;\n'
        "esac\n"
        "exit 0\n",
    )
    env = _base_env(
        tmp_path,
        FINN_XILINX_PATH=str(tools),
        FINN_XILINX_VERSION=VERSION,
        APQ_PYTHON=str(fake_python),
    )
    proc = _run_entrypoint(env, "bash", "-c", 'echo "XSI=$FINN_XSI"')
    assert proc.returncode == 0, proc.stderr
    copy = tmp_path / "finn_build" / "finn_xsi"
    assert _values(proc.stdout)["XSI"] == str(copy)
    assert (copy / "xsi_bind.cpp").is_file()
    assert (copy / ".apq-source").read_text().strip() == str(xsi_src)
    assert "-m finn.xsi.setup --quiet" in log.read_text()
    assert "finn_xsi: ready" in proc.stderr


def test_entrypoint_default_command_is_bash(tmp_path):
    env = _base_env(tmp_path, APQ_ENTRYPOINT_QUIET="1")
    proc = subprocess.run(
        ["bash", str(ENTRYPOINT)],
        input="echo from-default-shell\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == "from-default-shell"
    assert proc.stderr == ""


def test_entrypoint_sets_finn_paths_for_the_python_api(tmp_path):
    pytest.importorskip("finn")
    env = _base_env(tmp_path)
    proc = _run_entrypoint(
        env,
        "bash",
        "-c",
        'echo "RTL=$FINN_RTLLIB"; echo "HLS=$FINN_CUSTOM_HLS"; echo "S=$FINN_SETTINGS"',
    )
    assert proc.returncode == 0, proc.stderr
    values = _values(proc.stdout)
    assert Path(values["RTL"]).is_dir()
    assert Path(values["HLS"]).is_dir()
    assert values["S"] == str(tmp_path / "finn_build" / "settings.yaml")


# --- docker/run.sh with a fake docker ----------------------------------------------------------

FAKE_DOCKER = """#!/usr/bin/env bash
# Records every call (one argument per line, then a separator) and plays an engine.
{ printf '%s\\n' "$@"; echo '-----'; } >> "$FAKE_DOCKER_LOG"
case "$1" in
    info)
        if [ "$FAKE_DOCKER_MODE" = noengine ]; then
            echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." \\
                "Is the docker daemon running?" >&2
            exit 1
        fi ;;
    image) [ "$FAKE_DOCKER_MODE" = have-image ] || exit 1 ;;
esac
exit 0
"""


def _docker_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    calls, current = [], []
    for line in log.read_text().splitlines():
        if line == "-----":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return calls


def _run_sh(tmp_path: Path, mode: str, *args: str, **env_extra: str):
    bin_dir = tmp_path / "fakebin"
    _write_exe(bin_dir / "docker", FAKE_DOCKER)
    log = tmp_path / "docker.log"
    env = _base_env(
        tmp_path,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        FAKE_DOCKER_LOG=str(log),
        FAKE_DOCKER_MODE=mode,
        FINN_HOST_BUILD_DIR=str(tmp_path / "host_build"),
    )
    env.update(env_extra)
    proc = subprocess.run(
        ["bash", str(RUN_SH), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return proc, _docker_calls(log)


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_run_sh_without_engine_fails_clearly(tmp_path):
    proc, calls = _run_sh(tmp_path, "noengine", "test")
    assert proc.returncode == 2
    assert "cannot reach a Docker engine" in proc.stderr
    assert "Cannot connect to the Docker daemon" in proc.stderr
    assert "Nothing was built or run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one message, no stack of errors
    assert [c[0] for c in calls] == ["info"]  # stopped before build and run


def test_run_sh_without_docker_cli_fails_clearly(tmp_path):
    proc, calls = _run_sh(tmp_path, "ok", "test", DOCKER=str(tmp_path / "no-such-docker"))
    assert proc.returncode == 2
    assert "command was not found" in proc.stderr
    assert calls == []


def test_run_sh_test_builds_image_and_mounts_xilinx(tmp_path):
    tools = tmp_path / "Xilinx"
    tools.mkdir()
    proc, calls = _run_sh(
        tmp_path,
        "ok",
        "test",
        "-x",
        "-k",
        "finn",
        FINN_XILINX_PATH=str(tools),
        FINN_XILINX_VERSION=VERSION,
    )
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["info", "image", "build", "run"]
    build, run = calls[2], calls[3]
    tag = build[build.index("-t") + 1]
    assert re.fullmatch(r"brevitas-apq-finn:[0-9a-f]{12}", tag)
    assert _after(build, "-f") == [str(ROOT / "docker" / "Dockerfile")]
    assert "APQ_TORCH_INDEX=https://download.pytorch.org/whl/cpu" in _after(build, "--build-arg")
    assert build[-1] == str(ROOT)

    mounts, envs = _after(run, "-v"), _after(run, "-e")
    assert f"{tools}:{tools}:ro" in mounts
    assert f"{ROOT}:{ROOT}" in mounts
    host_build = tmp_path / "host_build"
    assert f"{host_build}:{host_build}" in mounts
    assert f"FINN_XILINX_PATH={tools}" in envs
    assert f"FINN_XILINX_VERSION={VERSION}" in envs
    assert f"FINN_BUILD_DIR={host_build}" in envs
    assert f"PYTHONPATH={ROOT}" in envs
    assert "--init" in run and "--rm" in run
    assert _after(run, "-w") == [str(ROOT)]
    if os.getuid() != 0:
        assert _after(run, "--user") == [f"{os.getuid()}:{os.getgid()}"]
    # The image, then the whole suite with the vivado tests (pytest decides by XILINX_VIVADO).
    i = run.index(tag)
    assert run[i + 1 :] == ["python", "-m", "pytest", "--runslow", "-x", "-k", "finn"]


def test_run_sh_reuses_existing_image_and_passes_other_commands(tmp_path):
    proc, calls = _run_sh(tmp_path, "have-image", "python", "-c", "print('hi there')")
    assert proc.returncode == 0, proc.stderr
    assert [c[0] for c in calls] == ["info", "image", "run"]
    run = calls[-1]
    assert run[-3:] == ["python", "-c", "print('hi there')"]
    assert not any(m.endswith(":ro") and "Xilinx" in m for m in _after(run, "-v"))
    assert "FINN_XILINX_PATH is not set" in proc.stderr


def test_run_sh_build_runs_apq_build(tmp_path):
    model = tmp_path / "models" / "net.onnx"
    model.parent.mkdir()
    model.write_bytes(b"")
    out = tmp_path / "out"
    proc, calls = _run_sh(
        tmp_path,
        "have-image",
        "build",
        str(model),
        "--board",
        "Pynq-Z2",
        "--out",
        str(out),
        "--windows",
        "8",
        APQ_DOCKER_TAG="apq:test",
    )
    assert proc.returncode == 0, proc.stderr
    run = calls[-1]
    assert run[run.index("apq:test") + 1 :] == [
        "apq",
        "build",
        str(model),
        "--board",
        "Pynq-Z2",
        "--out",
        str(out),
        "--windows",
        "8",
    ]
    mounts = _after(run, "-v")
    assert f"{model.parent}:{model.parent}:rw" in mounts  # model outside the repo: mounted
    assert f"{out}:{out}:rw" in mounts
    assert out.is_dir()


def test_run_sh_build_makes_paths_absolute(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    folding = tmp_path / "fold.json"
    folding.write_text("{}")
    proc, calls = _run_sh(
        tmp_path,
        "have-image",
        "build",
        os.path.relpath(run_dir, ROOT),  # relative to the caller's directory (ROOT here)
        "-b",
        "ZCU104",
        f"--folding={os.path.relpath(folding, ROOT)}",
        APQ_DOCKER_TAG="apq:test",
    )
    assert proc.returncode == 0, proc.stderr
    run = calls[-1]
    cmd = run[run.index("apq:test") + 1 :]
    assert cmd == ["apq", "build", str(run_dir), "--board", "ZCU104", "--folding", str(folding)]
    mounts = _after(run, "-v")
    assert f"{run_dir}:{run_dir}:rw" in mounts  # apq writes RUN_DIR/finn by default
    assert f"{tmp_path}:{tmp_path}:rw" in mounts  # the folding file's folder


def test_run_sh_build_needs_an_existing_model(tmp_path):
    proc, calls = _run_sh(tmp_path, "have-image", "build", str(tmp_path / "missing.onnx"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert "run" not in [c[0] for c in calls]


# --- static facts of the Dockerfile ------------------------------------------------------------


def test_dockerfile_pins_match_finn_plus():
    """The finn-hlslib / attention-hlslib commits of the Dockerfile are finn-plus's own."""
    pytest.importorskip("finn")
    text = DOCKERFILE.read_text()
    pins = dict(re.findall(r"^ARG (FINN_HLSLIB_COMMIT|ATTENTION_HLSLIB_COMMIT)=(\w+)$", text, re.M))
    assert set(pins) == {"FINN_HLSLIB_COMMIT", "ATTENTION_HLSLIB_COMMIT"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "docker" / "fetch_finn_deps.py"),
            "--check",
            "--expect",
            f"finn-hlslib={pins['FINN_HLSLIB_COMMIT']}",
            "--expect",
            f"attention-hlslib={pins['ATTENTION_HLSLIB_COMMIT']}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
