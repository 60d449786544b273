"""Helpers shared by the LM tests."""

from videopoet.lm import generate as G


def spy_logits(monkeypatch):
    """Record (a clone of) every logits tensor the sampler sees; returns the list it fills."""
    seen = []
    real = G.sample_logits

    def spy(logits, **kw):
        seen.append(logits.clone())
        return real(logits, **kw)

    monkeypatch.setattr(G, "sample_logits", spy)
    return seen
