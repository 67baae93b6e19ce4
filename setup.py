"""Build script: the CUDA extension ``mmae_fast._C`` (csrc/*.cu, csrc/*.cpp) is built only when
torch is a CUDA build and nvcc is present; the CPU extension ``mmae_fast._cpu`` (csrc/cpu/*.cpp:
the "cpu" backend's native stages) wherever torch and a C++ compiler are, and is optional: if it
fails to build, the package installs without it (the Python stages run; one line says why).

Install with ``pip install --no-build-isolation .`` so the build sees the installed torch.
"""
import glob
import os
import shutil

from setuptools import setup


def _cuda_extension():
    """Return ([ext_modules], cmdclass) or ([], {}) with a printed reason."""
    sources = sorted(glob.glob("csrc/*.cu")) + sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        print("mmae_fast: no csrc/ sources; installing the pure-Python package")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("mmae_fast: torch is not importable at build time (use --no-build-isolation); "
              "skipping the CUDA extension")
        return [], {}
    has_nvcc = shutil.which("nvcc") is not None or (
        CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    if torch.version.cuda is None or CUDA_HOME is None or not has_nvcc:
        print("mmae_fast: no CUDA build of torch or no nvcc; skipping the CUDA extension "
              "(backends 'triton' and 'reference' remain)")
        return [], {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    ext = CUDAExtension(
        name="mmae_fast._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        # no -std flag: torch.utils.cpp_extension adds the standard this torch was built with
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


def _cpu_extension():
    """Return [the optional CPU extension] or [] with a printed reason."""
    sources = sorted(glob.glob("csrc/cpu/*.cpp"))
    try:
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        print("mmae_fast: torch is not importable at build time (use --no-build-isolation); "
              "skipping the CPU extension (the Python stages of the cpu backend remain)")
        return []
    if not sources:
        return []
    return [CppExtension(name="mmae_fast._cpu", sources=sources, optional=True,
                         extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])]


def _build_ext(base):
    """``base`` (torch's BuildExtension) that installs without an optional extension that fails
    to compile (torch's ninja build raises where setuptools' ``optional`` expects a compiler
    error)."""
    class BuildExt(base):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any build failure of an optional extension
                if not getattr(ext, "optional", False):
                    raise
                print(f"mmae_fast: the optional extension {ext.name} did not build ({exc}); "
                      f"installing without it")
    return BuildExt


ext_modules, cmdclass = _cuda_extension()
ext_modules = ext_modules + _cpu_extension()
if ext_modules:
    from torch.utils.cpp_extension import BuildExtension
    base = cmdclass.get("build_ext", BuildExtension.with_options(use_ninja=True))
    cmdclass = {"build_ext": _build_ext(base)}
setup(ext_modules=ext_modules, cmdclass=cmdclass)
