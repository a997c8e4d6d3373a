"""The generated reference pages are current, and every config key has a meaning."""

from pathlib import Path

import pytest

from busseg.manual import PAGES, config_page

REFERENCE = Path(__file__).parents[1] / "docs" / "reference"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_reference_page_is_current(name):
    page = (REFERENCE / name).read_text()
    assert page == PAGES[name](), f"docs/reference/{name} is stale: run python -m busseg.manual"


def test_config_page_lists_every_leaf_key():
    from busseg.config import config_to_dict, resolve_config

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    page = config_page()
    for key in leaves(config_to_dict(resolve_config(None))):
        assert f"| `{key}` |" in page, key


def test_cli_page_lists_every_option_of_every_verb():
    import argparse

    from busseg.cli import build_parser

    page = (REFERENCE / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, verb in sub.choices.items():
        assert f"## busseg {name}" in page
        for action in verb._actions:
            if isinstance(action, argparse._HelpAction) or action.dest == "verbose":
                continue  # every verb's, stated once at the top of the page
            for flag in action.option_strings:
                assert f"`{flag}`" in page, (name, flag)


def test_a_model_argument_without_a_meaning_fails_the_reference(monkeypatch):
    from torch import nn

    from busseg.models import MODELS

    class Undocumented(nn.Module):
        """A model whose docstring does not say what `width` means."""

        def __init__(self, width: int = 4) -> None:
            super().__init__()

    monkeypatch.setitem(MODELS, "undocumented", Undocumented)
    with pytest.raises(ValueError, match="argument 'width' has no meaning"):
        config_page()
