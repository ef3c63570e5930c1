"""Command-line overrides for an entry script's block of defaults: `--name value`, typed like the default.

The defaults stay one visible dict at the top of each script (nanoGPT style), without `exec`-ed
config files; a tuple default takes a comma-separated value, a bool takes 0/1/true/false.
"""
import argparse


def _parse_bool(s):
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1/true/false, got {s!r}")


def _caster(default):
    if isinstance(default, bool):
        return _parse_bool
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        return lambda s: tuple(kind(v) for v in s.split(",") if v)
    return type(default)


def parse(defaults, argv=None, description=None):
    """-> a copy of `defaults` with the command line's overrides applied (unknown names are errors)."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, default in defaults.items():
        ap.add_argument(f"--{name}", type=_caster(default), default=default, metavar=type(default).__name__)
    return dict(vars(ap.parse_args(argv)))


def given(argv):
    """The names set on the command line `argv` (`--name value` or `--name=value`)."""
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--") and len(a) > 2}


def typed(defaults, values, where):
    """{name: JSON value} -> values typed like `defaults` (lists become tuples); unknown names and
    values of another type raise ValueError naming `where`."""
    out = {}
    for name, value in values.items():
        if name not in defaults:
            raise ValueError(f"{where}: unknown setting {name!r}")
        default = defaults[name]
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default) or (isinstance(value, tuple) and default and value
                                                 and type(value[0]) is not type(default[0])):
            raise ValueError(f"{where}: {name} = {value!r}, expected a {type(default).__name__} like {default!r}")
        out[name] = value
    return out
