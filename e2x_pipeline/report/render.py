"""The report's Jinja2 environment: templates shipped in ``templates/``, autoescaping always on.

Every section is one template (``templates/<section>.html.j2``) that gets plain values (strings,
numbers, :class:`~.markup.Table`, :class:`~.markup.Figure`) and the page
(``templates/page.html.j2``) joins the rendered sections. Autoescaping is on for every template
(``select_autoescape`` with ``default=True``), so a category or file name such as
``<script>alert(1)</script>`` shows as text. A section's rendered output is already escaped
markup (:class:`markupsafe.Markup`), which is why the page may insert it unescaped.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from markupsafe import Markup

from .markup import fmt

TEMPLATES = "templates"
"""The folder of the templates inside this package (shipped as package data)."""


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one environment of the report (cached: templates compile once per process)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("e2x_pipeline.report", TEMPLATES),
        # html and .html.j2 by name, and every other template too: nothing renders unescaped
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "html.j2", "j2"), default_for_string=True, default=True
        ),
        # a misspelt variable fails the report instead of leaving a silent gap in the page
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    return env


def render(name: str, **context: Any) -> Markup:
    """Template ``name`` rendered with ``context``; the result is escaped markup."""
    return Markup(environment().get_template(name).render(**context))
