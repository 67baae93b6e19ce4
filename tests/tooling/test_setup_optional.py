"""setup.py: the CPU extension (csrc/cpu/) is optional. A source that does not compile leaves an
install without it, with one line naming the extension, instead of a failed install."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_cpu_extension_that_does_not_compile_installs_without_it(tmp_path):
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / "mmae_fast").mkdir()
    (tmp_path / "mmae_fast" / "__init__.py").write_text("")
    (tmp_path / "csrc" / "cpu").mkdir(parents=True)  # no csrc/*.cu: no CUDA extension
    (tmp_path / "csrc" / "cpu" / "planted.cpp").write_text('#error "a planted compile error"\n')
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "the optional extension mmae_fast._cpu did not build" in out.stdout, out.stdout[-2000:]
    assert not list((tmp_path / "mmae_fast").glob("_cpu*")), "no extension file is left"
