"""The package's public names: in a fresh process, `import charmt` loads no PyTorch, and each name resolves to
what its module defines."""

from __future__ import annotations

import json
import subprocess
import sys

import charmt

# Run in a new process, where nothing but `import charmt` has happened yet.
CHECK = """
import json, sys
from importlib import import_module
import charmt
torch_at_import = "torch" in sys.modules
charmt.SelectionConfig()
wrong = [name for name, module in charmt._EXPORTS.items()
         if getattr(charmt, name) is not getattr(import_module(f"charmt.{module}"), name)]
print(json.dumps({"torch_at_import": torch_at_import, "wrong": wrong}))
"""


def test_import_charmt_loads_no_torch_and_every_public_name_resolves():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(result.stdout) == {"torch_at_import": False, "wrong": []}
    assert sorted(charmt.__all__) == sorted([*charmt._EXPORTS, "__version__"])


def test_public_functions_are_not_shadowed_by_their_modules():
    # Importing a submodule sets the package attribute of its name: a module named like a public function
    # (`train`, `download`) would replace the function once anything imported it.
    import charmt.downloads  # noqa: F401
    import charmt.training  # noqa: F401

    assert callable(charmt.train) and callable(charmt.download)
    assert not set(charmt._EXPORTS) & {module.split(".")[-1] for module in sys.modules if module.startswith("charmt.")}
