"""A second, independent implementation of the Modellix async API, for tests.

It is written from the provider's public documents alone (not from the project's
simulator), so that behaviour which only holds against ``batchgen.simulator.app`` shows up.
"""

from __future__ import annotations
