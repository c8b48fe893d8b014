#!/usr/bin/env python3
"""Renders a Helm chart to YAML on standard output, as `helm template` does, with the
Helm SDK from PyPI (helm-python-sdk; scripts/setup.sh --test installs it), so no helm
binary is needed:

    python3 scripts/helm-template.py deploy/helm/periscope [--name periscope] [--namespace periscope]
        [--values-json '{"webConfig": {"secretName": "periscope-web"}}']
"""

import argparse
import json
import sys

import helm_python


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chart")
    parser.add_argument("--name", default="periscope")
    parser.add_argument("--namespace", default="periscope")
    parser.add_argument("--values-json", default=None, help="values to override, as JSON")
    args = parser.parse_args()
    values = json.loads(args.values_json) if args.values_json else None
    with helm_python.Chart.load(args.chart) as chart:
        rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    for path in sorted(rendered):
        text = rendered[path].strip()
        if not text or path.endswith("NOTES.txt"):
            continue
        sys.stdout.write(f"---\n# Source: {path}\n{text}\n")


if __name__ == "__main__":
    main()
