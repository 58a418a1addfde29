"""Declares fastnaive's Cython extensions and their compiler options.

Metadata lives in pyproject.toml. OpenMP is used when the compiler can build
and link a test program with it, otherwise the extensions are built serial.
FASTNAIVE_DEBUG_BUILD=1 at build time compiles with Cython's bounds and
wraparound checks on and without optimisation; FASTNAIVE_SANITIZE=address adds
AddressSanitizer at -O1 (run Python with the sanitizer's runtime preloaded).
"""

import glob
import os
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("FASTNAIVE_DEBUG_BUILD", "") not in ("", "0")
SANITIZE = os.environ.get("FASTNAIVE_SANITIZE", "")
JOBS = os.cpu_count() or 1
OPENMP_TEST = "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n"


def compiler_supports_openmp(compiler):
    """True when `compiler` compiles and links a program with -fopenmp."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "openmp_test.c")
        with open(source, "w") as f:
            f.write(OPENMP_TEST)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=["-fopenmp"])
            compiler.link_executable(
                objects, "openmp_test", output_dir=tmp, extra_postargs=["-fopenmp"]
            )
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    """build_ext that adds -fopenmp where the compiler supports it and compiles the
    extensions in parallel, one job per CPU, unless --parallel says otherwise."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = JOBS

    def build_extensions(self):
        openmp = compiler_supports_openmp(self.compiler)
        if not openmp:
            print("fastnaive: the compiler lacks OpenMP; building serial kernels", file=sys.stderr)
        for ext in self.extensions:
            if openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


def extension(name):
    """One Cython module of the package, compiled for speed or, in debug, for checking."""
    # -fno-math-errno lets sqrt vectorise; nothing here reads errno.
    # Under a sanitizer, -O1 (as AddressSanitizer's documentation advises): the checks stay
    # exact and the debug build runs the suite faster than at -O0.
    optimise = (["-O1" if SANITIZE else "-O0", "-g"]) if DEBUG else ["-O3", "-fno-math-errno"]
    sanitize = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"] if SANITIZE else []
    return Extension(
        f"fastnaive.{name}",
        [f"src/fastnaive/{name}.pyx"],
        # The C headers the modules include: a change to one rebuilds them.
        depends=sorted(glob.glob("src/fastnaive/*.h")),
        extra_compile_args=optimise + sanitize,
        extra_link_args=list(sanitize),
    )


directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
}

setup(
    ext_modules=cythonize(
        [
            extension(name)
            for name in (
                "_blas",
                "_activations",
                "_kernels",
                "_losses",
                "_sparse",
                "_csr",
                "_program",
            )
        ],
        compiler_directives=directives,
        nthreads=JOBS,
    ),
    cmdclass={"build_ext": BuildExt},
)
