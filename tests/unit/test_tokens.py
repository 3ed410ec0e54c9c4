from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ConfigError
from shared.tokens import TOKEN_CHARS, Tokenizer


def test_same_secret_same_token_on_every_gateway() -> None:
    a, b = Tokenizer(b"s" * 32), Tokenizer(b"s" * 32)
    assert a.token("vin", "1HGCM82633A004352") == b.token("vin", "1HGCM82633A004352")
    assert Tokenizer(b"t" * 32).token("vin", "X") != a.token("vin", "X")


def test_short_secret_is_refused_and_never_printed() -> None:
    with pytest.raises(ConfigError):
        Tokenizer(b"short")
    assert "s" * 32 not in repr(Tokenizer(b"s" * 32))


@given(st.text(max_size=20), st.text(max_size=40))
def test_token_shape_and_namespaces(kind: str, value: str) -> None:
    t = Tokenizer(b"0123456789abcdef")
    tok = t.token(kind, value)
    assert len(tok) == TOKEN_CHARS and all(c in "0123456789abcdef" for c in tok)
    assert tok == t.token(kind, value)
    assert tok != t.token(kind + "x", value)
