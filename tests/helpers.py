"""Helpers shared by the test modules (pytest puts this folder on sys.path)."""

import nup.training.cache
from nup.training.loop import train


def count_trains(monkeypatch) -> list:
    """Patch the training function the run cache calls; the list grows by one per computed run."""
    calls = []

    def counting_train(config):
        calls.append(config)
        return train(config)

    monkeypatch.setattr(nup.training.cache, "train", counting_train)
    return calls
