"""Helpers shared by the test modules (pytest puts this folder on sys.path)."""

import nup.cache
from nup.training import train


def count_trains(monkeypatch) -> list:
    """Patch the training function the run cache calls; the list grows by one per computed run."""
    calls = []

    def counting_train(config):
        calls.append(config)
        return train(config)

    monkeypatch.setattr(nup.cache, "train", counting_train)
    return calls
