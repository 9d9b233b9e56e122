"""Run by A1111 at start-up (``launch_utils.run_extension_installers``) unless --skip-install.

The extension needs nothing beyond what A1111 already ships (torch, safetensors, PyYAML), so this
only reports a missing package; it never installs, and it can never stop the webui from starting.
"""

import importlib.util
import sys

REQUIRED = ("torch", "safetensors", "yaml")


def missing_packages() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def main() -> None:
    if "--skip-install" in sys.argv:
        return
    try:
        missing = missing_packages()
    except Exception as error:  # a broken environment must not stop the webui
        print(f"[SSD-1B] install check skipped: {error}")
        return
    if missing:
        print(f"[SSD-1B] missing packages that A1111 normally ships: {', '.join(missing)}")


main()
