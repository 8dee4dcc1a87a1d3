"""The AArch64 kernels (native/arm/*.cpp), cross-compiled and run under qemu.

Our users are on Apple Silicon; we develop on x86.  The native kernel test
program (tests/native/kernel_test.cpp) is built for aarch64 with
aarch64-linux-gnu-g++ and run with qemu-aarch64-static:

* CPU model ``max`` has dotprod: both the neon and the dotprod paths must be
  offered and pass against the scalar reference;
* CPU model ``cortex-a53`` has no dotprod: runtime dispatch must not offer it,
  and neon must still pass;
* the x86 build of the same program must generate the same inputs (same input
  digest on the scalar path), so both architectures test the same data.

A missing cross compiler or qemu FAILS (CI installs them; a skip would hide a
missing install).  LLAMALOCAL_SKIP_ARM=1 skips this whole file.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_SH = ROOT / "tests" / "native" / "build.sh"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64-static"
# Debian package that provides each tool
PACKAGES = {CROSS_CXX: "g++-aarch64-linux-gnu", QEMU: "qemu-user-static"}
TIMEOUT = 600  # seconds per build or run; a normal run takes well under a minute

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")),
    reason="the cross-architecture kernel test runs on x86_64 Linux hosts (developers and CI)",
)


def _require_tools() -> None:
    if os.environ.get("LLAMALOCAL_SKIP_ARM") == "1":
        pytest.skip("LLAMALOCAL_SKIP_ARM=1: AArch64 kernel tests skipped")
    missing = [t for t in (CROSS_CXX, QEMU) if shutil.which(t) is None]
    if not missing:
        return
    what = ", ".join(f"{t} (Debian package {PACKAGES[t]})" for t in missing)
    pytest.fail(
        f"missing {what}: install with `apt-get install {' '.join(PACKAGES[t] for t in missing)}` "
        "(or set LLAMALOCAL_SKIP_ARM=1 to skip the AArch64 kernel tests)",
        pytrace=False,
    )


def _start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(p: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += f"\n[killed after {TIMEOUT} s]"
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _build_checked(p: subprocess.Popen, what: str) -> None:
    r = _finish(p)
    assert r.returncode == 0, f"{what} build failed:\n{r.stdout}\n{r.stderr}"


class HarnessRun:
    def __init__(self, label: str, proc: subprocess.CompletedProcess):
        self.label = label
        self.returncode = proc.returncode
        self.output = proc.stdout + proc.stderr
        m = re.search(r"^ISA paths:(.*)$", proc.stdout, re.M)
        self.isas = m.group(1).split() if m else []
        m = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.M)
        self.summary = m.group(0) if m else None
        self.passed, self.failed = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
        self.digests = dict(re.findall(r"^(\w+): input digest ([0-9a-f]+)$", proc.stdout, re.M))
        self.fail_lines = [l for l in proc.stdout.splitlines() if l.startswith("FAIL")]

    def describe(self) -> str:
        shown = "\n".join(self.fail_lines[:40])
        more = f"\n... and {len(self.fail_lines) - 40} more FAIL lines" if len(self.fail_lines) > 40 else ""
        return (f"[{self.label}] exit {self.returncode}, ISA paths {self.isas}, summary {self.summary!r}\n"
                f"{shown}{more}\n--- output tail ---\n{self.output[-2000:]}")

    def assert_clean(self) -> None:
        assert self.summary is not None, f"no summary line\n{self.describe()}"
        assert self.failed == 0 and self.passed > 0, self.describe()
        assert self.returncode == 0, self.describe()
        # every ISA path tested the same generated inputs
        assert set(self.digests) == set(self.isas) and len(set(self.digests.values())) == 1, self.describe()


def test_cross_toolchain_and_qemu_are_installed():
    _require_tools()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, HarnessRun]:
    """Builds both programs, then runs the aarch64 one under two CPU models and
    the x86 one, all concurrently (qemu is the slow part)."""
    _require_tools()
    tmp = tmp_path_factory.mktemp("kt")
    arm, x86 = tmp / "kt_arm", tmp / "kt_x86"
    arm_build = _start(["bash", str(BUILD_SH), str(arm), CROSS_CXX, "arm"])
    x86_build = _start(["bash", str(BUILD_SH), str(x86)])
    _build_checked(arm_build, "aarch64 (build.sh OUT aarch64-linux-gnu-g++ arm)")
    procs = {cpu: _start([QEMU, str(arm)], env=dict(os.environ, QEMU_CPU=cpu)) for cpu in ("max", "cortex-a53")}
    _build_checked(x86_build, "x86 (build.sh OUT)")
    procs["x86"] = _start([str(x86)])
    return {k: HarnessRun(k if k == "x86" else f"qemu -cpu {k}", _finish(p)) for k, p in procs.items()}


def test_neon_and_dotprod_match_scalar_on_a_dotprod_cpu(runs):
    r = runs["max"]
    print(r.summary)
    assert r.isas[:1] == ["dotprod"] and "neon" in r.isas and r.isas[-1] == "scalar", r.describe()
    r.assert_clean()


def test_dotprod_is_not_offered_without_the_feature(runs):
    r = runs["cortex-a53"]
    print(r.summary)
    assert r.isas == ["neon", "scalar"], r.describe()
    r.assert_clean()


def test_x86_and_aarch64_generate_the_same_inputs(runs):
    x86, arm = runs["x86"], runs["max"]
    # Only the input digest matters here: the x86 kernels' own results are
    # checked by tests/test_native.py and by that program's exit status there.
    assert "scalar" in x86.digests, x86.describe()
    assert x86.digests["scalar"] == arm.digests.get("scalar"), (
        f"x86 scalar digest {x86.digests['scalar']} != aarch64 {arm.digests.get('scalar')}\n"
        f"{x86.describe()}\n{arm.describe()}")
