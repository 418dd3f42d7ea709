"""Docker health check of the lab container: JupyterLab answers on its port.

    python3 docker/healthcheck.py    # exit 0 when GET /api answers 200

`/api` (the server's version) needs no token, so the check works whatever the
token is. The port is Jupyter's own JUPYTER_PORT variable (8888 by default).
"""

import os
import sys
import urllib.request


def main() -> int:
    """Ask the local Jupyter server for its version; 0 when it answers."""
    port = os.environ.get("JUPYTER_PORT", "8888")
    url = f"http://127.0.0.1:{port}/api"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
