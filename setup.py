"""Build of the qsdpa extension: the C library's sources compiled straight
into the module (no separate libqsdpa to find at run time).

The folders mirror CMakeLists.txt's globs. The AVX2 kernels need
-mavx2 -mfma -mf16c on their own files only (the rest stays baseline x86-64
and the kernel is chosen at run time), which setuptools cannot express per
file, so build_ext compiles them first with those flags and links the
objects in. The CUDA backend is not built here: the package is CPU-only.
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
avx2_sources = rel_glob("src/cpu/avx2/*.c") if X86 else []

c_flags = ["-std=c11", "-O3", "-fvisibility=hidden"] if sys.platform != "win32" else []
macros = [("QSDPA_HAVE_AVX2_KERNELS", "1")] if X86 and avx2_sources else []


class BuildExt(build_ext):
    """build_ext with the AVX2 files compiled separately, with their ISA flags."""

    def build_extension(self, ext):
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
