"""Build of anetrain._native, the one extension module that holds the hot path.

Linux: BLAS from the scipy-openblas32 wheel (prefixed symbols, preloaded by anetrain/__init__.py).
macOS: Accelerate, Foundation and IOSurface; the .mm sources of native/backend/ane are built
with ARC. The fp16 kernels are compiled for the baseline ISA and picked at run time.
"""
import glob
import os
import re
import sys
import sysconfig

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("ANETRAIN_JOBS", default=0).install()

HERE = os.path.dirname(os.path.abspath(__file__))
IS_MAC = sys.platform == "darwin"


BINDINGS = "native/bindings/all.cpp"  # the bindings' one translation unit


def native_sources():
    """Every native source, the bindings' translation unit first.

    The files all.cpp #includes compile only through it. It is the longest TU: started first, the
    parallel jobs share the rest out around it.
    """
    with open(BINDINGS) as f:
        included = {"native/" + p for p in re.findall(r'^#include "(bindings/\w+\.cpp)"', f.read(), re.M)}
    cpp = [p for p in glob.glob("native/**/*.cpp", recursive=True) if p != BINDINGS and p not in included]
    mm = glob.glob("native/**/*.mm", recursive=True) if IS_MAC else []
    return [BINDINGS] + sorted(cpp) + sorted(mm)


class BuildExt(build_ext):
    """pybind11's build_ext, taught that .mm files are Objective-C++ compiled with ARC, and that
    the bindings are compiled for size (-Os): they are glue (the loops they call live in the other
    TUs), and optimising them for speed only makes their one long TU, the longest step of the
    build, take longer; their per-call cost stays within the noise of a microsecond."""

    def build_extensions(self):
        self.compiler.src_extensions.append(".mm")
        original = self.compiler._compile

        def _compile(obj, src, ext, cc_args, extra_postargs, pp_opts):
            if src.endswith(".mm"):
                extra_postargs = list(extra_postargs) + ["-fobjc-arc", "-fobjc-exceptions"]
            elif os.path.normpath(src) == os.path.normpath(BINDINGS):
                extra_postargs = list(extra_postargs) + ["-Os"]  # the last -O wins
            return original(obj, src, ext, cc_args, extra_postargs, pp_opts)

        self.compiler._compile = _compile
        super().build_extensions()


compile_args = ["-O3", "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
# no errno/FP-exception flags used (lets loops vectorise); no FMA contraction, so the SIMD versions
# of a loop (core/simd.h) round alike on every CPU
define_macros = []
include_dirs = ["native"]
library_dirs = []
libraries = []
runtime_library_dirs = []
link_args = []

if IS_MAC:
    define_macros += [("ACCELERATE_NEW_LAPACK", None), ("ANETRAIN_ACCELERATE", None)]
    # runtime.mm calls CoreFoundation (CFRelease) and the Objective-C runtime (objc_msgSend,
    # class_copyMethodList, ...) directly: link both explicitly.
    link_args += ["-framework", "Accelerate", "-framework", "Foundation", "-framework", "IOSurface",
                  "-framework", "CoreFoundation", "-lobjc"]
else:
    import scipy_openblas32 as sob

    define_macros += [("ANETRAIN_SCIPY_OPENBLAS", None), ("BLAS_SYMBOL_PREFIX", "scipy_")]
    include_dirs.append(sob.get_include_dir())
    library_dirs.append(sob.get_lib_dir())
    libraries.append(sob.get_library())
    # The build env is deleted after the build; point the rpath at the target environment too.
    # anetrain/__init__.py preloads the library, which is what really makes the import robust.
    runtime_library_dirs.append(os.path.join(sysconfig.get_paths()["platlib"], "scipy_openblas32", "lib"))
    compile_args += ["-pthread"]
    link_args += ["-pthread"]

ext = Pybind11Extension(
    "anetrain._native",
    native_sources(),
    cxx_std=17,
    include_dirs=include_dirs,
    define_macros=define_macros,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    library_dirs=library_dirs,
    libraries=libraries,
    runtime_library_dirs=runtime_library_dirs,
    # headers too: an incremental build (build_ext --inplace) then rebuilds when only a header changed
    depends=sorted(glob.glob("native/**/*.h", recursive=True)),
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
