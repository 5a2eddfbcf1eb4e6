"""Helpers of the fault-injection tests (tests/test_faults.py): private services to break."""
