"""The package's public names: in a fresh process, `import charmt` loads no PyTorch, and each name resolves to
what its module defines."""

from __future__ import annotations

import json
import subprocess
import sys

import charmt

# Run in a new process: this one imported `charmt.train` as a module already (conftest), and importing a
# submodule sets the package attribute of the same name (`charmt.train`) to the module.
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
