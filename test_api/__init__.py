"""The Test component: model test suites (smoke, consistency, quality, prompts, endpoint) run
through the run convention, with a ``case`` event per test case and a report as the result."""
