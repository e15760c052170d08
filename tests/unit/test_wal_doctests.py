"""The doctest examples of the WAL modules (and of the HA choice they share) are tests too."""
import doctest

import pytest

from pgvault import patroni
from pgvault.wal import codec, divergence, listing, names, status


@pytest.mark.parametrize("module", [names, codec, listing, status, divergence, patroni], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
