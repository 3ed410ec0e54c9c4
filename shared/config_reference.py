"""docs/configuration.md, generated from the config structs: every setting's type and default.

Each setting's description is the comment right above it in its struct (the section's is the
struct's docstring), so the reference is written where the setting is. Regenerate the page
after changing a config struct (``tests/unit/test_config_reference.py`` fails until then)::

    .venv/bin/python -m shared.config_reference > docs/configuration.md   # or: make docs

The config modules are named, not imported, here: ``shared`` imports neither ``edge`` nor
``cloud`` (docs/architecture.md).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi

from shared.config import Secret

# The files documented: (file name, module, root struct). Each module's docstring introduces
# its file and its ENV table names the settings the environment may set.
FILES = (
    ("edge.toml", "edge.config", "EdgeConfig"),
    ("cloud.toml", "cloud.config", "CloudConfig"),
)

INTRO = """\
# Configuration reference

<!-- Generated from the config structs by `python -m shared.config_reference` (make docs);
edit the structs' comments, not this page: tests/unit/test_config_reference.py compares them. -->

One TOML file configures a gateway (`edge.toml`, `edge/config.py`), one the cloud
(`cloud.toml`, `cloud/config.py`). Every setting has a default that works on one machine with
`fleetsentry infra up`. A wrong value fails at start-up with the setting's dotted name
(`mqtt.port: Expected int, got str in edge.toml`); unknown settings are rejected by name. Only
the settings marked *env* below may also come from the environment; secrets are typed as
secrets and never printed. The gateway's disk is one budget, `[disk] budget`, shared out
between its topics, spool, broker and vault as [disk.md](disk.md) explains.
"""


def field_comments(cls: type) -> dict[str, str]:
    """Each field of ``cls`` (and its bases) -> the comment lines right above it, joined.

    >>> from shared.kafka_config import KafkaSettings
    >>> field_comments(KafkaSettings)["mechanism"]
    'The SASL mechanism of that login.'
    """
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not issubclass(klass, msgspec.Struct) or klass is msgspec.Struct:
            continue
        lines = textwrap.dedent(inspect.getsource(klass)).splitlines()
        for node in ast.parse("\n".join(lines)).body[0].body:  # type: ignore[attr-defined]
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above: list[str] = []
            n = node.lineno - 2
            while n >= 0 and lines[n].strip().startswith("#"):
                above.insert(0, lines[n].strip().lstrip("#").strip())
                n -= 1
            if above:
                found[node.target.id] = " ".join(above)
    return found


def _md(text: str) -> str:
    """A docstring's or comment's text as one Markdown line (rst ``code`` -> `code`).

    >>> print(_md("``raw.*`` -> <data_dir>/x.*"))
    `raw.*` -> &lt;data_dir>/x.\\*
    """
    parts = " ".join(text.split()).replace("``", "`").split("`")
    # Outside code, <name> would be an HTML tag and *.toml the start of emphasis.
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts).replace("|", "\\|")


def type_name(t: mi.Type) -> str:
    """A setting's type in words, with its bounds.

    >>> type_name(mi.IntType(ge=1, le=16))
    'integer, 1 to 16'
    >>> type_name(mi.UnionType(types=(mi.CustomType(cls=Path), mi.NoneType())))
    'path, or unset'
    """
    if isinstance(t, mi.UnionType):
        some = [x for x in t.types if not isinstance(x, mi.NoneType)]
        name = " or ".join(type_name(x) for x in some)
        return name + ", or unset" if len(some) < len(t.types) else name
    if isinstance(t, mi.IntType | mi.FloatType):
        return ("integer" if isinstance(t, mi.IntType) else "number") + _bounds(t)
    if isinstance(t, mi.StrType):
        return f"string matching `{t.pattern}`" if t.pattern else "string"
    if isinstance(t, mi.BoolType):
        return "boolean"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in t.values)
    if isinstance(t, mi.ListType):
        return f"list of {type_name(t.item_type)}s"
    if isinstance(t, mi.CustomType) and t.cls is Secret:
        return "secret string"
    if isinstance(t, mi.CustomType) and t.cls is Path:
        return "path"
    if isinstance(t, mi.StructType):
        return "table"
    return "object"


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    low = (t.ge, ">=") if t.ge is not None else (t.gt, ">")
    high = (t.le, "<=") if t.le is not None else (t.lt, "<")
    if low[0] is not None and high[0] is not None and low[1] == ">=" and high[1] == "<=":
        return f", {low[0]} to {high[0]}"
    parts = [f"{op} {v}" for v, op in (low, high) if v is not None]
    return ", " + " and ".join(parts) if parts else ""


def default_text(value: Any) -> str:
    """A default as it would be written in TOML (paths under the home directory as ``~``).

    >>> default_text(None), default_text(True), default_text("lz4"), default_text([])
    ('unset', '`true`', '`"lz4"`', '`[]`')
    """
    if value is None:
        return "unset"
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        if text == home or text.startswith(home + "/"):
            text = "~" + text[len(home) :]
        return f'`"{text}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[]`" if not value else f"`{json.dumps([str(v) for v in value])}`"
    return f"`{json.dumps(value)}`"


def _default(field: mi.Field) -> str:
    if field.required:
        return "required"
    if field.default is not msgspec.NODEFAULT:
        return default_text(field.default)
    return default_text(field.default_factory())


def _struct(t: mi.Type) -> mi.StructType | None:
    return t if isinstance(t, mi.StructType) else None


def _list_of_struct(t: mi.Type) -> mi.StructType | None:
    return _struct(t.item_type) if isinstance(t, mi.ListType) else None


def section(
    title: str, info: mi.StructType, prefix: str, env: dict[str, str], skip: bool = False
) -> Iterator[str]:
    """One struct's heading, docstring and table of its plain settings."""
    doc = inspect.getdoc(info.cls) if info.cls.__doc__ else ""
    comments = field_comments(info.cls)
    rows = []
    for field in info.fields:
        if skip and _struct(field.type) is not None:
            continue
        name = field.encode_name
        text = _md(comments.get(name, ""))
        dotted = prefix + name
        if dotted in env:
            text += f" *env*: `{env[dotted]}`."
        rows.append(f"| `{name}` | {type_name(field.type)} | {_default(field)} | {text} |")
    if not rows:
        return
    yield f"### {title}\n"
    if doc:
        text = _md(re.sub(r"^``\[[^]]+\]``: ", "", doc))
        yield text[:1].upper() + text[1:] + "\n"
    yield "| setting | type | default | what it is for |"
    yield "|---|---|---|---|"
    yield from rows
    yield ""


def reference(files: tuple[tuple[str, str, str], ...] = FILES) -> str:
    """The whole page."""
    out = [INTRO]
    for file_name, module_name, root in files:
        module = importlib.import_module(module_name)
        env: dict[str, str] = getattr(module, "ENV", {})
        info = mi.type_info(getattr(module, root))
        assert isinstance(info, mi.StructType)
        out.append(f"## `{file_name}`\n")
        if module.__doc__:
            out.append(_module_doc(module.__doc__) + "\n")
        out.extend(section("Top level", info, "", env, skip=True))
        for field in info.fields:
            sub = _struct(field.type)
            if sub is None:
                continue
            out.extend(section(f"`[{field.encode_name}]`", sub, field.encode_name + ".", env))
            for inner in sub.fields:
                item = _list_of_struct(inner.type)
                if item is not None:
                    title = f"`[[{field.encode_name}.{inner.encode_name}]]`"
                    out.extend(section(title, item, "", {}))
    return "\n".join(out).rstrip() + "\n"


def _module_doc(doc: str) -> str:
    """A config module's docstring: its prose as Markdown, its ```toml example kept."""
    text = inspect.cleandoc(doc)
    parts = re.split(r"(```toml\n.*?```)", text, flags=re.S)
    return "\n\n".join(
        p if p.startswith("```") else "\n\n".join(_md(x) for x in p.split("\n\n") if x.strip())
        for p in parts
        if p.strip()
    )


def main() -> None:
    print(reference(), end="")


if __name__ == "__main__":
    main()
