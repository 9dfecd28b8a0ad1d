"""Write params.yaml for a profile: profiles/demo.yaml deep-merged with profiles/<name>.yaml.

Usage: python scripts/params_from_profile.py NAME [--check]
With --check, exit 1 if params.yaml differs from what NAME would give (the test suite checks demo).
"""

import sys
from pathlib import Path
import yaml

ROOT = Path(__file__).resolve().parents[1]
HEADER = "# GENERATED from profiles/demo.yaml + profiles/{name}.yaml by scripts/params_from_profile.py; edit those.\n"


class _Dumper(yaml.SafeDumper):
    "Lists of scalars on one line ([16, 32, 64]), groups as blocks."


def _list(dumper, data):
    flat = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence('tag:yaml.org,2002:seq', data, flow_style=flat)


_Dumper.add_representer(list, _list)


def merge(base, over):
    """Deep-merge `over` into a copy of `base`; a key absent from `base` is an error (a typo in a profile),
    except in a group that is empty in the demo profile (a free mapping, e.g. synthesize.source_dirs)."""
    out = dict(base)
    for k, v in (over or {}).items():
        if base and k not in base:
            raise KeyError(f"profile key {k!r} does not exist in profiles/demo.yaml")
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def params_for(name):
    base = yaml.safe_load((ROOT / 'profiles' / 'demo.yaml').read_text())
    path = ROOT / 'profiles' / f'{name}.yaml'
    if not path.exists():
        raise SystemExit(f"no profile {name!r}: expected {path}")
    over = yaml.safe_load(path.read_text()) if name != 'demo' else {}
    return HEADER.format(name=name) + yaml.dump(merge(base, over), Dumper=_Dumper, sort_keys=False)


if __name__ == '__main__':
    name = sys.argv[1] if len(sys.argv) > 1 else 'demo'
    text = params_for(name)
    target = ROOT / 'params.yaml'
    if '--check' in sys.argv:
        sys.exit(0 if target.exists() and target.read_text() == text else 1)
    target.write_text(text)
    print(f"params.yaml <- profile {name}")
