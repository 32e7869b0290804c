"""Build script: the package metadata lives in pyproject.toml; this file drives CMake to
build the compiled module ``dqkernels._C`` (no torch needed at build time).

Environment switches:
  DQK_BUILD_EXT=0          skip the compiled module (the package runs on the torch backend)
  DQK_CUDA=auto|1|0        CUDA kernels when nvcc is found (default) / required / never
  DQK_CUDA_ARCHS=90        CUDA architectures, comma or semicolon separated (default 75;80;90)
  DQK_REQUIRE_EXT=1        fail the install if the compiled module cannot be built
  DQK_BUILD_JOBS=N         parallel compile jobs (default: number of CPUs)
  DQK_SANITIZE=address     a sanitizer build of the C++ kernels (also address,undefined);
                           it loads only with the sanitizer runtime preloaded (.ci/asan)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if _flag("DQK_BUILD_EXT", "1") in ("0", "off", "false", "no"):
            print("dqkernels: DQK_BUILD_EXT=0, not building dqkernels._C")
            return
        try:
            self._cmake(ext)
        except (subprocess.CalledProcessError, OSError) as exc:
            if _flag("DQK_REQUIRE_EXT", "0") in ("1", "on", "true", "yes"):
                raise
            print(
                f"dqkernels: WARNING: building dqkernels._C failed ({exc}); the package "
                "will run on the torch backend only. `dqk info` explains what is "
                "missing. Set DQK_REQUIRE_EXT=1 to make this an error.",
                file=sys.stderr,
            )

    def _cmake(self, ext: Extension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        cuda = {
            "auto": "AUTO",
            "1": "ON",
            "on": "ON",
            "true": "ON",
            "0": "OFF",
            "off": "OFF",
            "false": "OFF",
        }.get(_flag("DQK_CUDA", "auto"))
        if cuda is None:
            raise SystemExit(f"DQK_CUDA must be auto, 1 or 0; got {os.environ['DQK_CUDA']!r}")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DDQK_CUDA={cuda}",
        ]
        sanitize = os.environ.get("DQK_SANITIZE", "").strip()
        if sanitize:
            args.append(f"-DDQK_SANITIZE={sanitize}")
        archs = os.environ.get("DQK_CUDA_ARCHS", "").strip()
        if archs:
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs.replace(',', ';')}")
        if shutil.which("ninja") or _has_module("ninja"):
            args.append("-GNinja")
        cmake = shutil.which("cmake") or "cmake"
        jobs = os.environ.get("DQK_BUILD_JOBS") or str(os.cpu_count() or 1)
        subprocess.run([cmake, str(ROOT), *args], cwd=build_temp, check=True)
        subprocess.run([cmake, "--build", ".", "--parallel", jobs], cwd=build_temp, check=True)


def _has_module(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


setup(ext_modules=[CMakeExtension("dqkernels._C")], cmdclass={"build_ext": CMakeBuild})
