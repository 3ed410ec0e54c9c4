"""Typed conversion of declaration tables, with errors that name the file and key path."""

from __future__ import annotations

import re
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import msgspec

from shared.declarations.errors import DeclarationError

T = TypeVar("T")
_PATH = re.compile(r" - at `\$(.*)`$")


def join(prefix: str, key: str) -> str:
    if not key:
        return prefix
    if not prefix:
        return key.lstrip(".")
    return prefix + key if key.startswith("[") else f"{prefix}.{key.lstrip('.')}"


def convert(data: Any, kind: type[T], file: str, prefix: str) -> T:
    """``data`` as ``kind``, or a DeclarationError naming ``prefix`` plus the path inside."""
    try:
        return msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        inner = match.group(1) if match else ""
        text = text[: match.start()] if match else text
        if text.startswith("Object contains unknown field"):
            unknown = text.split("`")[1]
            known = known_keys(kind, inner)
            hint = f" (known: {', '.join(known)})" if known else ""
            raise DeclarationError(
                file, join(join(prefix, inner), unknown), f"unknown key{hint}"
            ) from None
        if text.startswith("Invalid enum value"):
            text += f" (one of: {', '.join(choices(kind, inner))})"
        raise DeclarationError(file, join(prefix, inner), text) from None


def _struct_of(hint: Any) -> type[msgspec.Struct] | None:
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return hint
    if get_origin(hint) in (Union, types.UnionType):
        structs = [a for a in get_args(hint) if _struct_of(a) is not None]
        return structs[0] if len(structs) == 1 else None
    return None


def choices(kind: Any, path: str) -> list[str]:
    """The values a Literal-typed key at ``path`` (``.a.b`` below ``kind``) accepts."""
    *parents, last = [p for p in path.split(".") if p] or [""]
    struct = _struct_of(kind)
    for part in parents:
        struct = _struct_of(get_type_hints(struct).get(part)) if struct is not None else None
    hint = get_type_hints(struct).get(last) if struct is not None else None
    while get_origin(hint) in (Union, types.UnionType):
        hint = next((a for a in get_args(hint) if a is not type(None)), None)
    return [str(a) for a in get_args(hint)] if get_origin(hint) is Literal else []


def known_keys(kind: Any, path: str) -> list[str]:
    """The keys the struct at ``path`` (``.a.b`` below ``kind``) accepts, if it is one."""
    struct = _struct_of(kind)
    for part in [p for p in path.split(".") if p]:
        if struct is None:
            return []
        struct = _struct_of(get_type_hints(struct).get(part))
    return list(struct.__struct_fields__) if struct is not None else []
