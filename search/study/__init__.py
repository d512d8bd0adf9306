"""One shared study: what it is (``spec``), who may join it (``compatibility``), joining
it (``join``), a worker's incremental view of it (``history``), how it samples
(``sampler``) and prunes (``pruner``), and what its trials say (``summary``)."""
