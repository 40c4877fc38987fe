"""The simulator core: what one round is made of, with no engine, runtime or lesson code.

Data and partitions (data, shakespeare, partition), models, the channel-wise
quantizer and upload codec (quant, codec), seeded random streams (rng), link
profiles and the adaptive-bits rule (links), a client's local training (client),
the stage protocol a round's pipeline is built from (stages), the aggregators
(aggregators/) and the typed round metrics record (metrics).
"""
