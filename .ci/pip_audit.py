"""pip-audit over the virtualenv's installed packages (what `make venv` resolved from
pyproject.toml), saying honestly what it could not check.

pip-audit asks PyPI's advisory data (or OSV) about each package. From machines that cannot
reach them it skips every package and still prints "No known vulnerabilities found"; this
wrapper reads its JSON instead and reports three things: the vulnerabilities found (exit 1),
the packages checked, and the packages NOT checked with the reason. Where the advisory sources
are reachable, `make audit` therefore checks everything; where they are not, it says "not
checked" for each package rather than passing them as clean.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def main() -> int:
    run = subprocess.run(
        [str(BIN / "pip-audit"), "--local", "--format", "json", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(run.stderr.strip() or run.stdout.strip(), file=sys.stderr)
        print("pip-audit: not checked (it gave no report)")
        return 0 if run.returncode == 0 else run.returncode
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    checked = [d for d in deps if not d.get("skip_reason")]
    vulnerable = [d for d in checked if d.get("vulns")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
            print(f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})")
    for dep in skipped:
        print(f"not checked: {dep['name']}: {dep['skip_reason']}")
    print(
        f"pip-audit: {len(checked)} packages checked, {len(vulnerable)} vulnerable,"
        f" {len(skipped)} NOT CHECKED (advisory source unreachable or package unknown there)"
    )
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
