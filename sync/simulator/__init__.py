"""The built-in Dataverse + Entra simulator: documented behaviour for tests, demo and benchmarks."""
