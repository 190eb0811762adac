"""Fake external services for tests: real servers on loopback, scripted."""

from tests.fakes.openai_server import FakeOpenAI, Fault, bag_of_words

__all__ = ["FakeOpenAI", "Fault", "bag_of_words"]
