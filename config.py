"""nanoGPT-style configuration: `python script.py [config/x.py] [--key=value ...]`, shared by every entry point.

Every script keeps its settings in one dataclass with a one-line `# comment` per field. This module turns that
dataclass into the command-line interface people know from nanoGPT:

    python train.py                              # defaults (the toy run)
    python train.py config/polylm_1_7b.py        # a config file: plain Python assignments, `max_iters = 1000`
    python train.py --max_iters=50 --compile=True

Later arguments win. Mistakes fail early with one clear message: an unknown key names the closest valid keys, a value
of the wrong type names the key, the type wanted and the value given. `--help` lists every key with its default and
its comment (read from the dataclass's source, so the help can never drift from the code).
"""
import ast
import dataclasses
import difflib
import inspect
import os
import re
import sys


class ConfigError(ValueError):
    """A bad setting: the message names the key (and file) and says how to fix it."""


def field_help(cls):
    """{name: comment} from the `name: type = default  # comment` lines of a dataclass's source (and its bases')."""
    helps = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        helps.update({m.group(1): m.group(2).strip()
                      for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]+=.*?#\s*(.*)$", src, re.M)})
    return helps


def did_you_mean(key, names):
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else f" Valid keys: {', '.join(sorted(names))}."


def _coerce(key, value, default, where):
    """Check (and gently convert) `value` against the type of the field's default."""
    want = type(default)
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif want is str:
        return value if isinstance(value, str) else str(value)
    elif want in (list, tuple, dict):
        if isinstance(value, want):
            return value
    else:
        return value
    raise ConfigError(f"{where}: `{key}` must be {want.__name__} (default {default!r}), got {value!r}")


def _literal(text):
    """'3' -> 3, '1e-4' -> 0.0001, 'True' -> True, "['a']" -> ['a'], anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _read_config_file(path):
    try:
        src = open(path, encoding="utf-8").read()
    except OSError as e:
        raise ConfigError(f"config file {path!r} cannot be read ({e.strerror}); pass an existing config/*.py") from None
    scope = {}
    try:
        exec(compile(src, path, "exec"), scope)
    except Exception as e:  # a config file is user code: report where it broke
        raise ConfigError(f"config file {path!r} failed to run: {type(e).__name__}: {e}") from None
    return {k: v for k, v in scope.items() if not k.startswith("_") and not inspect.ismodule(v)
            and not callable(v)}


def underscore_key(arg):
    """--per-lang=3 reads like --per_lang=3 (dashes in the key only, never in the value)."""
    if not arg.startswith("--"):
        return arg
    key, eq, value = arg[2:].partition("=")
    return "--" + key.replace("-", "_") + eq + value


def cpu_name():
    """The CPU's model name, for benchmark reports."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"


def _join_spaced(argv, defaults, names):
    """Also accept `--key value`, a bare `--flag` (= True for a bool key) and dashes in keys; normalise to `--key=value`."""
    out, i = [], 0
    argv = [underscore_key(a) for a in argv]
    while i < len(argv):
        arg = argv[i]
        key = arg[2:]
        if arg.startswith("--") and "=" not in arg and key in names:
            if isinstance(getattr(defaults, key), bool) and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                out.append(f"--{key}=True")
            elif i + 1 < len(argv):
                out.append(f"--{key}={argv[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"argument {arg!r} needs a value: --{key}=VALUE")
        else:
            out.append(arg)
        i += 1
    return out


def parse_args(cls, argv=None, prog=None, other_file_keys=False):
    """Build a `cls` dataclass instance from defaults, config files and --key=value overrides.
    other_file_keys: config files may hold keys cls does not have (plan.py reads train.py's config files and uses
    the keys it knows; train.py itself checks the rest). Command-line keys are always checked."""
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = cls()
    names = [f.name for f in dataclasses.fields(cls)]
    if any(a in ("-h", "--help") for a in argv):
        print(usage(cls, prog))
        raise SystemExit(0)
    values = {}
    argv = _join_spaced(argv, defaults, names)
    for arg in argv:
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            if not eq:
                raise ConfigError(f"argument {arg!r}: write --{key}=VALUE (nanoGPT style)")
            if key not in names:
                raise ConfigError(f"unknown config key {key!r} (from {arg!r}).{did_you_mean(key, names)}")
            values[key] = _coerce(key, _literal(raw), getattr(defaults, key), f"argument {arg!r}")
        elif arg.endswith(".py"):
            for key, val in _read_config_file(arg).items():
                if other_file_keys and key not in names:
                    continue
                if key not in names:
                    raise ConfigError(f"config file {arg!r}: unknown key {key!r}.{did_you_mean(key, names)}")
                values[key] = _coerce(key, val, getattr(defaults, key), f"config file {arg!r}")
        else:
            raise ConfigError(f"argument {arg!r}: expected a config file (config/x.py) or --key=value")
    return dataclasses.replace(defaults, **values)


def usage(cls, prog=None):
    helps = field_help(cls)
    lines = [f"usage: python {prog or sys.argv[0]} [config/x.py ...] [--key=value ...]", "", "settings (default: meaning):"]
    width = max(len(f.name) for f in dataclasses.fields(cls))
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name:<{width}} = {default!r:<14} {helps.get(f.name, '')}")
    return "\n".join(lines)


def run_cli(main_fn, cls, argv=None, prog=None, other_file_keys=False):
    """Parse, call main_fn(cfg). Bad input (a bad setting, a missing file, invalid data: ValueError or OSError
    subclasses) -> one line on stderr and exit code 2; POLYLM_DEBUG=1 shows the traceback instead."""
    try:
        return main_fn(parse_args(cls, argv, prog, other_file_keys))
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError) as e:
        if os.environ.get("POLYLM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
