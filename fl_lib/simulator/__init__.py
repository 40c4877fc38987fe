"""The simulator: builds a round's pipeline from a Config (build), keeps the simulated clock
(clock), runs rounds (federation: synchronous; fedbuff: buffered asynchronous) and trains a
round's clients through a backend (backends: sequential, batched; pool: worker processes)."""
