"""Small real-class pipelines (test fixtures, bundled toy models) and what they are trained and judged on."""
