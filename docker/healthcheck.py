"""Container health check: exit 0 when the HTTP server at URL answers (any status below 500).

    python healthcheck.py URL

A login page or a 401 means the server is up; a 5xx (e.g. Prefect's runner reporting missed
polls) or no answer means it is not. Standard library only.
"""

import sys
import urllib.error
import urllib.request


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if status >= 500:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
