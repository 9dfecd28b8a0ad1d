"""Write params.yaml for a profile: profiles/demo.yaml deep-merged with profiles/<name>.yaml.

Usage: python scripts/params_from_profile.py NAME [--check]
With --check, exit 1 if params.yaml differs from what NAME would give (the test suite checks demo).
A profile that cannot be used (no such file, a name that is not a plain file name, bad YAML, not a mapping, a key
that is not in demo.yaml) exits 2 with a message; params.yaml is left as it was.
"""

import re, sys
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


class ProfileError(ValueError):
    "A profile that cannot be used; the message names the file and the problem."


def read_profile(path):
    "The mapping in a profile file (empty for an empty file); a ProfileError for bad YAML or anything else."
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is not None and not isinstance(data, dict):
        raise ProfileError(f"{path} must be a mapping of parameter groups, not a {type(data).__name__}")
    return data or {}


def params_for(name):
    if not re.fullmatch(r'[A-Za-z0-9_][A-Za-z0-9_.-]*', name) or name.endswith('.yaml'):
        raise ProfileError(f"{name!r} is not a profile name: give the name of a file in profiles/ without .yaml")
    path = ROOT / 'profiles' / f'{name}.yaml'
    if not path.is_file():
        names = ', '.join(sorted(p.stem for p in (ROOT / 'profiles').glob('*.yaml')))
        raise ProfileError(f"no profile {name!r}: expected {path} (profiles: {names})")
    base = read_profile(ROOT / 'profiles' / 'demo.yaml')
    over = read_profile(path) if name != 'demo' else {}
    try:
        merged = merge(base, over)
    except KeyError as e:
        raise ProfileError(f"{path}: {e.args[0]} (a typo?)") from None
    return HEADER.format(name=name) + yaml.dump(merged, Dumper=_Dumper, sort_keys=False)


def main(argv):
    name = next((a for a in argv if not a.startswith('--')), 'demo')
    try:
        text = params_for(name)
    except (ProfileError, OSError) as e:
        print(f"params_from_profile: error: {e}; params.yaml is left as it was", file=sys.stderr)
        return 2
    target = ROOT / 'params.yaml'
    if '--check' in argv:
        return 0 if target.exists() and target.read_text() == text else 1
    tmp = target.with_name('.params.yaml.tmp.yaml')
    tmp.write_text(text)
    tmp.replace(target)
    print(f"params.yaml <- profile {name}")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
