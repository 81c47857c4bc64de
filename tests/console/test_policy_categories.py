"""The policy page: each category's published rationale, the content lists, and plain words
on what schoolgate does and does not provide against illegal content."""

from __future__ import annotations

from pathlib import Path

from console_testkit import Account, Console, build_console

from schoolgate.policy.catalogue import BUILTIN


def test_categories_lists_and_the_illegal_content_statement(console: Console) -> None:
    page = console.login("headteacher").get("/policy").get_data(as_text=True)
    assert 'id="categories"' in page
    for category in ("pornography", "self_harm", "support"):
        assert BUILTIN[category].rationale.replace("'", "&#39;") in page
    assert "always open" in page and "always blocked" in page
    assert "ut1: no version installed yet" in page
    assert "It does not hold the IWF or CTIRU lists itself" in page
    assert "none configured: illegal content is left to the ISP" in page


def test_the_configured_illegal_content_resolver_is_named(
    tmp_path: Path, console_template: tuple[Path, dict[str, Account]]
) -> None:
    console = build_console(tmp_path, console_template, extra_config=(
        '\n[dns]\nillegal_content_provider = "Example ISP filtered DNS (IWF member)"\n'
        'illegal_content_upstream = ["192.0.2.53"]\n'
    ))
    page = console.login("headteacher").get("/policy").get_data(as_text=True)
    assert "Example ISP filtered DNS (IWF member) (192.0.2.53)" in page
    # Nothing on the page can change it: it is not a form field.
    assert 'name="illegal_content' not in page


