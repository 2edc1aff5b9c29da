"""The compiled part of cnnlab; everything else is in pyproject.toml.

Two C extensions (cnnlab/backend/native/, see docs/architecture.md "Native kernels"):

- cnnlab.backend._sgemm (sgemm.c, gemm_threads.c, gemm_<level>.c): a blocked float32 GEMM
  and its worker pool, used by conv and linear layers.
- cnnlab.backend._loops (loops.c, winograd.c, loops_<level>.c): one-pass loops for the
  memory-bound steps (2x2 max pool, ReLU, the Adam update, im2col), the fused first conv
  block and the Winograd transforms. -ffp-contract=off keeps every multiply and add rounded
  on its own, as in NumPy, so the loops match the NumPy code bit for bit; -fno-math-errno
  lets sqrt vectorise.

Every kernel is compiled once per level (portable; avx2 and avx512 on x86-64; neon on
aarch64) from one body written with GCC/Clang vector extensions; each level's unit sets its
own target (simd.h), so everything here builds with the baseline flags (no -march=native)
and the modules choose a level at run time from what the CPU supports.

A C compiler that fails on this code fails the install. Only where there is no usable C
compiler at all (none on the PATH), and on Windows (MSVC has no vector extensions; the pool
uses POSIX threads), the build skips the extensions, prints one line saying so, and the
NumPy code does the work. The
outcome is written to cnnlab/backend/_build_info.py, which `cnnlab info` reports.
"""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = "cnnlab/backend/native"
LEVELS = ("portable", "avx2", "avx512", "neon")
HEADERS = [f"{NATIVE}/{name}" for name in ("kernels.h", "simd.h", "simd_end.h", "cpu.h",
                                           "dispatch.h")]
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
LINK = [] if sys.platform == "win32" else ["-pthread"]
BUILD_INFO = "cnnlab/backend/_build_info.py"


def _compiler_version(command: str) -> str:
    try:
        out = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.stdout else command
    except (OSError, subprocess.SubprocessError):
        return command


class BuildNative(build_ext):
    """build_ext that skips the kernels only when there is no usable C compiler, and records why."""

    def run(self):
        self.build_info = None
        super().run()  # builds into build_lib, then copies into the source tree when in place
        if self.build_info is not None and (self.inplace or getattr(self, "editable_mode", False)):
            self._write_build_info(BUILD_INFO)

    def build_extensions(self):
        compiler, reason = self._find_compiler()
        native = not reason
        self.build_info = (native, _compiler_version(compiler) if native else "", reason)
        self._write_build_info(os.path.join(self.build_lib, BUILD_INFO))
        if not native:
            print(f"cnnlab: not building the C kernels: {reason}; the NumPy code will run instead")
            self.extensions = []  # nothing to copy into the source tree or the wheel
            return
        super().build_extensions()

    def _find_compiler(self):
        """(compiler command, "") or ("", why the kernels cannot be built here)."""
        if sys.platform == "win32":
            return "", ("on Windows the C kernels are not built (MSVC has no GCC/Clang vector "
                        "extensions and the worker pool uses POSIX threads)")
        command = self.compiler.compiler_so[0] if getattr(self.compiler, "compiler_so", None) else \
            shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]
        if shutil.which(command) is None:
            return "", f"no C compiler found (looked for '{command}' on the PATH; set CC)"
        return command, ""

    def _write_build_info(self, target: str):
        native, compiler, reason = self.build_info
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(
                '"""Written by setup.py when cnnlab was built: whether its C kernels were."""\n\n'
                f"NATIVE = {native!r}\n"
                f"COMPILER = {compiler!r}  # first line of `cc --version`\n"
                f"REASON = {reason!r}  # why NATIVE is False\n")


def _extension(name, bindings, level_prefix, extra_flags=()):
    sources = [f"{NATIVE}/{source}" for source in bindings]
    sources += [f"{NATIVE}/{level_prefix}_{level}.c" for level in LEVELS]
    depends = HEADERS + [f"{NATIVE}/{header}" for header in (
        ("gemm_level.h",) if level_prefix == "gemm" else
        ("loops_level.h", "loops_body.h", "winograd_body.h", "buffers.h"))]
    return Extension(name, sources=sources, depends=depends,
                     extra_compile_args=FLAGS + list(extra_flags), extra_link_args=LINK)


setup(
    ext_modules=[
        _extension("cnnlab.backend._sgemm", ["sgemm.c", "gemm_threads.c"], "gemm"),
        _extension("cnnlab.backend._loops", ["loops.c", "winograd.c"], "loops",
                   ["-ffp-contract=off"]),
    ],
    cmdclass={"build_ext": BuildNative},
)
