"""Build of the qsdpa extension: the C library's sources compiled straight
into the module (no separate libqsdpa to find at run time).

The folders mirror CMakeLists.txt's globs. The AVX2 kernels need
-mavx2 -mfma -mf16c on their own files only (the rest stays baseline x86-64
and the kernel is chosen at run time), which setuptools cannot express per
file, so build_ext compiles them first with those flags and links the
objects in.

With QSDPA_CUDA=1 in the environment the library (CUDA backend included) is
built by CMake as a static library instead and linked into the module with
the static CUDA runtime: `QSDPA_CUDA=1 pip install .` (needs cmake and nvcc;
QSDPA_CUDA_ARCHITECTURES picks the GPU architectures, default 90a).
"""
import glob
import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
SRC_DIRS = ["src/core", "src/dispatch", "src/format", "src/reference", "src/cache", "src/cpu"]
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c"]
X86 = platform.machine().lower() in ("x86_64", "amd64")


def rel_glob(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


sources = ["python/qsdpa/_qsdpa.c"]
for d in SRC_DIRS:
    sources += rel_glob(d + "/*.c")
# src/cpu/vnni/ rebuilds the AVX2 file with the same flags (its K path carries its own target attribute)
avx2_sources = rel_glob("src/cpu/avx2/*.c") + rel_glob("src/cpu/vnni/*.c") if X86 else []

c_flags = ["-std=c11", "-O3", "-fvisibility=hidden"] if sys.platform != "win32" else []
macros = [("QSDPA_HAVE_AVX2_KERNELS", "1")] if X86 and avx2_sources else []


WITH_CUDA = os.environ.get("QSDPA_CUDA", "0") not in ("", "0", "OFF", "off")


def build_static_library(build_temp):
    """libqsdpa.a with the CUDA backend, by the project's own CMake build."""
    import shutil
    import subprocess

    cmake = shutil.which("cmake")
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not cmake or not os.path.exists(nvcc):
        raise RuntimeError("QSDPA_CUDA=1 needs cmake and nvcc on PATH")
    out = os.path.abspath(os.path.join(build_temp, "cmake-cuda"))
    arch = os.environ.get("QSDPA_CUDA_ARCHITECTURES", "90a")
    subprocess.check_call([cmake, "-S", ROOT, "-B", out, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
                           "-DQSDPA_CUDA=ON", "-DQSDPA_BUILD_TESTS=OFF", "-DQSDPA_BUILD_TOOLS=OFF",
                           f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DQSDPA_CUDA_ARCHITECTURES={arch}"])
    subprocess.check_call([cmake, "--build", out, "--target", "qsdpa", "-j", str(os.cpu_count() or 2)])
    cudart = os.path.join(os.path.dirname(os.path.realpath(nvcc)), "..", "lib64", "libcudart_static.a")
    return [os.path.join(out, "libqsdpa.a"), os.path.normpath(cudart)]


class BuildExt(build_ext):
    """build_ext with the AVX2 files compiled separately, with their ISA flags
    (or, with QSDPA_CUDA=1, the whole library built by CMake)."""

    def build_extension(self, ext):
        if WITH_CUDA:
            ext.sources = ["python/qsdpa/_qsdpa.c"]
            ext.extra_objects = list(ext.extra_objects or []) + build_static_library(self.build_temp)
            ext.libraries = list(ext.libraries) + ["stdc++", "dl", "rt"]
            return super().build_extension(ext)
        if avx2_sources:
            objects = self.compiler.compile(
                avx2_sources,
                output_dir=self.build_temp,
                macros=macros,
                include_dirs=ext.include_dirs,
                extra_postargs=c_flags + AVX2_FLAGS,
            )
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


ext = Extension(
    "qsdpa._qsdpa",
    sources=sources,
    include_dirs=["include", "src", "src/core"],
    define_macros=macros,
    extra_compile_args=c_flags,
    libraries=["m", "pthread"] if sys.platform != "win32" else [],
)

# build-py/, not build/: build/ is the CMake folder of tools/test.sh.
setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt}, options={"build": {"build_base": "build-py"}})
