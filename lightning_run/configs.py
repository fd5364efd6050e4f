"""Finding and composing experiment configs.

Two rules on top of jsonargparse's ``--config``:

- **Lookup.** ``--config experiments/sgmae.yaml`` (or just ``sgmae.yaml`` / ``sgmae``) names a file relative to
  the working directory first; when there is none, the experiment of that name shipped with the package
  (the repository's ``experiments/`` folder, installed as package data). So the README's commands work from
  any directory and in a non-editable install.
- **Overlays.** A config may start with ``_base_: other.yaml`` (a path relative to the file, or a list of
  them); it is read as ``--config other.yaml --config <this file without _base_>``, so an overlay holds only
  what differs. jsonargparse merges the files in order: dicts key by key; lists (callbacks, stages) are
  replaced, not merged; an overlay giving only ``init_args`` merges into the base's object; and a
  ``class_path`` that changes keeps the base's ``init_args`` that the new class also accepts and silently
  drops the others (so an overlay that switches class restates whatever it must not inherit).
"""

from __future__ import annotations

from pathlib import Path

import yaml

BASE_KEY = "_base_"
CONFIG_FLAGS = ("--config", "-c")


def shipped_experiments() -> Path | None:
    """The experiments folder beside the code: the source tree's ``experiments/`` or the installed copy."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "experiments", here.parent / "experiments"):
        if candidate.is_dir():
            return candidate
    return None


def find_config(name: str | Path) -> Path:
    """``name`` as a path if it exists, else the shipped experiment it names; a clear error otherwise."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = shipped_experiments()
    if shipped is not None and not path.is_absolute():
        parts = path.parts[1:] if path.parts and path.parts[0] == "experiments" else path.parts
        relative = Path(*parts) if parts else path
        for candidate in (relative, relative.with_suffix(".yaml")):
            if (shipped / candidate).is_file():
                return shipped / candidate
    known = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml"))) if shipped is not None else "none"
    raise FileNotFoundError(f"config {name}: no such file (here, or among the shipped experiments: {known})")


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config {path}: not valid YAML{_yaml_where(err)}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"config {path}: not a text (YAML) file: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a mapping of options at the top level, got {type(data).__name__}")
    return data


def _yaml_where(err: yaml.YAMLError) -> str:
    """`` at line L, column C: <problem>`` of a YAML error, on one line."""
    mark = getattr(err, "problem_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}" + (f" ({context})" if context else "")


def expand_config(path: Path, _seen: tuple[Path, ...] = ()) -> list[str]:
    """The ``--config`` values that ``path`` stands for: its bases (recursively) first, then itself.

    A file without ``_base_`` is passed as a path (so jsonargparse resolves relative paths in it as usual);
    an overlay is passed as its YAML text without the ``_base_`` key.
    """
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ValueError(f"config {path}: {BASE_KEY} forms a cycle: {chain}")
    data = _read(path)
    if BASE_KEY not in data:
        return [str(path)]
    bases = data.pop(BASE_KEY)
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"config {path}: {BASE_KEY} must be a file name or a list of them, got {bases!r}")
    values: list[str] = []
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise FileNotFoundError(f"config {path}: its {BASE_KEY} {base} does not exist ({base_path})")
        values += expand_config(base_path, (*_seen, path))
    if data:
        values.append(yaml.safe_dump(data, sort_keys=False))
    return values


def expand_config_args(args: list[str]) -> list[str]:
    """Rewrite every ``--config X`` of a command line by ``find_config`` and ``expand_config``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, value = None, None
        if arg in CONFIG_FLAGS and i + 1 < len(args):
            flag, value, i = arg, args[i + 1], i + 2
        elif arg.startswith("--config="):
            flag, value, i = "--config", arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        if "\n" in value or value.lstrip().startswith("{"):
            out += [flag, value]  # an inline YAML/JSON config, as jsonargparse accepts
            continue
        for expanded in expand_config(find_config(value)):
            out += [flag, expanded]
    return out
