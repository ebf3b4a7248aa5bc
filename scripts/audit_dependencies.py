"""
Audit the installed dependencies for known vulnerabilities with pip-audit, and say plainly what
was and was not audited.

pip-audit asks a vulnerability service about each installed distribution (by default PyPI's
per-release JSON API, which carries the advisories of the Python Packaging Advisory Database).
Where that service cannot be reached, or answers for no release (a mirror, an air-gapped CI),
pip-audit itself prints "No known vulnerabilities found" after skipping everything; this script
counts what was really audited instead.

Exit status: 1 when a known vulnerability is found in an audited dependency (its id, the
installed version and the fixed versions are printed); 0 otherwise, including when nothing could
be audited, which is said on one line starting ``dependencies NOT audited``. Run by
``scripts/test.sh`` after the tests; ``python scripts/audit_dependencies.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    """Run pip-audit on this interpreter's environment; print the verdict; return the exit status."""
    try:
        import pip_audit  # noqa: F401 - only to say plainly when it is missing
    except ImportError:
        print("dependencies NOT audited: pip-audit is not installed (pip install -e '.[dev]')")
        return 0
    command = [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off", "--format", "json"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        print("dependencies NOT audited: pip-audit did not finish within 600 s (vulnerability service unreachable?)")
        return 0
    try:
        report = json.loads(result.stdout)
    except ValueError:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"dependencies NOT audited: pip-audit could not reach its vulnerability data ({reason})")
        return 0
    dependencies = report.get("dependencies", [])
    skipped = [d for d in dependencies if "skip_reason" in d]
    audited = [d for d in dependencies if "skip_reason" not in d]
    vulnerable = [(d, v) for d in audited for v in d.get("vulns", [])]
    if not audited:
        example = skipped[0]["skip_reason"] if skipped else "no dependency listed"
        print(f"dependencies NOT audited: the vulnerability service answered for none of {len(dependencies)} "
              f"installed distributions (e.g. {example}); run pip-audit where PyPI's JSON API is reachable")
        return 0
    for dep, vuln in vulnerable:
        fixes = ", ".join(vuln.get("fix_versions", [])) or "no fixed version yet"
        print(f"VULNERABLE {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes}) {' '.join(vuln.get('aliases', []))}")
    names = ", ".join(sorted(d["name"] for d in skipped))
    print(f"pip-audit: {len(audited)} of {len(dependencies)} installed distributions audited, "
          f"{len(vulnerable)} known vulnerabilit{'y' if len(vulnerable) == 1 else 'ies'}"
          + (f"; not audited: {names}" if skipped else ""))
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
