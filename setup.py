"""Builds rlmodule_fast._C (csrc/, pybind11) through CMake, as pybind11's cmake_example does.

`pip install .` and `pip install -e .` both run CMake; a failed build is a failed install.
Environment: CMAKE_ARGS (extra arguments), DEBUG=1 (Debug build), CMAKE_BUILD_PARALLEL_LEVEL.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        ext_fullpath = Path.cwd() / self.get_ext_fullpath(ext.name)
        extdir = ext_fullpath.parent.resolve()
        debug = int(os.environ.get("DEBUG", 0)) if self.debug is None else self.debug
        cfg = "Debug" if debug else "Release"

        import pybind11  # a build requirement (pyproject.toml)

        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
        ]
        if "CMAKE_ARGS" in os.environ:
            cmake_args += [item for item in os.environ["CMAKE_ARGS"].split(" ") if item]
        ninja = shutil.which("ninja")  # the pip package puts it on PATH in the build env
        if ninja and not os.environ.get("CMAKE_GENERATOR"):
            cmake_args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]

        compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        if not compiler:
            raise RuntimeError("rlmodule_fast: no C++ compiler found to build rlmodule_fast._C: install one "
                               "(g++ or clang++; Debian/Ubuntu: apt install build-essential) or set CXX")
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        for cmd in (["cmake", ext.sourcedir, *cmake_args], ["cmake", "--build", ".", "--config", cfg]):
            done = subprocess.run(cmd, cwd=build_temp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            sys.stdout.write(done.stdout)
            if done.returncode:
                raise RuntimeError(f"rlmodule_fast: building rlmodule_fast._C failed: {_first_error(done.stdout)} "
                                   f"(command: {' '.join(cmd[:2])} ...; full log above)")


def _first_error(log: str) -> str:
    """The first error of a CMake / compiler log, with the line that explains it (CMake puts the
    reason on the line after "CMake Error at ...")."""
    lines = [line.strip() for line in log.splitlines()]
    for i, line in enumerate(lines):
        if "error" in line.lower():
            reason = next((nxt for nxt in lines[i + 1:i + 4] if nxt), "")
            return f"{line} {reason}".strip() if line.endswith(":") else line
    return lines[-1] if lines else "no output"


setup(
    packages=[
        "rlmodule_fast",
        "rlmodule_fast.core",
        "rlmodule_fast.models",
        "rlmodule_fast.ppo",
        "rlmodule_fast.ops",
        "rlmodule_fast.fastpath",
        "rlmodule_fast.rllib",
        "rlmodule_fast.bench",
        "rlmodule_fast.kernels",
    ],
    package_dir={"rlmodule_fast.kernels": "kernels"},
    ext_modules=[CMakeExtension("rlmodule_fast._C", sourcedir=str(ROOT))],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
