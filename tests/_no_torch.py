"""Run pytest where torch cannot be imported: ``python -m tests._no_torch <pytest args>``
(from the repository root).

An import of torch (or of torchvision/timm, which need it) raises ImportError, the way it does on
a machine without torch; the module is never put into sys.modules, so libraries that look there
for torch arrays (scipy) see no torch at all.
"""
import sys
from importlib.abc import MetaPathFinder

BLOCKED = ("torch", "torchvision", "timm")


class NoTorch(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: this run checks the torch-free modules")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, NoTorch())
    import pytest

    sys.exit(pytest.main(sys.argv[1:]))
