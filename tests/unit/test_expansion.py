import pytest

from nodelet.pod.expansion import expand

pytestmark = pytest.mark.unit

ENV = {"A": "alpha", "B": "beta", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "alpha"),
        ("x-$(A)-$(B)-y", "x-alpha-beta-y"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$alpha"),
        ("$A", "$A"),
        ("$(A", "$(A"),
        ("trailing$", "trailing$"),
        ("$(EMPTY)!", "!"),
        ("", ""),
        ("no refs", "no refs"),
    ],
)
def test_expand_matches_kubernetes(text: str, expected: str) -> None:
    assert expand(text, ENV) == expected
