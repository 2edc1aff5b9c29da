"""Pure forward/backward functions (see docs/architecture.md)."""
