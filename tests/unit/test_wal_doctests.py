"""The doctest examples of the WAL modules are tests too."""
import doctest

import pytest

from pgvault.wal import codec, names, status


@pytest.mark.parametrize("module", [names, codec, status], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
