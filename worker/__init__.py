"""callmood worker: decode call recordings, cut utterances, score emotions, store segments."""

__version__ = "0.1.0"
