"""What the tests and benchmarks run against: the OpenAI-compatible test server with its stand-ins and
faults, and tiny random-weight models built locally (nothing is downloaded)."""
