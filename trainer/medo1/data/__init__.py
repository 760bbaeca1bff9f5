"""Data: read any source and map its format (sources), the reasoning format (final_response), tokenization,
validation, and translation with its checks."""
