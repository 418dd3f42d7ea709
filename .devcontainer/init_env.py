"""Dev Containers' initializeCommand: give compose the settings it reads from .env, on the host.

    python3 .devcontainer/init_env.py      # run by VS Code / `devcontainer up` before the containers start

Only missing keys are added (the token, and the host user's UID/GID so that
files the lab writes into the repository belong to that user); what
`invoke lab` or a person already put in .env stays. Python's standard library
only: the host needs nothing but python3.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classifier.machinery.docker_engine import host_ids  # noqa: E402  (the standard library only, at import)


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=value lines of .env as written, quotes and all, so that rewriting the file keeps them.

    Not docker_engine.read_env_file, which gives the values without their quotes: this keeps each line as written.
    """
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[key.strip()] = value.strip()
    return values


def main() -> int:
    """Add JUPYTER_TOKEN, LAB_UID and LAB_GID to .env where missing; 0 on success."""
    path = ROOT / ".env"
    values = read_env_file(path)
    uid, gid = host_ids()
    wanted = {"JUPYTER_TOKEN": secrets.token_urlsafe(32), "LAB_UID": str(uid), "LAB_GID": str(gid)}
    added = {key: value for key, value in wanted.items() if not values.get(key)}
    if added:
        values.update(added)
        temporary = path.with_name(f".env.tmp-{os.getpid()}")
        temporary.write_text("".join(f"{key}={value}\n" for key, value in values.items()), encoding="utf-8")
        temporary.chmod(0o600)
        temporary.replace(path)
    # The data folder must exist before compose mounts it, or Docker creates it as root.
    for folder in (ROOT / "data", ROOT / "runs"):
        folder.mkdir(exist_ok=True)
    print(f"devcontainer: .env has the token and LAB_UID={values['LAB_UID']} LAB_GID={values['LAB_GID']}"
          + (f" (added {', '.join(added)})" if added else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
