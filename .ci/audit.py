"""Dependency audit for CI: ``pip-audit`` over the installed packages, with the known advisories
of ``.ci/audit-ignore.txt`` ignored (each with its reason).

Exit code 1 on a vulnerability that is not ignored. When the advisory data cannot be reached
(no network, or a package mirror without PyPI's per-version JSON API, where every package comes
back "not found on PyPI"), nothing was audited: that is said plainly and the build does not
fail — pip-audit itself would print "No known vulnerabilities found" in that case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

IGNORE_FILE = Path(__file__).with_name("audit-ignore.txt")


def ignored() -> dict[str, str]:
    """Advisory id → why it is ignored, from ``audit-ignore.txt`` (``ID  # reason`` lines)."""
    out = {}
    for line in IGNORE_FILE.read_text().splitlines():
        ident, _, reason = line.partition("#")
        if ident.strip():
            out[ident.strip()] = reason.strip()
    return out


def main() -> int:
    """Run pip-audit, print a verdict, return the exit code."""
    ignore = ignored()
    command = [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off"]
    command += ["--format", "json"]
    for ident in ignore:
        command += ["--ignore-vuln", ident]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        print(f"pip-audit: NOT AUDITED, it could not run or reach its service: {last[0][:300]}")
        return 0
    packages = [d for d in report["dependencies"] if "editable" not in d.get("skip_reason", "")]
    audited = [d for d in packages if "skip_reason" not in d]
    skipped = [d for d in packages if "skip_reason" in d]
    if not audited:
        print(
            f"pip-audit: NOT AUDITED, none of {len(packages)} packages was found in the "
            "vulnerability service (PyPI's JSON API is unreachable from here); run "
            "`python .ci/audit.py` where https://pypi.org/pypi/<name>/<version>/json answers"
        )
        return 0
    found = [
        (d["name"], d["version"], v["id"], v["fix_versions"]) for d in audited for v in d["vulns"]
    ]
    for name, version, ident, fixes in found:
        print(f"VULNERABLE {name} {version}: {ident} (fixed in {', '.join(fixes) or 'no release'})")
    for d in skipped:
        print(f"not audited: {d['skip_reason']}")
    for ident, reason in ignore.items():
        print(f"ignored {ident}: {reason}")
    print(
        f"pip-audit: {len(audited)} packages audited, {len(found)} vulnerabilities, "
        f"{len(skipped)} not audited, {len(ignore)} ignored (.ci/audit-ignore.txt)"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
