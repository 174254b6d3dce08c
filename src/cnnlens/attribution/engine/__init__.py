"""How the network runs for an attribution method: the pass runner and what it resolves once per call
(precision, backend, memory format, batch size), and splitting a network at a layer."""
