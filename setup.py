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

        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg], cwd=build_temp, check=True)


setup(
    packages=[
        "rlmodule_fast",
        "rlmodule_fast.core",
        "rlmodule_fast.models",
        "rlmodule_fast.ppo",
        "rlmodule_fast.ops",
        "rlmodule_fast.rllib",
        "rlmodule_fast.bench",
        "rlmodule_fast.kernels",
    ],
    package_dir={"rlmodule_fast.kernels": "kernels"},
    ext_modules=[CMakeExtension("rlmodule_fast._C", sourcedir=str(ROOT))],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
