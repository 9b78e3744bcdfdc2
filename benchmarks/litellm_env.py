"""LiteLLM's proxy in its own virtual environment, pinned, installed by hand.

The pinned release's `[proxy]` extra names packages the registry does not have
(litellm-proxy, litellm-proxy-extras, litellm-enterprise), so `pip install litellm[proxy]`
fails; we install the wheel and the extra's other requirements ourselves. Never 1.107.0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["LITELLM_VERSION", "ensure_litellm", "litellm_python"]

LITELLM_VERSION = "1.110.2"
VENV = Path(__file__).resolve().parent / ".venv-litellm"

# The `[proxy]` extra of litellm 1.110.2 as its metadata lists it, less the three packages
# that do not exist on the registry.
_PROXY_EXTRA = (
    "apscheduler>=3.11.2,<4.0",
    "azure-identity>=1.25.2,<2.0",
    "azure-storage-blob>=12.28.0,<13.0",
    "backoff>=2.2.1,<3.0",
    "backports-zstd>=1.0.0,<2.0",
    "boto3>=1.43.117,<2.0",
    "cryptography>=49.0.0,<51.0",
    "expression>=5.6.0,<6.0",
    "fastapi-sso>=0.19.0,<1.0",
    "fastapi>=0.136.3,<1.0",
    "granian>=2.7.4,<3.0",
    "gunicorn>=23.0.0,<24.0",
    "hiredis>=3.0.0,<4.0",
    "httpx2>=2.10.0,<3",
    "inquirerpy>=0.3.4,<1.0",
    "mcp>=2.3.0,<3",
    "orjson>=3.11.6,<4.0",
    "polars>=1.38.1,<2.0",
    "pydantic>=2.12.0,<3",
    "pyjwt>=2.13.0,<3.0",
    "pynacl>=1.6.2,<2.0",
    "pyroscope-io>=0.8.16,<1.0",
    "python-multipart>=0.0.27,<1.0",
    "pyyaml>=6.0.3,<7.0",
    "restrictedpython>=8.5,<9.0",
    "rich>=13.9.4,<14.0",
    "rq>=2.7.0,<3.0",
    "semver>=3.0.4,<4",
    "soundfile>=0.12.1,<1.0",
    "starlette>=1.0.1,<2.0",
    "tomlkit>=0.13.3,<1.0",
    "uvicorn>=0.33.0,<1.0",
    "uvloop>=0.22.1,<1.0",
    "websockets>=15.0.1,<16.0",
)


def litellm_python() -> Path:
    return VENV / "bin" / "python"


def installed_version() -> str | None:
    """The litellm version in our venv, or None if there is no usable install."""
    if not litellm_python().exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    result = subprocess.run(
        [str(litellm_python()), "-c", probe], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_litellm() -> str:
    """Create the venv and install the pinned proxy if needed; return the installed version."""
    if installed_version() == LITELLM_VERSION:
        return LITELLM_VERSION
    print(f"installing LiteLLM {LITELLM_VERSION} into {VENV} (once; takes a minute or two)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(litellm_python()), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"litellm=={LITELLM_VERSION}", *_PROXY_EXTRA], check=True)
    version = installed_version()
    if version != LITELLM_VERSION:
        raise RuntimeError(f"LiteLLM install failed (found {version!r})")
    return version
