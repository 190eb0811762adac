"""The four LongReward judges and the parsers of their output protocol."""
