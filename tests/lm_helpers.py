"""Helpers shared by the LM tests."""


class LogitsSpy(list):
    """A `generate(logits_hook=...)` that records (a clone of) the logits of every sampled position."""

    def __call__(self, t, logits):
        self.append(logits.clone())
