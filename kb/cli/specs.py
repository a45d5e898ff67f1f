"""Command-line options generated from a command's pydantic spec (`kb.finetune.options`).

A spec field becomes a `--flag` (underscores as dashes) whose help is the field's description
followed by its bounds, e.g. `[0<=x<=32]`; a choice shows its values as the metavar and a list
is typed comma-separated. Values are checked by the spec itself (`cli_build`), so a bad value
gets the words the HTTP API gives it. `spec_options` adds the flags to a typer command;
`add_spec_arguments` adds them to an argparse parser (the benchmarks).
"""

from __future__ import annotations

import argparse
import inspect
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kb.finetune.options import Escapes, S, Short, build


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_build(spec: type[S], values: Mapping[str, Any]) -> S:
    """`spec` from the values of its generated flags; InvalidInput names each bad `--flag`."""
    return build(spec, {k: parse(spec, k, v) for k, v in values.items()}, name=flag)


def parse(spec: type[BaseModel], name: str, value: Any) -> Any:
    """A flag's value as the spec takes it: a list from its comma-separated text, `\\n` in
    escaped text as a newline."""
    field = spec.model_fields.get(name)
    if field is None:  # not an option of the spec: refused by name when it is built
        return value
    option = _Option.of(name, field)
    if isinstance(value, str) and option.is_list:
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, str) and option.escaped:
        return value.replace("\\n", "\n").replace("\\t", "\t")
    return value


@dataclass
class _Option:
    """How one spec field reads on the command line."""

    name: str
    type: type
    default: Any
    help: str
    metavar: str | None
    flags: list[str]
    is_list: bool
    escaped: bool
    required: bool

    @classmethod
    def of(cls, name: str, field: FieldInfo) -> _Option:
        kind, optional = _unwrap(field.annotation)
        choices = get_args(kind) if get_origin(kind) is Literal else ()
        is_list = get_origin(kind) in (list, tuple)
        escaped = any(isinstance(m, Escapes) for m in field.metadata)
        default = None if field.is_required() else field.default
        if is_list and default is not None:
            default = ",".join(default)
        if escaped and isinstance(default, str):
            default = default.replace("\n", "\\n").replace("\t", "\\t")
        if choices or is_list:
            kind = str
        bounds = _bounds(field.metadata)
        return cls(
            name=name,
            type=kind,
            default=default,
            help=" ".join(x for x in (field.description or "", bounds) if x),
            metavar=f"[{'|'.join(choices)}]" if choices else ("A,B,..." if is_list else None),
            flags=[flag(name)] + [m.flag for m in field.metadata if isinstance(m, Short)],
            is_list=is_list,
            escaped=escaped,
            required=field.is_required() and not optional,
        )


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None was allowed); Annotated metadata dropped."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return inner[0], len(inner) < len(get_args(annotation))
    return annotation, False


def _bounds(metadata: Iterable[Any]) -> str:
    """A field's bounds as click prints a range, e.g. `[0<=x<=32]`; '' for none."""
    low = high = ""
    for m in metadata:
        if isinstance(m, at.Ge):
            low = f"{m.ge}<="
        elif isinstance(m, at.Gt):
            low = f"{m.gt}<"
        elif isinstance(m, at.Le):
            high = f"<={m.le}"
        elif isinstance(m, at.Lt):
            high = f"<{m.lt}"
        elif isinstance(m, at.MaxLen):
            return f"(at most {m.max_length})"
    return f"[{low}x{high}]" if low or high else ""


def options_of(spec: type[BaseModel], only: Iterable[str] | None = None) -> list[_Option]:
    names = list(only) if only is not None else list(spec.model_fields)
    return [_Option.of(name, spec.model_fields[name]) for name in names]


def _typer_flags(option: _Option) -> list[str]:
    if option.type is bool:  # a switch both ways, e.g. --reindex/--no-reindex
        return [f"{option.flags[0]}/--no-{option.flags[0][2:]}", *option.flags[1:]]
    return option.flags


def spec_options(spec: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add a flag per field of `spec` to a typer command, in the place of its `options`
    parameter, which receives the flags' values as one dict, for the command to give to
    `cli_build` inside its own error handling."""
    fields = options_of(spec)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        names = {f.name for f in fields}
        generated = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[
                    f.type if f.required or f.default is not None else f.type | None,
                    typer.Option(*_typer_flags(f), help=f.help, metavar=f.metavar),
                ],
                default=... if f.required else f.default,
            )
            for f in fields
        ]
        params = []  # the flags stand where `options` stands; keyword-only, so any order holds
        for name, p in inspect.signature(command, eval_str=True).parameters.items():
            kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)]
            params += generated if name == "options" else kept

        def run(**kwargs: Any) -> Any:
            options = {k: kwargs.pop(k) for k in names}
            return command(options=options, **kwargs)

        # typer reads a command's parameters from its signature and annotations
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__name__, run.__doc__ = command.__name__, command.__doc__
        run.__module__ = command.__module__
        return run

    return decorate


def add_spec_arguments(
    parser: argparse.ArgumentParser,
    spec: type[BaseModel],
    only: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add a flag per field named in `only` to an argparse parser, with the spec's help and
    bounds; `defaults` override the spec's. Read the values back with `cli_build`."""
    for f in options_of(spec, only):
        default = (defaults or {}).get(f.name, f.default)
        if f.type is bool:
            parser.add_argument(
                *f.flags, action=argparse.BooleanOptionalAction, default=default, help=f.help
            )
            continue
        parser.add_argument(*f.flags, type=f.type, default=default, help=f.help, metavar=f.metavar)
