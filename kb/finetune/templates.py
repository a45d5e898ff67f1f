"""Prompt templates: the package's own prompt files and user templates filled from table rows."""

from __future__ import annotations

import string
from importlib import resources
from typing import Any

from kb.errors import InvalidInput


def package_prompt(name: str) -> str:
    """Text of a prompt file shipped in `kb/prompts/`."""
    return (resources.files("kb") / "prompts" / name).read_text(encoding="utf-8").rstrip("\n")


class _ColumnFormatter(string.Formatter):
    """Looks a field up as a whole column name, so `{price.usd}` means the column `price.usd`."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        return kwargs[field_name], field_name


def template_fields(template: str) -> list[str]:
    """The named fields of a template, in order of first use."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidInput(
            f"template {template!r} is malformed ({exc}): write fields as {{column}} and a "
            "literal brace as {{{{ or }}}}"
        ) from exc
    fields: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.strip() or name.isdigit():
            raise InvalidInput(
                f"template {template!r} has a positional field {{{name}}}: name a column "
                "instead, e.g. {name}"
            )
        if name not in fields:
            fields.append(name)
    return fields


def match_columns(fields: list[str], columns: list[str], where: str) -> dict[str, str]:
    """Map each template field to a column (exact, else ignoring case); unknown fields fail."""
    by_folded = {c.strip().casefold(): c for c in columns}
    mapping = {}
    for name in fields:
        column = name if name in columns else by_folded.get(name.strip().casefold())
        if column is None:
            raise InvalidInput(
                f"template field {{{name}}} is not a column of {where} (columns: "
                f"{', '.join(columns)}): rename the field in --template or add a column {name!r}"
            )
        mapping[name] = column
    return mapping


def fill_template(template: str, values: dict[str, Any]) -> str:
    return _ColumnFormatter().vformat(template, (), values)
