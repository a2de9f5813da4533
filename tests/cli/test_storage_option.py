"""``--storage-option KEY=VALUE`` parsed into fsspec's storage_options, never echoing values."""

from __future__ import annotations

import click
import pytest

from statevault.cli.storage_option import parse_storage_options


def test_values_are_json_when_they_parse_and_text_otherwise() -> None:
    parsed = parse_storage_options(
        ["anon=true", "max_retries=5", "endpoint_url=http://127.0.0.1:9000", "tag="]
    )
    assert parsed == {
        "anon": True,
        "max_retries": 5,
        "endpoint_url": "http://127.0.0.1:9000",
        "tag": "",
    }


def test_dotted_keys_nest_and_values_may_hold_equals_signs() -> None:
    parsed = parse_storage_options(
        ["client_kwargs.region_name=eu-west-1", "client_kwargs.verify=false", "token=a=b"]
    )
    assert parsed == {
        "client_kwargs": {"region_name": "eu-west-1", "verify": False},
        "token": "a=b",
    }


def test_nothing_given_is_none() -> None:
    assert parse_storage_options([]) is None


@pytest.mark.parametrize("item", ["s3cr3t-without-equals", "=s3cr3t", "a..b=s3cr3t"])
def test_a_malformed_item_is_refused_without_showing_it(item: str) -> None:
    with pytest.raises(click.BadParameter) as caught:
        parse_storage_options([item])
    assert "s3cr3t" not in caught.value.format_message() and "KEY=VALUE" in str(caught.value)


def test_a_key_both_a_value_and_a_group_is_refused() -> None:
    with pytest.raises(click.BadParameter, match="both as a value and as a group"):
        parse_storage_options(["client_kwargs=1", "client_kwargs.region_name=x"])
    with pytest.raises(click.BadParameter, match="both as a value and as a group"):
        parse_storage_options(["a.b=1", "a=2"])
