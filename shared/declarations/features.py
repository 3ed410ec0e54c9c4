"""From a declaration's ``[features]`` table to the ordered, resolved feature list.

Three forms, in any mix; features come out in the order they are written:

- ``field = ["value", "zscore", ...]``: per-value transforms (and ``onehot``) of that field;
  names ``field``, ``field_z``, ``field_rate``, ``field_delta``, ``field_stuck``,
  ``field_<value>``.
- ``name = "gap"`` or ``"time_of_day"``: a transform of the event time alone.
- ``name = { <transform> = <inputs>, <parameters>..., then = [...], label = "..." }``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.declarations import named as named_registry
from shared.declarations import transforms as tf
from shared.declarations.convert import convert
from shared.declarations.errors import DeclarationError
from shared.declarations.schema import Feature, FeatureDecl, FieldDecl, StreamDecl

NUMERIC = ("float", "int", "bool")
_POSITIVE = ("alpha", "limit", "typical_std", "min_dt_s", "cap")
_RANGES = {
    "alpha": "0 < alpha <= 1",
    "floor": "floor >= 0",
    **{p: f"{p} > 0" for p in ("limit", "typical_std", "min_dt_s", "cap")},
}
_PARAM_KEYS = sorted({p for ps in tf.PARAMS.values() for p in ps} | {"then", "label"})


@dataclass(frozen=True)
class Context:
    file: str
    stream: StreamDecl
    fields: dict[str, FieldDecl]
    refs: dict[str, dict[str, float]]

    def fail(self, key: str, message: str) -> DeclarationError:
        return DeclarationError(self.file, key, message)

    def label(self, name: str) -> str:
        return self.fields[name].label or name.replace("_", " ").capitalize()

    def field(self, name: Any, key: str) -> FieldDecl:
        if not isinstance(name, str) or name not in self.fields:
            declared = ", ".join(self.fields)
            raise self.fail(key, f"no field {name!r} (declared: {declared})")
        return self.fields[name]

    def numeric(self, name: Any, key: str, transform: str) -> FieldDecl:
        """A field a transform computes with: declared, not personal data, a number."""
        decl = self.field(name, key)
        if decl.pii is not None:
            raise self.fail(
                key,
                f"{name!r} is personal data (pii = {decl.pii!r}) and can "
                "never be a feature input; a named transform computed at "
                "the edge may read it",
            )
        if decl.type not in NUMERIC:
            raise self.fail(key, f"{transform!r} needs a number; {name!r} is {decl.type!r}")
        return decl


def resolve(ctx: Context, table: dict[str, Any]) -> list[Feature]:
    """Every feature of ``table`` in order; refuses duplicates and anything unknown."""
    out: list[Feature] = []
    for key, entry in table.items():
        path = f"features.{key}"
        if isinstance(entry, list):
            out += _short(ctx, key, entry, path)
        elif isinstance(entry, str):
            out += _timed_short(ctx, key, entry, path)
        elif isinstance(entry, dict):
            out += _table(ctx, key, entry, path)
        else:
            raise ctx.fail(path, "expected a list of transforms, a transform name or a table")
    seen: set[str] = set()
    for f in out:
        if f.name in seen:
            raise ctx.fail(f"features.{f.name}", f"two features are named {f.name!r}")
        seen.add(f.name)
    return out


def _unknown(ctx: Context, path: str, name: Any) -> DeclarationError:
    return ctx.fail(path, f"unknown transform {name!r} (known: {', '.join(tf.TRANSFORMS)})")


def _short(ctx: Context, key: str, steps: list[Any], path: str) -> list[Feature]:
    out: list[Feature] = []
    for i, step in enumerate(steps):
        where = f"{path}[{i}]"
        if step not in tf.TRANSFORMS:
            raise _unknown(ctx, where, step)
        if step == "onehot":
            out += _onehot(ctx, key, key, path, None)
        elif step in tf.PER_VALUE:
            ctx.numeric(key, path, step)
            out.append(_per_value(ctx, key + tf.PER_VALUE[step], step, key, {}, None))
        else:
            raise ctx.fail(
                where,
                f"{step!r} is not a transform of one field: write it as a "
                f"table, e.g. {key}_{step} = {{ {step} = ... }}",
            )
    return out


def _timed_short(ctx: Context, key: str, step: str, path: str) -> list[Feature]:
    if step not in tf.TRANSFORMS:
        raise _unknown(ctx, path, step)
    if step not in tf.TIMED:
        raise ctx.fail(path, f"{step!r} needs inputs: write {key} = {{ {step} = ... }}")
    return _timed(ctx, key, step, {}, None)


def _params(step: str, given: dict[str, Any]) -> dict[str, Any]:
    defaults = tf.PARAMS[step]
    return {p: given.get(p, d) for p, d in defaults.items()}


def _per_value(
    ctx: Context, name: str, step: str, field: str, given: dict[str, Any], label: str | None
) -> Feature:
    decl = ctx.fields[field]
    params = _params(step, given)
    if "typical_std" in params:
        params["typical_std"] = params["typical_std"] or decl.typical_std or 1.0
    if step == "value" and decl.range is not None:
        params["range"] = list(decl.range)
    base = ctx.label(field)
    return Feature(
        name=name,
        transform=step,
        inputs=(field,),
        params=params,
        label=label or _step_label(step, base, ctx.stream.device.noun),
    )


def _step_label(step: str, base: str, noun: str) -> str:
    return {
        "value": base,
        "zscore": f"{base} vs {noun}'s rolling mean",
        "rate": f"{base} rate of change",
        "delta": f"{base} change since the {noun}'s previous event",
        "stuck": f"Events in a row {base.lower()} repeated the exact same value",
    }[step]


def _timed(
    ctx: Context, key: str, step: str, given: dict[str, Any], label: str | None
) -> list[Feature]:
    noun = ctx.stream.device.noun
    if step == "gap":
        text = label or f"Time since the {noun}'s previous event"
        return [
            Feature(name=key, transform="gap", inputs=(), params=_params("gap", given), label=text)
        ]
    base = label or "Time of day"
    return [
        Feature(
            name=f"{key}_{part}",
            transform="time_of_day",
            inputs=(),
            params={},
            output=part,
            label=f"{base} ({word})",
        )
        for part, word in (("sin", "sine"), ("cos", "cosine"))
    ]


def _onehot(ctx: Context, key: str, field: Any, path: str, label: str | None) -> list[Feature]:
    decl = ctx.field(field, path)
    if decl.type != "enum" or not decl.values:
        raise ctx.fail(path, f"'onehot' needs an enum field; {field!r} is {decl.type!r}")
    base = label or ctx.label(field)
    return [
        Feature(
            name=f"{key}_{v}",
            transform="onehot",
            inputs=(field,),
            params={"values": list(decl.values)},
            output=v,
            label=f"{base}: {v.replace('_', ' ')}",
        )
        for v in decl.values
    ]


def _table(ctx: Context, key: str, entry: dict[str, Any], path: str) -> list[Feature]:
    for k in entry:
        if k not in tf.TRANSFORMS and k not in _PARAM_KEYS:
            raise ctx.fail(
                f"{path}.{k}",
                f"unknown transform or parameter {k!r} (transforms: {', '.join(tf.TRANSFORMS)})",
            )
    steps = [k for k in entry if k in tf.TRANSFORMS]
    if len(steps) != 1:
        what = "no transform" if not steps else f"more than one transform ({', '.join(steps)})"
        raise ctx.fail(
            path, f"{what}: a feature table takes exactly one of {', '.join(tf.TRANSFORMS)}"
        )
    step = steps[0]
    decl = convert(entry, FeatureDecl, ctx.file, path)
    given = {p: v for p, v in _items(decl) if p in _PARAM_KEYS and v is not None}
    label = given.pop("label", None)
    then = given.pop("then", None)
    _check_params(ctx, step, then, given, path)
    if step in tf.DERIVED:
        return _derived(ctx, key, step, entry[step], given, then, label, path)
    if then is not None:
        raise ctx.fail(
            f"{path}.then",
            f"'then' follows a derived value ({', '.join(tf.DERIVED)}), not {step!r}",
        )
    return _single(ctx, key, step, entry[step], given, label, path)


def _items(decl: FeatureDecl) -> list[tuple[str, Any]]:
    return [(name, getattr(decl, name)) for name in decl.__struct_fields__]


def _check_params(
    ctx: Context, step: str, then: list[str] | None, given: dict[str, Any], path: str
) -> None:
    allowed = set(tf.PARAMS[step])
    for i, t in enumerate(then or []):
        if t not in tf.PER_VALUE:
            raise ctx.fail(
                f"{path}.then[{i}]",
                f"unknown per-value transform {t!r} (known: {', '.join(tf.PER_VALUE)})",
            )
        allowed |= set(tf.PARAMS[t])
    for p, v in given.items():
        if p not in allowed:
            takes = ", ".join(sorted(allowed)) or "none"
            raise ctx.fail(
                f"{path}.{p}", f"parameter {p!r} does not apply to {step!r} (it takes: {takes})"
            )
        bad = (
            (p in _POSITIVE and not v > 0)
            or (p == "alpha" and not v <= 1)
            or (p == "floor" and not v >= 0)
        )
        if bad:
            raise ctx.fail(f"{path}.{p}", f"out of range: {_RANGES[p]}")


def _single(
    ctx: Context,
    key: str,
    step: str,
    inputs: Any,
    given: dict[str, Any],
    label: str | None,
    path: str,
) -> list[Feature]:
    where = f"{path}.{step}"
    if step in tf.TIMED:
        if inputs is not True:
            raise ctx.fail(where, f"write {step} = true")
        return _timed(ctx, key, step, given, label)
    if step == "onehot":
        return _onehot(ctx, key, inputs, where, label)
    if step == "named":
        return [_named(ctx, key, inputs, label, where)]
    if step == "stuck" and isinstance(inputs, list):
        return [_stuck_group(ctx, key, inputs, given, label, where)]
    ctx.numeric(inputs, where, step)
    return [_per_value(ctx, key, step, inputs, given, label)]


def _stuck_group(
    ctx: Context, key: str, inputs: list[str], given: dict[str, Any], label: str | None, where: str
) -> Feature:
    if not inputs:
        raise ctx.fail(where, "'stuck' takes a field or a list of one or more fields")
    for i, name in enumerate(inputs):
        ctx.numeric(name, f"{where}[{i}]", "stuck")
    text = label or (
        "Events in a row one of "
        + ", ".join(ctx.label(n).lower() for n in inputs)
        + " repeated the exact same value"
    )
    return Feature(
        name=key,
        transform="stuck",
        inputs=tuple(inputs),
        params=_params("stuck", given),
        label=text,
    )


def _named(ctx: Context, key: str, name: Any, label: str | None, where: str) -> Feature:
    entry = named_registry.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ctx.fail(
            where, f"no named transform {name!r} (registered: {', '.join(named_registry.names())})"
        )
    # Reads standing for the device or the time field read the stream's own.
    own = {entry.device_read: ctx.stream.device.field, entry.time_read: ctx.stream.time.field}
    inputs = tuple(own.get(r, r) for r in entry.reads)
    for field in inputs:
        ctx.field(field, where)
    return Feature(
        name=key,
        transform="named",
        inputs=inputs,
        params={"named": entry.name, "version": entry.version},
        label=label or key.replace("_", " ").capitalize(),
    )


def _derived(
    ctx: Context,
    key: str,
    step: str,
    inputs: Any,
    given: dict[str, Any],
    then: list[str] | None,
    label: str | None,
    path: str,
) -> list[Feature]:
    where = f"{path}.{step}"
    names = _derived_inputs(ctx, step, inputs, where)
    params = _params(step, given)
    if step == "ref_ratio":
        params = _ref_params(ctx, given, path)
    labels = [ctx.label(n) for n in names]
    base = label or _derived_label(step, labels, params)
    noun = ctx.stream.device.noun
    out = []
    for t in then or ["value"]:
        step_params = {**params, **_params(t, given)}
        if "typical_std" in step_params:
            step_params["typical_std"] = step_params["typical_std"] or 1.0
        out.append(
            Feature(
                name=key + tf.PER_VALUE[t],
                transform=step,
                inputs=tuple(names),
                params=step_params,
                then=t,
                label=_step_label(t, base, noun),
            )
        )
    return out


def _derived_inputs(ctx: Context, step: str, inputs: Any, where: str) -> list[str]:
    if step == "ref_ratio":
        ctx.numeric(inputs, where, step)
        return [inputs]
    want = "two" if step in ("diff", "ratio") else "two or more"
    if not isinstance(inputs, list) or len(inputs) < 2 or (want == "two" and len(inputs) != 2):
        raise ctx.fail(where, f"{step!r} takes a list of {want} fields")
    for i, name in enumerate(inputs):
        ctx.numeric(name, f"{where}[{i}]", step)
    return list(inputs)


def _ref_params(ctx: Context, given: dict[str, Any], path: str) -> dict[str, Any]:
    by, table = given.get("by"), given.get("table")
    if by is None or table is None:
        raise ctx.fail(path, "'ref_ratio' needs by = <field> and table = <name in [refs]>")
    decl = ctx.field(by, f"{path}.by")
    if decl.pii is not None:
        raise ctx.fail(
            f"{path}.by",
            f"{by!r} is personal data (pii = {decl.pii!r}) and cannot key a reference table",
        )
    if decl.type == "float":
        raise ctx.fail(
            f"{path}.by",
            f"a reference table is keyed by a str, enum, int or bool field; {by!r} is 'float'",
        )
    if table not in ctx.refs:
        raise ctx.fail(
            f"{path}.table",
            f"no table {table!r} in [refs] (declared: {', '.join(ctx.refs) or 'none'})",
        )
    return {
        "by": by,
        "table": table,
        "missing": given.get("missing", 0.0),
        "values": dict(sorted(ctx.refs[table].items())),
    }


def _derived_label(step: str, labels: Sequence[str], params: dict[str, Any]) -> str:
    if step == "spread":
        return "Spread between " + ", ".join(x.lower() for x in labels)
    if step == "diff":
        return f"{labels[0]} minus {labels[1].lower()}"
    if step == "ratio":
        return f"{labels[0]} vs {labels[1].lower()}"
    return f"{labels[0]} vs its reference by {params['by'].replace('_', ' ')}"
