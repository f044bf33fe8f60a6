"""The package import graph: the drone's code (`skyloc.runtime`) imports nothing of skyloc's but
itself (and the shared `skyloc.errors`), so it ships alone on a Jetson image."""
import pkgutil
import subprocess
import sys

import skyloc.runtime

RUNTIME = sorted(f"skyloc.runtime.{m.name}" for m in pkgutil.iter_modules(skyloc.runtime.__path__))


def test_the_runtime_imports_with_every_other_skyloc_package_and_torch_blocked():
    code = f"""
import sys, importlib.abc
BLOCKED = ('skyloc.export', 'skyloc.train', 'skyloc.models', 'skyloc.onboard', 'skyloc.synth', 'skyloc.cli',
           'skyloc.demo', 'torch', 'timm', 'torchvision', 'ray')
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + '.') for b in BLOCKED):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for m in {RUNTIME!r}:
    importlib.import_module(m)
print('OK', len({RUNTIME!r}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stderr[-2000:]
    assert "skyloc.runtime.engine" in RUNTIME  # the TensorRT builder is the drone's: it builds its own engines


def test_no_module_imports_upwards_from_the_runtime():
    """Static check too: a lazy import inside a function would pass the test above until called."""
    import ast
    from pathlib import Path

    bad = []
    for path in Path(skyloc.runtime.__path__[0]).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.name}: {n}" for n in names
                    if n.startswith("skyloc.") and not n.startswith(("skyloc.runtime", "skyloc.errors"))]
    assert not bad, bad
